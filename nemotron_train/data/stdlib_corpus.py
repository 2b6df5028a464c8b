"""The embedded corpus: the running interpreter's own standard-library Python sources.

Every machine that runs us has it, so the tiny recipe trains on real text without a
download. One document per .py file, in sorted order of the path relative to the stdlib
root. Excluded, to keep it near 11 MB of library code (CPython 3.12):

- `test/` and `tests/` directories: 20 MB of CPython's own unit tests;
- `idlelib/`: an application rather than library code;
- `site-packages/`, `dist-packages/`: third-party packages, different on every machine;
- `_sysconfigdata_*.py` and `config-*/`: machine-specific build configuration;
- `__pycache__/`.
"""

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

EXCLUDED_DIRECTORY_NAMES = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}
)


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(max_files: int | None = None) -> list[Path]:
    """The corpus files, sorted by relative path; the first `max_files` of them if given."""
    root = stdlib_root()
    relative_paths = []
    for directory, subdirectories, file_names in os.walk(root):
        relative_directory = Path(directory).relative_to(root)
        # Pruned during the walk: site-packages can hold a whole distribution (conda).
        subdirectories[:] = [
            name
            for name in subdirectories
            if name not in EXCLUDED_DIRECTORY_NAMES
            and not (relative_directory == Path(".") and name.startswith("config-"))
        ]
        relative_paths.extend(
            relative_directory / name
            for name in file_names
            if name.endswith(".py") and not name.startswith("_sysconfigdata")
        )
    relative_paths.sort(key=lambda relative_path: relative_path.as_posix())
    files = [root / relative_path for relative_path in relative_paths]
    return files if max_files is None else files[:max_files]


def stdlib_corpus_fingerprint(max_files: int | None = None) -> str:
    """A hash that changes whenever the corpus would: interpreter version, file names, sizes
    and modification times. Cheap (stat only), so every run can check its cache with it."""
    root = stdlib_root()
    digest = hashlib.sha256(sys.version.encode())
    for path in stdlib_source_files(max_files):
        status = path.stat()
        digest.update(
            f"{path.relative_to(root).as_posix()}:{status.st_size}:{status.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()
