"""The data cache directory, cross-process locks and atomic publication of cached files."""

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator

CACHE_DIR_ENVIRONMENT_VARIABLE = "NEMOTRON_TRAIN_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/nemotron_train"


def resolve_cache_dir(cache_dir: str | None) -> str:
    """`cache_dir`, else $NEMOTRON_TRAIN_CACHE, else ~/.cache/nemotron_train; absolute."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_ENVIRONMENT_VARIABLE) or DEFAULT_CACHE_DIR
    return os.path.abspath(os.path.expanduser(chosen))


@contextlib.contextmanager
def exclusive_file_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created if missing) across processes.

    The kernel drops the lock when its holder dies, so a killed run never leaves it stuck.
    """
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    # Append mode: a second opener must never truncate the file a first one has locked.
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def unique_temporary_path(path: str) -> str:
    """A sibling name for `path` that no other process picks.

    Same directory, so that `os.replace` onto `path` is an atomic rename.
    """
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either no file or the whole file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary_path = unique_temporary_path(path)
    try:
        with open(temporary_path, "wb") as temporary_file:
            temporary_file.write(data)
        os.replace(temporary_path, path)
    finally:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)


def sha256_of_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(*parts: object) -> str:
    """A 16-hex-digit name for a cache entry determined by `parts`."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
