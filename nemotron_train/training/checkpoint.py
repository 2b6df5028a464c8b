"""Save and resume through Megatron-Core's dist_checkpointing.

A checkpoint is a directory `iter_<step>` holding the sharded model and optimizer state,
every rank's random streams (rng_state.py) and the common state (train state, scheduler).
It is written under a temporary name and renamed when complete, and `latest` is replaced
atomically after that, so a killed save never looks complete (checkpoint_saver.py). On
resume a damaged newest checkpoint is reported and passed over (checkpoint_integrity.py).
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.serialization import load_common_state_dict
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from nemotron_train.errors import ConfigError
from nemotron_train.training.optimizer import is_torch_adam
from nemotron_train.training.checkpoint_integrity import LATEST_FILE, latest_checkpoint
from nemotron_train.training.checkpoint_saver import (
    CheckpointSaver,
    SaveOptions,
    iteration_dir,
)
from nemotron_train.training.rng_state import (
    LAYOUT_KEY,
    RNG_KEY,
    RngLayout,
    restorable,
    rng_state_placeholder,
    sharded_rng_state,
)

__all__ = ["CheckpointConfig", "TrainState", "LATEST_FILE", "iteration_dir", "resolve_checkpoint",
           "checkpoint_state", "save_checkpoint", "load_checkpoint", "LoadedCheckpoint"]

ASYNC_STRATEGIES = ("auto", "nvrx", "mcore")
OPTIMIZER_FORMATS = ("dp_reshardable", "fully_reshardable")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where checkpoints go, how often, how they are written, and what to resume from."""

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
    async_save: Optional[bool] = None
    """Write checkpoints in the background while training continues (Megatron-Core's async
    dist_checkpointing); None: on with CUDA, off on CPU, where the stall is the copy itself."""
    async_strategy: str = "auto"
    """Who runs background saves: 'nvrx' (NVIDIA Resiliency Extension), 'mcore'
    (Megatron-Core's own queue), or 'auto' (nvrx when it imports, else mcore)."""
    fully_parallel_save: bool = True
    """Spread the writing of replicated tensors over the data-parallel replicas (Megatron-Core's
    FullyParallelSaveStrategyWrapper) instead of replica 0 writing them all."""
    fully_parallel_load: bool = False
    """Each data-parallel replica reads a share and they exchange it (Megatron-Core's
    FullyParallelLoadStrategyWrapper), instead of every replica reading everything."""
    verify_integrity: bool = False
    """Write a SHA-256 manifest with every checkpoint and check it before resuming (one more
    read of the checkpoint at save and at load, on rank 0)."""
    optimizer_format: str = "dp_reshardable"
    """How the distributed optimizer's state is saved: 'dp_reshardable' (each rank writes its
    shard, no communication; loads only under the same TP/PP/EP/CP, any DP) or
    'fully_reshardable' (gathered per parameter on data-parallel rank 0 at save; loads under
    any layout). A checkpoint loads in the format it was saved in, whatever this says."""

    def __post_init__(self):
        if self.save_interval < 0:
            raise ConfigError("checkpoint.save_interval", self.save_interval, "must be >= 0")
        if self.keep_last < 0:
            raise ConfigError("checkpoint.keep_last", self.keep_last, "must be >= 0")
        if self.optimizer_format not in OPTIMIZER_FORMATS:
            raise ConfigError("checkpoint.optimizer_format", self.optimizer_format,
                              f"choose one of {OPTIMIZER_FORMATS}")
        if self.async_strategy not in ASYNC_STRATEGIES:
            raise ConfigError("checkpoint.async_strategy", self.async_strategy,
                              f"choose one of {ASYNC_STRATEGIES}")


@dataclass
class TrainState:
    """What, beyond weights and optimizer, a resumed run needs to continue exactly."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    """Steps whose update was dropped (train.on_nonfinite=skip)."""
    rollbacks: int = 0
    """Times the run went back to a checkpoint (train.on_nonfinite=rollback)."""


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` read besides the weights and optimizer it loaded in place."""

    path: Path
    train_state: TrainState = field(default_factory=TrainState)
    rng_state: Optional[dict] = None
    """This rank's saved random streams (None: weights only, an older checkpoint, or a
    changed layout); restore them right before the next step (rng_state.restore_rng_state)."""
    passed_over: tuple = ()
    """The newer checkpoints found damaged and skipped (checkpoint_integrity.Damage)."""


