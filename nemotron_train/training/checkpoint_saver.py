"""Writing checkpoints: synchronous or in the background, spread over data-parallel replicas,
hashed on request, and published only when every rank has written its part.

Megatron-Core does the writing: `dist_checkpointing.save` with its torch_dist strategy, the
`FullyParallelSaveStrategyWrapper` (each data-parallel replica writes a share of the
replicated tensors instead of replica 0 writing them all), and for async saves the request
it returns, run by its `AsyncCallsQueue` (`mcore`) or NVIDIA Resiliency Extension's
(`nvrx`): the tensors are staged to host memory, a forked process writes them while
training continues, and the request's finalize functions (Megatron-Core's `metadata.json`,
its integrity manifest) run on every rank once all ranks are done. What we add is the
publishing: the checkpoint is written as `iter_<step>.partial`, renamed and pointed to by
`latest` in the last finalize function, so an interrupted save never looks complete; one
save in flight at a time; and the stall each save costs the training loop.
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch.distributed as dist

from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.strategies.filesystem_async import (
    get_write_results_queue as _mcore_write_results_queue,
)
from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
from megatron.core.dist_checkpointing.strategies.torch import (
    TorchDistSaveShardedStrategy,
    get_async_strategy,
)

from nemotron_train.runtime.backends import cuda_available
from nemotron_train.training.checkpoint_integrity import (
    LATEST_FILE,
    PARTIAL_SUFFIX,
    complete_checkpoints,
)

logger = logging.getLogger(__name__)


def iteration_dir(checkpoint_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives once complete."""
    return Path(checkpoint_dir) / f"iter_{step:07d}"


def nvrx_available() -> bool:
    """Whether NVIDIA Resiliency Extension's async checkpointing imports."""
    from megatron.core.dist_checkpointing.strategies.nvrx import has_nvrx_async_support

    try:
        return has_nvrx_async_support()
    except AssertionError:  # installed, but older than Megatron-Core needs
        return False


@dataclass(frozen=True)
class SaveOptions:
    """How checkpoints are written (resolved from CheckpointConfig for this machine)."""

    asynchronous: bool
    async_strategy: str
    """'nvrx' or 'mcore'."""
    fully_parallel: bool
    verify_integrity: bool
    keep_last: int


@dataclass(frozen=True)
class SaveReport:
    """One save as the training loop saw it."""

    checkpoint: Path
    stall_s: float
    """Seconds the save kept training from continuing (staging and scheduling, for an async save)."""


class CheckpointSaver:
    """Saves into `checkpoint_dir`; call `poll()` once per step and `close()` before exit.

    `on_published(checkpoint, write_s)` is called on every rank when a checkpoint is
    published, with the seconds from the start of its save.
    """

    def __init__(self, checkpoint_dir: Path, options: SaveOptions, on_published=None):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.options = options
        self.on_published = on_published
        self._strategy = TorchDistSaveShardedStrategy()
        group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        if options.fully_parallel and dist.get_world_size(group) > 1:
            # The state dict's structure is the same at every save: distribute once.
            self._strategy = FullyParallelSaveStrategyWrapper(self._strategy, group,
                                                              do_cache_distribution=True)
        # Megatron-Core's writers report through a multiprocessing manager it starts on the
        # first save, by default with 'spawn', whose child re-imports the entry module (torch
        # and Megatron-Core: 10-25 s of stall on a 2-core machine); even a synchronous save
        # goes through it. Started here by fork, it costs milliseconds and no stall.
        _mcore_write_results_queue(mp_mode="fork")
        self._queue = None
        if options.asynchronous:
            modules = get_async_strategy(options.async_strategy)[1]
            modules["get_write_results_queue"](mp_mode="fork")
            self._queue = modules["AsyncCallsQueue"](persistent=False)
        self._validated = False

    def save(self, sharded_state: dict, step: int) -> SaveReport:
        """Write `sharded_state` as the checkpoint of `step`; return when training may go on."""
        started = time.perf_counter()
        self.finalize()  # one save in flight: the previous one is published first
        final = iteration_dir(self.checkpoint_dir, step)
        staging = final.with_name(final.name + PARTIAL_SUFFIX)
        if dist.get_rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        dist.barrier()
        request = dist_checkpointing.save(
            sharded_state, str(staging), self._strategy,
            # Checking that every shard is saved exactly once costs an all-gather of the
            # whole state's metadata; the structure is fixed, so once per run.
            validate_access_integrity=not self._validated,
            async_sharded_save=self.options.asynchronous,
            async_strategy=self.options.async_strategy,
            verify_integrity=self.options.verify_integrity,
        )
        self._validated = True
        publish = partial(self._publish, staging, final, started)
        if request is None:
            publish()
        else:
            request.add_finalize_fn(publish)
            self._queue.schedule_async_request(request)
        return SaveReport(checkpoint=final, stall_s=time.perf_counter() - started)

    def poll(self) -> None:
        """Publish a background save that every rank has finished (a no-op otherwise)."""
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=False)

    def finalize(self) -> None:
        """Wait for a background save to finish and publish it."""
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        """Finish and publish any save in flight; the saver is unusable afterwards."""
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def _publish(self, staging: Path, final: Path, started: float) -> None:
        _publish(self.checkpoint_dir, staging, final, self.options.keep_last)
        if self.on_published is not None:
            self.on_published(final, time.perf_counter() - started)


def _publish(checkpoint_dir: Path, staging: Path, final: Path, keep_last: int) -> None:
    """Rename the finished checkpoint, point `latest` at it and prune (every rank calls this)."""
    dist.barrier()  # every rank's shards are on disk
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        latest_tmp = checkpoint_dir / (LATEST_FILE + ".tmp")
        with open(latest_tmp, "w") as handle:
            handle.write(final.name)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(latest_tmp, checkpoint_dir / LATEST_FILE)
        _prune(checkpoint_dir, keep_last, keep=final)
    dist.barrier()


def _prune(checkpoint_dir: Path, keep_last: int, keep: Path) -> None:
    """Remove all but the newest `keep_last` checkpoints (0 keeps all) and the staging
    directories of saves that were interrupted."""
    for leftover in checkpoint_dir.glob(f"iter_*{PARTIAL_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last <= 0:
        return
    complete = complete_checkpoints(checkpoint_dir)
    for old in complete[keep_last:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def resolve_save_options(checkpoint_cfg) -> SaveOptions:
    """SaveOptions for this machine: async on CUDA unless configured, NVRx when it imports."""
    asynchronous = checkpoint_cfg.async_save
    if asynchronous is None:
        asynchronous = cuda_available()
    strategy = checkpoint_cfg.async_strategy
    if strategy == "auto":
        strategy = "nvrx" if nvrx_available() else "mcore"
    return SaveOptions(asynchronous=asynchronous, async_strategy=strategy,
                       fully_parallel=checkpoint_cfg.fully_parallel_save,
                       verify_integrity=checkpoint_cfg.verify_integrity,
                       keep_last=checkpoint_cfg.keep_last)
