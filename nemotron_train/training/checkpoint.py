"""Save and resume through Megatron-Core's dist_checkpointing.

A checkpoint is a directory `iter_<step>` holding the sharded model and
optimizer state plus the common state (step, consumed samples, scheduler).
It is written under a temporary name and renamed when complete, and `latest`
is replaced atomically after that, so a killed save never looks complete.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing

from nemotron_train.config.errors import ConfigError
from nemotron_train.training.optimizer import is_torch_adam

LATEST_FILE = "latest"


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where checkpoints go, how often, and what to resume from."""

    dir: Optional[str] = None
    """Checkpoint directory; None puts it in <run_dir>/checkpoints."""
    save_interval: int = 0
    """Save every this many optimizer steps (0: only at the end, if `save_final`)."""
    save_final: bool = True
    """Save after the last step."""
    load: Optional[str] = None
    """Start from this checkpoint directory (a run's checkpoint dir or one `iter_*` in it)."""
    resume: bool = True
    """Resume from `dir` when it already holds a checkpoint (takes precedence over `load`)."""
    finetune: bool = False
    """With `load`: take only the model weights (any layout) and start optimizer, schedule
    and data at step 0, e.g. continued pretraining from a pretraining checkpoint."""
    save_initial: bool = False
    """Save the freshly initialised weights as iter_0000000 before the first step, so other
    runs (parallel layouts, ablation arms) can start from the same weights."""
    keep_last: int = 2
    """Keep only the newest this many checkpoints in `dir` (0 keeps all)."""

    def __post_init__(self):
        if self.save_interval < 0:
            raise ConfigError("checkpoint.save_interval", self.save_interval, "must be >= 0")
        if self.keep_last < 0:
            raise ConfigError("checkpoint.keep_last", self.keep_last, "must be >= 0")


@dataclass
class TrainState:
    """What, beyond weights and optimizer, a resumed run needs to continue exactly."""

    step: int = 0
    consumed_samples: int = 0


def iteration_dir(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"iter_{step:07d}"


def resolve_checkpoint(path) -> Optional[Path]:
    """The `iter_*` directory that `path` names, directly or through its `latest` file."""
    path = Path(path)
    if (path / LATEST_FILE).is_file():
        return path / (path / LATEST_FILE).read_text().strip()
    if path.name.startswith("iter_") and path.is_dir():
        return path
    return None


def _sharded_state(model_chunks, optimizer, *, is_loading: bool, weights_only: bool = False) -> dict:
    model_state = {}
    for index, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        model_state[key] = chunk.module.sharded_state_dict()
    if weights_only:
        return model_state
    optimizer_state = optimizer.sharded_state_dict(
        model_state if len(model_chunks) > 1 else model_state["model"], is_loading=is_loading,
        # The distributed optimizer's default format (flattened ranges) is rejected by
        # dist_checkpointing in this release, and loading 'fully_reshardable' fails for
        # torch's Adam (its per-state `step`); this format reshards across DP only.
        metadata={"distrib_optim_sharding_type": "dp_reshardable"},
    )
    return {**model_state, "optimizer": optimizer_state}


def save_checkpoint(checkpoint_dir, state: TrainState, model_chunks, optimizer, scheduler,
                    keep_last: int = 0) -> Path:
    """Write `iter_<step>` atomically and point `latest` at it; return its path."""
    checkpoint_dir = Path(checkpoint_dir)
    final = iteration_dir(checkpoint_dir, state.step)
    partial = final.with_name(final.name + ".partial")
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    sharded = _sharded_state(model_chunks, optimizer, is_loading=False)
    sharded["train_state"] = {"step": state.step, "consumed_samples": state.consumed_samples}
    sharded["scheduler"] = scheduler.state_dict()
    dist_checkpointing.save(sharded, str(partial))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        latest_tmp = checkpoint_dir / (LATEST_FILE + ".tmp")
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, checkpoint_dir / LATEST_FILE)
        _prune(checkpoint_dir, keep_last)
    dist.barrier()
    return final


def _prune(checkpoint_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    complete = sorted(p for p in checkpoint_dir.glob("iter_*") if not p.name.endswith(".partial"))
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _initialise_empty_optimizer_states(optimizer) -> None:
    """Create the Adam states a run that has not stepped yet lacks (torch's Adam only).

    DistributedOptimizer reads its state_dict (one common `step` over torch Adam's states,
    without Apex or TE) before it initialises empty states for loading. TE's and Apex's
    FusedAdam keep the step in their param groups, and their `state_dict` rejects a
    per-parameter `step`, so they are left alone.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(inner, "init_state_fn", None) is None or not is_torch_adam(inner.optimizer):
            continue
        inner.init_state_fn(inner.optimizer, inner.config)
        for state in inner.optimizer.state.values():
            state.setdefault("step", torch.tensor(0.0))


def _restore_adam_steps(optimizer, loaded_state) -> None:
    """Set torch Adam's per-parameter `step` to the saved one, each in its own tensor.

    Fills a Megatron-Core 0.19.2 gap on the path without Apex or TE (every CPU run): the
    distributed optimizer saves the step in its param groups, but loading a
    `dp_reshardable` checkpoint leaves the per-parameter steps at their initial value,
    so the first update after resume used the bias correction of step 1. (Megatron-Core
    would also hand one shared tensor to every parameter, which torch's Adam increments
    once per parameter.)
    """
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    states = loaded_state if isinstance(loaded_state, list) else [loaded_state]
    for inner, state in zip(inners, states):
        torch_optimizer = getattr(inner, "optimizer", None)
        if not is_torch_adam(torch_optimizer):
            continue
        saved_groups = state.get("optimizer", {}).get("param_groups", []) if isinstance(state, dict) else []
        if len(saved_groups) != len(torch_optimizer.param_groups):
            continue
        for group, saved in zip(torch_optimizer.param_groups, saved_groups):
            if "step" not in saved:
                continue
            for param in group["params"]:
                param_state = torch_optimizer.state.get(param)
                if param_state is not None and "step" in param_state:
                    param_state["step"] = torch.tensor(float(saved["step"]), dtype=torch.float32)


def load_checkpoint(path, model_chunks, optimizer, scheduler, *, weights_only: bool = False) -> TrainState:
    """Load weights, optimizer, scheduler and train state from `path` (resolved as above).

    dist_checkpointing reshards on load, so the saving and loading layouts (TP, PP, EP, DP)
    may differ. `weights_only` loads the model alone and returns a fresh TrainState.
    """
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise ConfigError("checkpoint.load", str(path),
                          "no checkpoint there: name a checkpoint dir with a `latest` file or an iter_* dir")
    if not weights_only:
        _initialise_empty_optimizer_states(optimizer)
    sharded = _sharded_state(model_chunks, optimizer, is_loading=True, weights_only=weights_only)
    loaded = dist_checkpointing.load(sharded, str(checkpoint))
    for index, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{index}"
        chunk.module.load_state_dict(loaded[key])
    if weights_only:
        return TrainState()
    with torch.no_grad():
        # With fp32 params the distributed optimizer's main params are views of the model's
        # leaf parameters, and its loader copies into them in place.
        optimizer.load_state_dict(loaded["optimizer"])
    _restore_adam_steps(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    return TrainState(**loaded["train_state"])