def resolve_checkpoint(path) -> Optional[Path]:
    """The `iter_*` directory that `path` names, directly or through its `latest` file."""
    path = Path(path)
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    if path.name.startswith("iter_") and path.is_dir():
        return path
    return None


def _sharded_state(model_chunks, optimizer, *, is_loading: bool, weights_only: bool = False,
                   optimizer_format: str = "dp_reshardable") -> dict:
    (chunk,) = model_chunks  # one chunk per rank: the interleaved pipeline is refused in validation
    model_state = {"model": chunk.module.sharded_state_dict()}
    if weights_only:
        return model_state
    optimizer_state = optimizer.sharded_state_dict(
        model_state["model"], is_loading=is_loading,
        # The distributed optimizer's default format (flattened ranges) is rejected by
        # dist_checkpointing in this release (checkpoint.optimizer_format: the two that work).
        metadata={"distrib_optim_sharding_type": optimizer_format},
    )
    return {**model_state, "optimizer": optimizer_state}


def checkpoint_state(state: TrainState, model_chunks, optimizer, scheduler, *,
                     rounding_stream=None, optimizer_format: str = "dp_reshardable") -> dict:
    """Everything a checkpoint holds, as dist_checkpointing's sharded state dict."""
    sharded = _sharded_state(model_chunks, optimizer, is_loading=False, optimizer_format=optimizer_format)
    sharded["train_state"] = asdict(state)
    sharded["scheduler"] = scheduler.state_dict()
    sharded[LAYOUT_KEY] = RngLayout.current().as_dict()
    sharded[RNG_KEY] = sharded_rng_state(rounding_stream)
    return sharded


def save_checkpoint(checkpoint_dir, state: TrainState, model_chunks, optimizer, scheduler,
                    keep_last: int = 0) -> Path:
    """Write `iter_<step>` synchronously, publish it as `latest`, and return its path
    (the training loop keeps a CheckpointSaver instead, for background saves)."""
    saver = CheckpointSaver(Path(checkpoint_dir), SaveOptions(
        asynchronous=False, async_strategy="mcore", fully_parallel=True,
        verify_integrity=False, keep_last=keep_last))
    report = saver.save(checkpoint_state(state, model_chunks, optimizer, scheduler), state.step)
    saver.close()
    return report.checkpoint


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


def _saved_optimizer_format(common_state: dict) -> Optional[str]:
    """The distributed optimizer format a checkpoint was saved in (None: a regular optimizer)."""
    optimizer_state = common_state.get("optimizer")
    if isinstance(optimizer_state, dict) and "param_state_sharding_type" not in optimizer_state:
        optimizer_state = list(optimizer_state.values())  # a ChainedOptimizer's, by index
    states = optimizer_state if isinstance(optimizer_state, list) else [optimizer_state]
    for state in states:
        if isinstance(state, dict) and "param_state_sharding_type" in state:
            return state["param_state_sharding_type"]
    return None


def check_optimizer_reshardable(common_state: dict, distributed_optimizer: bool, layout: RngLayout) -> None:
    """Raise ConfigError, before anything is loaded, when the checkpoint's optimizer state cannot
    be loaded into this run's optimizer and layout (docs/failures.md has the table)."""
    saved_format = _saved_optimizer_format(common_state)
    if (saved_format is not None) != distributed_optimizer:
        saved = "with" if saved_format else "without"
        raise ConfigError("parallel.distributed_optimizer", distributed_optimizer,
                          f"the checkpoint was saved {saved} the distributed optimizer: resume with "
                          f"parallel.distributed_optimizer={str(saved_format is not None).lower()}, "
                          "or load its weights only with checkpoint.finetune=true")
    saved_layout = common_state.get(LAYOUT_KEY)
    if saved_format != "dp_reshardable" or saved_layout is None:
        return
    changed = [f"parallel.{key}={saved_layout[key]}" for key in ("tensor", "pipeline", "context", "expert")
               if saved_layout[key] != getattr(layout, key)]
    if changed:
        raise ConfigError("checkpoint.optimizer_format", "dp_reshardable",
                          f"the checkpoint's distributed-optimizer state loads only under its own "
                          f"model-parallel layout ({', '.join(changed)}; any data-parallel size): "
                          "resume with that layout, load weights only with checkpoint.finetune=true, "
                          "or save with checkpoint.optimizer_format=fully_reshardable to change layouts")


