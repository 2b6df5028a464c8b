"""Optional dependencies (pyarrow, datasets, tiktoken, sentencepiece): imported only when
a feature needs them, with an error that says how to install them."""

import importlib.util


def require_package(module_name: str, purpose: str) -> None:
    """Raise ModuleNotFoundError naming `purpose` unless `module_name` is importable."""
    if importlib.util.find_spec(module_name) is None:
        raise ModuleNotFoundError(
            f"{purpose} needs the {module_name!r} package, which is not installed: "
            f"pip install {module_name}"
        )
