"""Which checkpoint a run continues from: the newest intact one, passing over damaged ones.

Used at start (resume or `checkpoint.load`) and by `train.on_nonfinite=rollback`. Rank 0
checks each candidate (checkpoint_integrity.py) and broadcasts the verdict; a load that fails
anyway (damage the structural check cannot see without hashes) is agreed on by all ranks and
the next older checkpoint is tried.
"""

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from nemotron_train.errors import ConfigError

from nemotron_train.training.checkpoint import LoadedCheckpoint, load_checkpoint
from nemotron_train.training.checkpoint_integrity import (
    Damage,
    find_damage,
    resume_candidates,
)


class NoIntactCheckpoint(RuntimeError):
    """Every checkpoint there is damaged (the message lists what is wrong with each)."""


def resume(checkpoint_cfg, checkpoint_dir: Path, model_chunks, optimizer, scheduler,
           device) -> Optional[LoadedCheckpoint]:
    """Load what the run continues from: its own newest intact checkpoint (`checkpoint.resume`),
    else `checkpoint.load` (weights only with `checkpoint.finetune`); None to start fresh."""
    verify = checkpoint_cfg.verify_integrity
    own = checkpoint_cfg.resume and _on_rank0(lambda: bool(resume_candidates(checkpoint_dir)))
    if not own and not checkpoint_cfg.load:
        return None
    source = Path(checkpoint_dir if own else checkpoint_cfg.load)
    load = partial(load_checkpoint, model_chunks=model_chunks, optimizer=optimizer,
                   scheduler=scheduler, weights_only=not own and checkpoint_cfg.finetune,
                   fully_parallel=checkpoint_cfg.fully_parallel_load)
    if own or not source.name.startswith("iter_"):
        return load_newest_intact(source, load, verify, device)
    damage = _on_rank0(lambda: find_damage(source, verify_hashes=verify))
    if damage is not None:
        raise NoIntactCheckpoint(f"checkpoint.load={source} is damaged: {damage.describe()}")
    return load(source)


def load_newest_intact(checkpoint_dir: Path, load, verify_hashes: bool, device) -> LoadedCheckpoint:
    """`load(path)` the newest checkpoint in `checkpoint_dir` that is whole and loads."""
    passed_over = []
    candidates = _on_rank0(lambda: resume_candidates(checkpoint_dir))
    if not candidates:
        raise NoIntactCheckpoint(f"no checkpoint in {checkpoint_dir}: name a checkpoint dir "
                                 "with a `latest` file or an iter_* dir")
    for candidate in candidates:
        damage = _on_rank0(lambda: find_damage(candidate, verify_hashes=verify_hashes))
        if damage is None:
            loaded, error = _try_load(load, candidate, device)
            if loaded is not None:
                return replace(loaded, passed_over=tuple(passed_over))
            damage = Damage(candidate, "", f"loading failed: {error}")
        passed_over.append(damage)
        if dist.get_rank() == 0:
            print(f"[nemotron-train] checkpoint {candidate.name} is unusable, passing over it: "
                  f"{damage.describe()}", flush=True)
    listing = "; ".join(d.describe() for d in passed_over) or "none found"
    raise NoIntactCheckpoint(f"no intact checkpoint in {checkpoint_dir}: {listing}")


def _try_load(load, candidate: Path, device):
    """(loaded, None), or (None, the error) when the load failed on any rank."""
    loaded, error = None, None
    try:
        loaded = load(candidate)
    except ConfigError:
        raise  # the checkpoint is whole but does not fit this run: every rank says so
    except Exception as exc:  # whatever a damaged shard makes torch or Megatron-Core raise
        error = f"{type(exc).__name__}: {exc}"
    # int32 is supported by both gloo and NCCL reductions, unlike bool.
    failed = torch.tensor([int(loaded is None)], dtype=torch.int32, device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        return None, error or "failed on another rank"
    return loaded, None


def _on_rank0(compute):
    """`compute()` run on rank 0 and broadcast (file-system checks run once)."""
    holder = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
