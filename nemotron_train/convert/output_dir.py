"""An output directory that appears complete or not at all."""

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from nemotron_train.errors import ConfigError


def check_new_output(output: Path) -> None:
    """Refuse to write into an existing, non-empty path (nothing of the user's is replaced)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError("--output", str(output), "exists and is not empty; choose a new directory")


@contextmanager
def atomic_output_dir(output: Path):
    """Yield a temporary sibling of `output` to write into; rename it to `output` when the block
    completes, delete it when the block raises."""
    check_new_output(output)
    partial = output.with_name(f"{output.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        yield partial
        if output.exists():
            output.rmdir()  # empty, checked above
        os.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
