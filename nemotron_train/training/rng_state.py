"""Every random stream a training step draws from, captured into a checkpoint and restored.

A step draws from torch's CPU and CUDA generators (dropout, initialisation of lazily built
state), Megatron-Core's RNG tracker (its per-TP/EP-rank forks for dropout and expert
initialisation), Python's and numpy's generators (anything a library does with them) and the
NVFP4 stochastic-rounding stream (precision/stochastic_rounding.py). The streams differ from
rank to rank (the tracker's seeds are per TP/EP rank, and the rounding draws depend on each
rank's data), so each rank stores its own: one `ShardedObject` per rank, keyed by the global
rank, in the same dist_checkpointing save as the weights.

Megatron-LM keeps the same streams (`get_rng_state` in megatron/training/checkpointing.py),
but one copy per (PP, TP) rank, which leaves out the EP and DP ranks that draw differently
and the rounding stream; that is the gap this module fills. A rank's streams only mean
something to the rank with the same place in the same layout, so they are restored only
when the layout is unchanged (`RngLayout`); otherwise the run says that it re-seeds.
"""

import random
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing import ShardedObject

from nemotron_train.runtime.backends import cuda_available

RNG_KEY = "rng_state"
LAYOUT_KEY = "rng_layout"


@dataclass(frozen=True)
class RngLayout:
    """The layout a checkpoint's per-rank streams belong to."""

    world_size: int
    tensor: int
    pipeline: int
    context: int
    expert: int

    @classmethod
    def current(cls) -> "RngLayout":
        """The layout of Megatron-Core's process groups in this process."""
        return cls(world_size=dist.get_world_size(),
                   tensor=parallel_state.get_tensor_model_parallel_world_size(),
                   pipeline=parallel_state.get_pipeline_model_parallel_world_size(),
                   context=parallel_state.get_context_parallel_world_size(),
                   expert=parallel_state.get_expert_model_parallel_world_size())

    def as_dict(self) -> dict:
        return asdict(self)


def capture_rng_state(rounding_stream=None) -> dict:
    """This rank's streams, copied (the generators move on as training continues)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "tracker": {name: value.clone() for name, value in
                    tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }
    if cuda_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    if rounding_stream is not None:
        state["stochastic_rounding"] = rounding_stream.get_state()
    return state


def restore_rng_state(state: dict, rounding_stream=None) -> None:
    """Put this rank's streams back as `capture_rng_state` found them."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if cuda_available() and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(
        {name: value.clone() for name, value in state["tracker"].items()})
    if rounding_stream is not None and "stochastic_rounding" in state:
        rounding_stream.set_state(state["stochastic_rounding"])


def sharded_rng_state(rounding_stream=None) -> ShardedObject:
    """This rank's streams as its shard of one object per global rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    return ShardedObject(RNG_KEY, capture_rng_state(rounding_stream), (world,), (rank,), replica_id=0)


def rng_state_placeholder() -> ShardedObject:
    """What `dist_checkpointing.load` fills with this rank's saved streams."""
    rank, world = dist.get_rank(), dist.get_world_size()
    return ShardedObject(RNG_KEY, None, (world,), (rank,), replica_id=0)


def restorable(saved_layout: Optional[dict], layout: RngLayout) -> bool:
    """Whether a checkpoint with `saved_layout` (None: saved without streams) holds this
    rank's streams."""
    return saved_layout is not None and saved_layout == layout.as_dict()
