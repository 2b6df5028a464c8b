"""Is a checkpoint whole? Find the damaged file, and the newest checkpoint that is intact.

Megatron-Core checks that a directory is a distributed checkpoint (`metadata.json`) and,
with `verify_integrity`, compares SHA-256 hashes against the manifest it wrote at save
time (`integrity.json`, `dist_checkpointing.validation`). It has no check that costs less
than reading every byte, and nothing that picks another checkpoint when one is bad. What
this module adds: a structural check that needs only file sizes (every byte range torch's
`.metadata` names must exist in its shard file, so a truncated or missing shard shows
without reading it), the hashes through Megatron-Core's own manifest check when asked, and
the walk from the newest checkpoint to older ones. The checks run on one rank; the caller
(resume.py) broadcasts the verdict.
"""

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.validation import INTEGRITY_FNAME, verify_integrity_manifest

logger = logging.getLogger(__name__)

LATEST_FILE = "latest"
PARTIAL_SUFFIX = ".partial"
CONFIG_FILE = "metadata.json"
"""Megatron-Core's dist_checkpointing config, written after every shard."""
TORCH_METADATA_FILE = ".metadata"
"""torch.distributed.checkpoint's index of every item: its shard file, offset and length."""


@dataclass(frozen=True)
class Damage:
    """What is wrong with a checkpoint, naming the file."""

    checkpoint: Path
    file: str
    reason: str

    def describe(self) -> str:
        return f"{self.checkpoint / self.file}: {self.reason}"


def find_damage(checkpoint: Path, *, verify_hashes: bool = False) -> Optional[Damage]:
    """The first problem found in `checkpoint` (an `iter_*` directory), or None if it is whole.

    Checks that the checkpoint's config and torch's index read, that every shard file the
    index names exists and is as long as the byte ranges stored in it, and, with
    `verify_hashes` and a manifest present, every file's SHA-256 (a checkpoint saved without
    `checkpoint.verify_integrity` has no manifest, and only its structure is checked).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return Damage(checkpoint, "", "directory missing")
    try:
        json.loads((checkpoint / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        return Damage(checkpoint, CONFIG_FILE, f"unreadable or missing ({error})")
    extents = _stored_extents(checkpoint)
    if isinstance(extents, Damage):
        return extents
    for name, needed in sorted(extents.items()):
        path = checkpoint / name
        if not path.is_file():
            return Damage(checkpoint, name, "shard file missing")
        size = path.stat().st_size
        if size < needed:
            return Damage(checkpoint, name, f"truncated: {size:,} bytes, the index needs {needed:,}")
    if verify_hashes and (checkpoint / INTEGRITY_FNAME).is_file():
        try:
            verify_integrity_manifest(str(checkpoint))
        except CheckpointingException as error:
            return Damage(checkpoint, _first_named_file(str(error), extents) or INTEGRITY_FNAME,
                          f"hash check failed: {str(error).strip()}")
    return None


def _stored_extents(checkpoint: Path):
    """Shard file name -> the end of the last byte range the index stores in it."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(checkpoint)).read_metadata()
    except Exception as error:  # torch raises whatever unpickling a damaged index raises
        return Damage(checkpoint, TORCH_METADATA_FILE, f"unreadable or missing ({type(error).__name__}: {error})")
    extents = defaultdict(int)
    for info in (metadata.storage_data or {}).values():
        extents[info.relative_path] = max(extents[info.relative_path], info.offset + info.length)
    return dict(extents)


def _first_named_file(message: str, extents: dict) -> Optional[str]:
    # Megatron-Core's message lists the bad files as "  <name>: ..." lines.
    for line in message.splitlines():
        name = line.strip().split(":", 1)[0]
        if name in extents or name in (CONFIG_FILE, TORCH_METADATA_FILE):
            return name
    return None


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The renamed (finished) `iter_*` directories, newest first."""
    checkpoint_dir = Path(checkpoint_dir)
    found = [p for p in checkpoint_dir.glob("iter_*")
             if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_checkpoint(checkpoint_dir: Path) -> Optional[Path]:
    """The checkpoint `latest` names (None without a `latest` file)."""
    latest = Path(checkpoint_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    return Path(checkpoint_dir) / latest.read_text().strip()


def resume_candidates(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints to try, in order: the one `latest` names, then the others newest first
    (`latest` is written after its checkpoint is renamed, so it may trail a newer one)."""
    latest = latest_checkpoint(checkpoint_dir)
    candidates = [latest] if latest is not None else []
    return candidates + [p for p in complete_checkpoints(checkpoint_dir) if p != latest]
