"""The package imports only downwards: every import of a nemotron_train module, at module
level or inside a function, goes to a layer below the importer's or to its own package."""

import ast
from pathlib import Path

import nemotron_train

PACKAGE_ROOT = Path(nemotron_train.__file__).parent

# Lowest first; a package imports only packages of rows below its own. The ablation report
# reads each run's dry-run accounting, so report/ sits above planning/.
LAYERS = [
    {"errors"},
    {"runtime"},
    {"data", "telemetry"},
    {"precision"},
    {"model"},
    {"training"},
    {"config"},
    {"eval", "convert"},
    {"planning"},
    {"report"},
    {"entry", "launch"},
]
RANK = {package: rank for rank, row in enumerate(LAYERS) for package in row}


def _package_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "nemotron_train", module
    return parts[1] if len(parts) > 1 else ""


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "nemotron_train"]


def upward_imports(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every import of a package from a row not below the importer's, as `file:line` lines."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        importer = _package_of(".".join(relative.parts).removesuffix(".__init__"))
        if importer in ("", "__main__"):
            continue
        for line, module in _imported_modules(path):
            imported = _package_of(module)
            if imported == importer or imported == "":
                continue
            if RANK[imported] >= RANK[importer]:
                violations.append(f"{relative}.py:{line} ({importer}) imports {module} ({imported})")
    return violations


def test_every_package_has_a_layer():
    packages = {path.stem if path.is_file() else path.name for path in PACKAGE_ROOT.iterdir()
                if (path.is_dir() and (path / "__init__.py").exists())
                or (path.suffix == ".py" and path.stem != "__init__")}
    assert packages <= set(RANK), sorted(packages - set(RANK))


def test_an_upward_import_is_found(tmp_path):
    # The walker itself: a function-level import of training/ from runtime/ is reported.
    runtime = tmp_path / "nemotron_train" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / "probe.py").write_text("def f():\n    from nemotron_train.training import loop\n")
    assert upward_imports(tmp_path / "nemotron_train") == [
        "nemotron_train/runtime/probe.py:2 (runtime) imports nemotron_train.training (training)"]


def test_imports_go_only_downwards():
    assert upward_imports() == []