def _is_distributed_optimizer(optimizer) -> bool:
    return any(isinstance(inner, DistributedOptimizer)
               for inner in getattr(optimizer, "chained_optimizers", [optimizer]))


def _load_fully_reshardable(optimizer, loaded_state) -> None:
    """`optimizer.load_state_dict` for a `fully_reshardable` checkpoint, in its two halves.

    Fills a Megatron-Core 0.19.2 gap on the path without Apex or TE: the loader first gives
    torch Adam's state a `step` tensor, then copies every tensor of each parameter's state
    from the checkpoint, `step` included, which that format does not hold per parameter
    (KeyError: 'step'). So the per-parameter tensors are loaded here with `step` set aside;
    the steps come back from the saved param groups (`_restore_adam_steps`).
    """
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    if isinstance(loaded_state, dict) and len(inners) > 1:
        loaded_state = [value for _, value in sorted(loaded_state.items())]
    states = loaded_state if isinstance(loaded_state, list) else [loaded_state]
    for inner, state in zip(inners, states, strict=True):
        param_state = state.pop("param_state", None)
        inner.load_state_dict(state)  # param groups, torch Adam's states, the grad scaler
        if param_state is None:
            continue
        torch_states = inner.optimizer.state.values()
        steps = [(st, st.pop("step")) for st in torch_states if torch.is_tensor(st.get("step"))]
        inner.load_parameter_state_from_fully_reshardable(param_state)
        for st, step in steps:
            st["step"] = step
    if hasattr(optimizer, "_synchronize_steps"):  # ChainedOptimizer: one step for all groups
        optimizer._synchronize_steps()


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


def load_checkpoint(path, model_chunks, optimizer, scheduler, *, weights_only: bool = False,
                    fully_parallel: bool = False) -> LoadedCheckpoint:
    """Load weights, optimizer, scheduler, train state and random streams from `path`
    (resolved as above); the streams are returned, to be restored before the next step.

    dist_checkpointing reshards on load, so the saving and loading layouts may differ (which
    changes the optimizer state allows: docs/failures.md). `weights_only` loads the model
    alone. `fully_parallel` spreads the reading over the data-parallel replicas.
    """
    checkpoint = resolve_checkpoint(path)
    if checkpoint is None:
        raise ConfigError("checkpoint.load", str(path),
                          "no checkpoint there: name a checkpoint dir with a `latest` file or an iter_* dir")
    common = {} if weights_only else load_common_state_dict(str(checkpoint))
    optimizer_format = _saved_optimizer_format(common) or "dp_reshardable"
    if not weights_only:
        check_optimizer_reshardable(common, _is_distributed_optimizer(optimizer), RngLayout.current())
        _initialise_empty_optimizer_states(optimizer)
    sharded = _sharded_state(model_chunks, optimizer, is_loading=True, weights_only=weights_only,
                             optimizer_format=optimizer_format)
    if restorable(common.get(LAYOUT_KEY), RngLayout.current()):
        sharded[RNG_KEY] = rng_state_placeholder()
    loaded = dist_checkpointing.load(sharded, str(checkpoint), _load_strategy(fully_parallel))
    (chunk,) = model_chunks
    chunk.module.load_state_dict(loaded["model"])
    if weights_only:
        return LoadedCheckpoint(path=checkpoint)
    with torch.no_grad():
        # With fp32 params the distributed optimizer's main params are views of the model's
        # leaf parameters, and its loader copies into them in place.
        if optimizer_format == "fully_reshardable":
            _load_fully_reshardable(optimizer, loaded["optimizer"])
        else:
            optimizer.load_state_dict(loaded["optimizer"])
    _restore_adam_steps(optimizer, loaded["optimizer"])
    # OptimizerParamScheduler.load_state_dict adds the saved step count to its own (right
    # only for a fresh scheduler); a rollback loads into one that has stepped.
    scheduler.num_steps = 0
    scheduler.load_state_dict(loaded["scheduler"])
    return LoadedCheckpoint(path=checkpoint, train_state=TrainState(**loaded["train_state"]),
                            rng_state=loaded.get(RNG_KEY))


def _load_strategy(fully_parallel: bool):
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
    )
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy

    strategy = TorchDistLoadShardedStrategy()
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    if fully_parallel and dist.get_world_size(group) > 1:
        strategy = FullyParallelLoadStrategyWrapper(strategy, group)
    return strategy
