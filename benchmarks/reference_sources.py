"""Load the pure-PyTorch reference implementations the benchmarks compare against.

Neither source tree is committed: fetch them at run time into an ignored directory, e.g.

    git clone --depth 1 https://github.com/NVIDIA/TransformerEngine .cache/TransformerEngine
    git clone --depth 1 https://github.com/state-spaces/mamba .cache/mamba

- TransformerEngine's NVFP4 reference quantizer
  (``transformer_engine/pytorch/custom_recipes/reference_nvfp4.py``) is pure PyTorch,
  but the packages around it import TE's compiled library. Only three of its files are
  executed: ``reference_utils.py`` and ``gemm.py`` (which it imports) and the
  reference itself. The two modules they import that need the library are stood in
  for: ``quantized_tensor`` by the two base classes the reference subclasses
  (``Quantizer``, which only records the rowwise/columnwise usage, and an empty
  ``QuantizedTensorStorage``), and ``tensor.utils`` by its ``is_custom``, which the
  quantizer never calls.
- mamba's ``ssd_minimal_discrete`` (``mamba_ssm/modules/ssd_minimal.py``) is pure
  PyTorch plus einops; its module imports the Triton kernel only for its own test,
  so that import is stood in for by ``None``.

The stand-ins live in ``sys.modules`` only while the files load, so nothing later
mistakes them for an installed TransformerEngine or mamba_ssm.
"""

import contextlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

TE_REFERENCE = Path("transformer_engine/pytorch/custom_recipes/reference_nvfp4.py")
MAMBA_REFERENCE = Path("mamba_ssm/modules/ssd_minimal.py")


def source_version(root: Path) -> str:
    """The git commit of a source tree (its ``COMMIT`` file, else ``git rev-parse``)."""
    commit_file = Path(root) / "COMMIT"
    if commit_file.exists():
        return commit_file.read_text().strip()
    result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def load_te_nvfp4_reference(te_src: Path) -> types.ModuleType:
    """TransformerEngine's ``reference_nvfp4`` module (``NVFP4QuantizerRef`` and helpers)."""
    recipes = Path(te_src) / TE_REFERENCE.parent
    if not (recipes / TE_REFERENCE.name).exists():
        raise FileNotFoundError(f"{recipes / TE_REFERENCE.name} not found: pass the root of a "
                                "TransformerEngine source tree")

    class Quantizer:
        """Stand-in for TE's Quantizer base: the usage flags are all the reference reads."""

        def __init__(self, *, rowwise: bool, columnwise: bool) -> None:
            self.rowwise_usage = rowwise
            self.columnwise_usage = columnwise
            self.internal = False

    class QuantizedTensorStorage:
        """Stand-in for TE's storage base class (the reference's dataclass subclasses it)."""

    stand_ins = {
        "transformer_engine": _package("transformer_engine", recipes.parent.parent),
        "transformer_engine.pytorch": _package("transformer_engine.pytorch", recipes.parent),
        "transformer_engine.pytorch.custom_recipes": _package(
            "transformer_engine.pytorch.custom_recipes", recipes),
        "transformer_engine.pytorch.quantized_tensor": _module(
            "transformer_engine.pytorch.quantized_tensor", Quantizer=Quantizer,
            QuantizedTensorStorage=QuantizedTensorStorage),
        "transformer_engine.pytorch.tensor": _package("transformer_engine.pytorch.tensor", None),
        "transformer_engine.pytorch.tensor.utils": _module(
            "transformer_engine.pytorch.tensor.utils", is_custom=lambda tensor=None: False),
    }
    with _temporary_modules(stand_ins):
        custom_recipes = stand_ins["transformer_engine.pytorch.custom_recipes"]
        for name in ("reference_utils", "gemm"):
            setattr(custom_recipes, name, _load(f"{custom_recipes.__name__}.{name}",
                                                recipes / f"{name}.py"))
        return _load(f"{custom_recipes.__name__}.reference_nvfp4", recipes / TE_REFERENCE.name)


def load_mamba_ssd_minimal(mamba_src: Path) -> types.ModuleType:
    """mamba's ``ssd_minimal`` module (``ssd_minimal_discrete``, ``segsum``)."""
    path = Path(mamba_src) / MAMBA_REFERENCE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass the root of a state-spaces/mamba "
                                "source tree")
    stand_ins = {
        "mamba_ssm": _package("mamba_ssm", None),
        "mamba_ssm.ops": _package("mamba_ssm.ops", None),
        "mamba_ssm.ops.triton": _package("mamba_ssm.ops.triton", None),
        "mamba_ssm.ops.triton.ssd_combined": _module(
            "mamba_ssm.ops.triton.ssd_combined", mamba_chunk_scan_combined=None),
    }
    with _temporary_modules(stand_ins):
        return _load("mamba_ssm.modules.ssd_minimal", path)


def _package(name: str, path: Path | None) -> types.ModuleType:
    package = types.ModuleType(name)
    package.__path__ = [str(path)] if path is not None else []
    return package


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _temporary_modules(modules: dict[str, types.ModuleType]):
    """Put ``modules`` in ``sys.modules``; afterwards remove them and whatever was loaded
    under their names, restoring anything they shadowed."""
    prefixes = tuple(modules)
    saved = {name: module for name, module in sys.modules.items() if name.startswith(prefixes)}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name.startswith(prefixes)]:
            del sys.modules[name]
        sys.modules.update(saved)
