"""Megatron-Core's throughput settings: on where the machine runs them, off on CPU.

Each switch is `None` (auto: on where this machine and layout support it), `true` (on, or a
ConfigError before anything is built when it cannot run here) or `false`. What Megatron-Core
offers and what each needs:

- overlap_grad_reduce: DDP reduces each gradient bucket while backward continues (CUDA).
- overlap_param_gather: the distributed optimizer's parameter all-gather overlaps the next
  forward (CUDA, distributed optimizer, overlapped gradient reduction). Parameters then
  reach the model only in the next forward, so `synchronized_parameters` gathers them
  before a checkpoint or an evaluation, as Megatron-LM does.
- gradient_accumulation_fusion: weight gradients accumulate into DDP's fp32 buffer inside the
  GEMM. TE's linears fuse it themselves; Megatron-Core's own linears (the output layer in
  either spec) need Apex's `fused_weight_gradient_mlp_cuda`, so auto needs Apex.
- moe_permute_fusion: TransformerEngine's fused token permute/unpermute (MoE models).
- tp_comm_overlap: TE userbuffers overlap tensor-parallel all-gather / reduce-scatter with
  the GEMMs (TE spec, TP > 1, sequence parallelism). Off unless asked: it needs a userbuffers
  bootstrap sized to the micro-batch (Megatron-LM leaves it off by default too).
- `model.moe_token_dispatcher_type=flex` (DeepEP / HybridEP, for large expert parallelism) is
  checked here too: its backend must import.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from nemotron_train.errors import ConfigError
from nemotron_train.runtime.backends import Machine


@dataclass(kw_only=True)
class ThroughputConfig:
    """Communication overlap and kernel fusions (None: on where this machine supports it)."""

    overlap_grad_reduce: Optional[bool] = None
    """Reduce gradient buckets during backward (auto: with CUDA)."""
    overlap_param_gather: Optional[bool] = None
    """Overlap the distributed optimizer's parameter all-gather with the next forward (auto:
    CUDA, parallel.distributed_optimizer and overlap_grad_reduce)."""
    gradient_accumulation_fusion: Optional[bool] = None
    """Accumulate weight gradients inside the GEMM (auto: CUDA and Apex's fused kernel)."""
    moe_permute_fusion: Optional[bool] = None
    """TransformerEngine's fused MoE token permutation (auto: MoE layers and TE >= 2.1)."""
    tp_comm_overlap: bool = False
    """TE userbuffers overlap of tensor-parallel communication with GEMMs (TE spec, TP > 1,
    parallel.sequence_parallel); off by default."""


@dataclass(frozen=True)
class ThroughputPlan:
    """The resolved switches and the Megatron-Core config fields that carry them."""

    settings: dict
    """Switch name -> on/off."""
    reasons: dict
    """Switch name -> why, for the printed plan."""
    ddp: dict = field(default_factory=dict)
    """DistributedDataParallelConfig fields."""
    optimizer: dict = field(default_factory=dict)
    """OptimizerConfig fields."""
    transformer: dict = field(default_factory=dict)
    """TransformerConfig fields."""

    def describe(self) -> str:
        return "throughput: " + ", ".join(
            f"{name} {'on' if on else 'off'} ({self.reasons[name]})" for name, on in self.settings.items())


def _resolve(key: str, asked: Optional[bool], available: bool, needs: str) -> tuple[bool, str]:
    if asked is None:
        return available, ("auto" if available else f"needs {needs}")
    if asked and not available:
        raise ConfigError(f"throughput.{key}", True, f"needs {needs} here; set it to false or null (auto)")
    return asked, "set"


def plan_throughput(throughput: ThroughputConfig, *, machine: Machine, parallel, model,
                    layer_spec: str) -> ThroughputPlan:
    """Resolve every switch for this machine, the parallel layout and the model's MoE layers."""
    settings, reasons = {}, {}

    def decide(key, available, needs):
        settings[key], reasons[key] = _resolve(key, getattr(throughput, key), available, needs)

    decide("overlap_grad_reduce", machine.cuda, "CUDA")
    decide("overlap_param_gather",
           machine.cuda and parallel.distributed_optimizer and settings["overlap_grad_reduce"],
           "CUDA, the distributed optimizer and overlap_grad_reduce")
    decide("gradient_accumulation_fusion", machine.apex_gradient_accumulation_fusion,
           "CUDA and Apex's fused_weight_gradient_mlp_cuda")
    has_moe = "E" in model.pattern
    decide("moe_permute_fusion", has_moe and machine.fused_moe_permute,
           "MoE layers and TransformerEngine >= 2.1")
    decide("tp_comm_overlap",
           machine.transformer_engine and layer_spec == "te" and parallel.tensor > 1
           and parallel.sequence_parallel,
           "the TE spec, parallel.tensor > 1 and parallel.sequence_parallel")
    _check_flex_dispatcher(model, parallel, machine)
    overlap_param_gather = settings["overlap_param_gather"]
    return ThroughputPlan(
        settings=settings, reasons=reasons,
        ddp=dict(overlap_grad_reduce=settings["overlap_grad_reduce"],
                 overlap_param_gather=overlap_param_gather),
        optimizer=dict(overlap_param_gather=overlap_param_gather),
        transformer=dict(gradient_accumulation_fusion=settings["gradient_accumulation_fusion"],
                         moe_permute_fusion=settings["moe_permute_fusion"],
                         tp_comm_overlap=settings["tp_comm_overlap"]),
    )


def _check_flex_dispatcher(model, parallel, machine: Machine) -> None:
    if "E" not in model.pattern or model.moe_token_dispatcher_type != "flex":
        return
    backend = model.moe_flex_dispatcher_backend
    if backend not in machine.flex_dispatcher_backends:
        raise ConfigError("model.moe_token_dispatcher_type", "flex",
                          f"the flex dispatcher's backend {backend!r} (model.moe_flex_dispatcher_"
                          f"backend) does not import here (found: {list(machine.flex_dispatcher_backends)}); "
                          "install DeepEP on the GPU nodes, or use alltoall")
    if backend == "deepep" and parallel.tensor * parallel.expert < 2:
        raise ConfigError("model.moe_token_dispatcher_type", "flex",
                          "DeepEP dispatches across TP x EP ranks and needs parallel.tensor x "
                          "parallel.expert > 1; use alltoall for this layout")


def initialize_userbuffers(config) -> None:
    """Set up TE's userbuffers for tensor-parallel communication overlap (as Megatron-LM's
    `_initialize_tp_communicators`): one buffer shape, the micro-batch's tokens per CP rank
    by the hidden size, before the model is built."""
    from transformer_engine.pytorch.module.base import initialize_ub

    tokens = config.model.seq_length * config.train.micro_batch_size // config.parallel.context
    initialize_ub(shape=[tokens, config.model.hidden_size], tp_size=config.parallel.tensor,
                  use_fp8=False, bootstrap_backend="nccl")


@contextmanager
def synchronized_parameters(chunks):
    """With overlap_param_gather, gather the updated parameters into the model for a block
    that reads them outside a training forward (checkpoint, evaluation), then re-arm the
    forward pre-hooks that overlap the gather."""
    hooked = [chunk for chunk in chunks if getattr(chunk, "use_forward_hook", False)]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in hooked:
            chunk.enable_forward_pre_hook()
