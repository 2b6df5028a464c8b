"""Parallel layout, process groups and device selection.

Parallel sizes live here, in one config, and reach Megatron-Core's
TransformerConfig through `megatron_parallel_fields` alone.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from nemotron_train.errors import ConfigError


@dataclass(kw_only=True)
class ParallelConfig:
    """How the model is split across processes; data parallelism takes the rest of the world."""

    tensor: int = 1
    """Tensor-parallel size (TP)."""
    pipeline: int = 1
    """Pipeline-parallel size (PP)."""
    context: int = 1
    """Context-parallel size (CP): each sequence is split across this many ranks."""
    expert: int = 1
    """Expert-parallel size (EP): routed experts are split across this many ranks."""
    expert_tensor: Optional[int] = None
    """Tensor-parallel size inside each expert (ETP); None takes `tensor`."""
    sequence_parallel: bool = False
    """Shard activations along the sequence inside TP regions (Megatron-Core requires it for MoE + TP)."""
    distributed_optimizer: bool = False
    """Shard optimizer states across data-parallel ranks (Megatron-Core's distributed optimizer)."""
    backend: str = "auto"
    """torch.distributed backend: 'nccl', 'gloo', or 'auto' (nccl with CUDA, else gloo)."""
    num_nodes: Optional[int] = None
    """Nodes the layout is planned for; the dry run sizes it at num_nodes x gpus_per_node GPUs
    (None: the smallest world size the layout allows)."""
    gpus_per_node: int = 8
    """GPUs, one process each, per node."""
    distributed_timeout_minutes: int = 30
    """How long a collective may wait for its peers before the process group aborts it (a rank
    that died or hangs); long enough for the slowest legitimate one (a checkpoint load)."""

    def __post_init__(self):
        for key in ("tensor", "pipeline", "context", "expert"):
            if getattr(self, key) < 1:
                raise ConfigError(f"parallel.{key}", getattr(self, key), "must be at least 1")
        if self.num_nodes is not None and self.num_nodes < 1:
            raise ConfigError("parallel.num_nodes", self.num_nodes, "must be at least 1, or null")
        if self.gpus_per_node < 1:
            raise ConfigError("parallel.gpus_per_node", self.gpus_per_node, "must be at least 1")
        if self.distributed_timeout_minutes < 1:
            raise ConfigError("parallel.distributed_timeout_minutes", self.distributed_timeout_minutes,
                              "must be at least 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError("parallel.backend", self.backend, "choose 'auto', 'nccl' or 'gloo'")

    @property
    def model_parallel_size(self) -> int:
        """Processes one model replica spans (TP x PP x CP)."""
        return self.tensor * self.pipeline * self.context

    @property
    def planned_world_size(self) -> Optional[int]:
        """num_nodes x gpus_per_node, or None when the recipe names no node count."""
        return None if self.num_nodes is None else self.num_nodes * self.gpus_per_node


def megatron_parallel_fields(parallel: ParallelConfig) -> dict:
    """The parallel sizes as Megatron-Core's TransformerConfig names them."""
    return dict(
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        context_parallel_size=parallel.context,
        expert_model_parallel_size=parallel.expert,
        expert_tensor_parallel_size=parallel.expert_tensor or parallel.tensor,
        sequence_parallel=parallel.sequence_parallel,
    )


def check_world_size(parallel: ParallelConfig, world_size: int) -> int:
    """Return the data-parallel size, or raise naming how many processes the layout needs."""
    needed = parallel.model_parallel_size
    layout = (f"parallel.tensor={parallel.tensor} x parallel.pipeline={parallel.pipeline} "
              f"x parallel.context={parallel.context}")
    if world_size % needed:
        raise ConfigError(
            "world_size",
            world_size,
            f"{layout} needs a multiple of {needed} processes; launch with "
            f"`torchrun --nproc-per-node {needed} train.py ...`, or check the layout without "
            "devices with dry_run=true",
        )
    data_parallel = world_size // needed
    expert_span = parallel.expert * (parallel.expert_tensor or parallel.tensor)
    if (data_parallel * parallel.context * parallel.tensor) % expert_span:
        raise ConfigError(
            "parallel.expert",
            parallel.expert,
            f"EP x ETP = {expert_span} must divide DP x CP x TP = "
            f"{data_parallel * parallel.context * parallel.tensor} at world size {world_size}",
        )
    return data_parallel


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    data_parallel_size: int
    data_parallel_rank: int


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_devices(parallel: ParallelConfig) -> None:
    """Fail before allocation when this node has fewer GPUs than processes asked for them."""
    if not torch.cuda.is_available():
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > torch.cuda.device_count():
        raise ConfigError(
            "LOCAL_WORLD_SIZE",
            local_world,
            f"this node has {torch.cuda.device_count()} GPUs; start at most that many "
            "processes per node, or check the layout without devices with dry_run=true",
        )


def initialize_distributed(parallel: ParallelConfig, timeout_minutes: Optional[int] = None,
                           local: bool = False) -> DistributedContext:
    """Start torch.distributed (torchrun env or a single process) and Megatron-Core's groups;
    collectives time out after `timeout_minutes` (default: parallel.distributed_timeout_minutes).
    `local` starts a world of this process alone whatever the environment says (the
    accounting's probe models, built before a torchrun job's own group)."""
    from megatron.core import parallel_state

    world_size = 1 if local else world_size_from_env()
    data_parallel = check_world_size(parallel, world_size)
    check_devices(parallel)
    rank = 0 if local else int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # One core's worth of threads per process avoids oversubscribing small machines.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    backend = parallel.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes or parallel.distributed_timeout_minutes)
        if "MASTER_ADDR" in os.environ and not local:
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
        else:
            if world_size != 1:
                raise ConfigError("WORLD_SIZE", world_size, "set MASTER_ADDR/MASTER_PORT or use torchrun")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
    fields = megatron_parallel_fields(parallel)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=fields["tensor_model_parallel_size"],
        pipeline_model_parallel_size=fields["pipeline_model_parallel_size"],
        context_parallel_size=fields["context_parallel_size"],
        expert_model_parallel_size=fields["expert_model_parallel_size"],
        expert_tensor_parallel_size=fields["expert_tensor_parallel_size"],
    )
    return DistributedContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        backend=backend,
        data_parallel_size=data_parallel,
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
    )


def destroy_distributed() -> None:
    """Tear down Megatron-Core's groups and torch.distributed (tests run several jobs per process)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
