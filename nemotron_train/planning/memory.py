"""Memory per GPU of a hybrid model under a parallel layout: weights, gradients, optimizer
state and activations per pipeline stage."""

from dataclasses import dataclass

import torch

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.pattern import LAYER_SYMBOLS
from nemotron_train.planning.parameters import ModuleCounts, ParamSplit

GPU_MEMORY_BYTES = 80 * 10**9
"""The memory budget checked: an 80 GB GPU, counted in decimal GB (an H100 80GB has ~85.5e9 usable)."""
RUNTIME_RESERVE_BYTES = 4 * 2**30
"""An allowance, not a measurement: CUDA context, NCCL buffers, cuBLAS workspaces, fragmentation."""
ADAM_STATE_BYTES = 8
"""Adam's two fp32 moments per parameter."""


@dataclass(frozen=True)
class Layout:
    """A parallel layout resolved against a world size and a batch."""

    tensor: int
    pipeline: int
    context: int
    expert: int
    expert_tensor: int
    world_size: int
    sequence_parallel: bool
    distributed_optimizer: bool
    micro_batch: int
    global_batch: int

    @property
    def data(self) -> int:
        """Data-parallel replicas (Megatron-Core's DP, context parallelism not included)."""
        return self.world_size // (self.tensor * self.pipeline * self.context)

    @property
    def expert_data(self) -> int:
        """Replicas of each routed expert: world / (EP x ETP x PP)."""
        return self.world_size // (self.expert * self.expert_tensor * self.pipeline)

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.data)

    @property
    def sequence_shards(self) -> int:
        """How many ways the residual stream is split along the sequence inside a CP rank."""
        return self.tensor if self.sequence_parallel else 1


@dataclass(frozen=True)
class DTypeBytes:
    """Bytes per element of what a training step keeps."""

    param: int
    activation: int
    gradient: int
    optimizer: int
    """Adam moments plus the fp32 main copy when parameters are lower precision."""


def dtype_bytes(params_dtype: torch.dtype, grad_reduce_in_fp32: bool) -> DTypeBytes:
    param = torch.empty((), dtype=params_dtype).element_size()
    master = 4 if param < 4 else 0
    return DTypeBytes(param=param, activation=param, gradient=4 if grad_reduce_in_fp32 else param,
                      optimizer=ADAM_STATE_BYTES + master)


def activation_bytes_per_layer(layer_type: str, model: HybridModelConfig, layout: Layout,
                               act: int, recompute: tuple = ()) -> float:
    """Activations one layer keeps for backward, for one micro-batch, on one GPU.

    T = micro_batch x seq / CP tokens per rank. Residual-stream tensors are split along the
    sequence under sequence parallelism: R = (T / sp) x d elements, sp = TP with it, else 1.
    Tensor-parallel intermediates are split /TP; routed-expert tensors hold k copies of the
    T / sp local tokens (balanced routing, ETP = 1). Selective recompute (`model.recompute`)
    keeps only a recomputed module's input; "layernorm" drops one R per normed layer.

    - mamba: norm input and in_proj input (2R), in_proj output z,x,B,C,dt
      (2.d_inner + 2.G.N + H), scan output y and the gated-norm output (2.d_inner), /TP.
    - attention: norm input and QKV input (2R), Q,K,V and the core output
      (2.q + 2.kv widths, /TP), fp32 softmax statistics per head. Flash attention: no s^2 term.
    - moe: norm input and router input (2R), fp32 router logits and scores (2.N.4 bytes per
      local token), latent projections' outputs (2.l), k copies of expert input, fc1 output,
      activation output and expert output (k.(2.l + 2.f)), shared expert fc1 and activation
      outputs (2.f_shared/TP).
    - mlp: 2R + fc1 output and activation output (2.f/TP).
    """
    tokens = layout.micro_batch * model.seq_length / layout.context
    local = tokens / layout.sequence_shards
    tp = layout.tensor
    residual = local * model.hidden_size * act
    norm_kept = 1 if "layernorm" in recompute else 2
    if layer_type == "mamba":
        shape_inner = model.mamba_num_heads * model.mamba_head_dim
        in_proj_out = 2 * shape_inner + 2 * model.mamba_num_groups * model.mamba_state_dim + model.mamba_num_heads
        return 2 * residual + tokens * act * (in_proj_out + 2 * shape_inner) / tp
    if layer_type == "attention":
        query = model.num_attention_heads * model.head_dim
        # With fewer KV heads than TP ranks each rank keeps one whole group's K and V.
        key_value = max(model.num_query_groups, tp) * model.head_dim
        stats = tokens * model.num_attention_heads / tp * 4
        return norm_kept * residual + tokens * act * (2 * query + 2 * key_value) / tp + stats
    if layer_type == "mlp":
        if "mlp" in recompute:
            return norm_kept * residual
        return norm_kept * residual + tokens * act * 2 * model.ffn_hidden_size / tp
    if layer_type == "moe":
        if "moe" in recompute:
            return norm_kept * residual
        width = model.moe_latent_size or model.hidden_size
        k, ffn = model.moe_router_topk, model.moe_ffn_hidden_size
        router = local * model.num_experts * 2 * 4
        latent = local * 2 * model.moe_latent_size * act if model.moe_latent_size else 0.0
        expert_tensors = 2 * width + (1 if "moe_act" in recompute else 2) * ffn
        experts = k * local * expert_tensors * act
        shared = 0.0
        if model.moe_shared_expert_intermediate_size and "shared_experts" not in recompute:
            shared = tokens * 2 * model.moe_shared_expert_intermediate_size * act / tp
        return norm_kept * residual + router + latent + experts + shared
    raise ValueError(f"unknown layer type {layer_type!r}")


RECOMPUTE_EFFECTS = {
    "moe": "MoE layers keep only their input and rerun router, dispatch and experts in backward",
    "moe_act": "MoE experts drop their activation output and recompute it",
    "mlp": "dense MLP layers keep only their input",
    "shared_experts": "the shared expert drops its intermediates",
    "layernorm": "norm outputs are recomputed (one residual-size tensor less per layer)",
}


def recompute_assumption(recompute: tuple) -> str:
    """What the activation estimate assumes about recompute, in one sentence."""
    common = ("flash attention (no seq x seq scores); one recomputed layer's full activations "
              "are counted on top while its backward runs")
    if not recompute:
        return ("no recompute: every layer keeps what its backward needs (model.recompute=[]); "
                "flash attention (no seq x seq scores)")
    effects = "; ".join(RECOMPUTE_EFFECTS.get(module, f"{module} recomputed (not modelled)")
                        for module in recompute)
    return f"selective recompute of {list(recompute)}: {effects}; {common}"


def loss_activation_bytes(model: HybridModelConfig, layout: Layout, vocab_size: int, act: int) -> float:
    """Final norm and output-layer inputs (2R), and the logits at the loss.

    The vocabulary-parallel cross entropy keeps fp32 softmax values (4 bytes over V/TP for every
    token of the full sequence) while the logits it was computed from are still alive (act bytes).
    """
    tokens = layout.micro_batch * model.seq_length / layout.context
    residual = tokens / layout.sequence_shards * model.hidden_size * act
    return 2 * residual + tokens * vocab_size / layout.tensor * (4 + act)


@dataclass(frozen=True)
class StageMemory:
    """Memory of one GPU in one pipeline stage."""

    stage: int
    layers: str
    """This stage's layer symbols."""
    params: float
    """Parameters this GPU holds."""
    weights: float
    gradients: float
    optimizer: float
    """Optimizer state under the layout's distributed-optimizer setting."""
    optimizer_unsharded: float
    optimizer_distributed: float
    activations: float
    microbatches_in_flight: int
    activations_by_layer_type: dict
    """Layer type -> bytes of all this stage's layers of that type, all micro-batches in flight."""
    loss_and_mtp: float
    recompute_peak: float
    """One recomputed layer's full activations, alive while its backward runs."""
    reserve: float = RUNTIME_RESERVE_BYTES

    def total(self, distributed_optimizer: bool) -> float:
        optimizer = self.optimizer_distributed if distributed_optimizer else self.optimizer_unsharded
        return self.weights + self.gradients + optimizer + self.activations + self.reserve

    @property
    def peak(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.reserve


def pipeline_stages(model: HybridModelConfig, pipeline: int) -> list[str]:
    """Each stage's layer symbols: the pattern's '|' stages, else an even split (as Megatron-Core)."""
    parsed = model.parsed_pattern
    if len(parsed.stages) > 1:
        return list(parsed.stages)
    per_stage = len(parsed.main) // pipeline
    return [parsed.main[i * per_stage:(i + 1) * per_stage] for i in range(pipeline)]


def memory_per_gpu(model: HybridModelConfig, counts: ModuleCounts, layout: Layout,
                   sizes: DTypeBytes, vocab_size: int) -> list[StageMemory]:
    """Weights, gradients, optimizer state and activations of one GPU in every pipeline stage.

    Optimizer state (fp32 main copy + Adam moments) is sharded by the distributed optimizer
    over the data-parallel ranks holding the same shard: DP x CP for dense parameters, the
    expert-data-parallel group for routed experts. Gradients stay whole (the buffer is
    reduce-scattered in place). Under 1F1B, stage p holds min(PP - p, micro-batches)
    micro-batches of activations at its peak.
    """
    recompute = tuple(model.recompute)
    expert_span = layout.expert * layout.expert_tensor
    stages = pipeline_stages(model, layout.pipeline)
    per_layer = {t: activation_bytes_per_layer(t, model, layout, sizes.activation, recompute)
                 for t in counts.layers}
    full_layer = {t: activation_bytes_per_layer(t, model, layout, sizes.activation)
                  for t in counts.layers}
    results = []
    for index, symbols in enumerate(stages):
        types = [LAYER_SYMBOLS[s] for s in symbols]
        split = ParamSplit()
        for layer_type in types:
            split = split + counts.layers[layer_type]
        is_first, is_last = index == 0, index == len(stages) - 1
        if is_first:
            split = split + counts.embedding
        extra_activations = 0.0
        if is_last:
            split = split + counts.final_norm + counts.output_layer
            extra_activations = loss_activation_bytes(model, layout, vocab_size, sizes.activation)
            if counts.mtp_depth is not None:
                split = split + counts.mtp_depth * counts.mtp_stored_depths
                if not is_first:
                    split = split + counts.embedding  # MTP embeds the shifted tokens on the last stage
                extra_activations += _mtp_activation_bytes(model, counts, layout, sizes, vocab_size,
                                                           recompute)
        dense = split.tensor_parallel / layout.tensor + split.replicated
        experts = split.expert / expert_span
        optimizer_distributed = sizes.optimizer * (dense / (layout.data * layout.context)
                                                   + experts / layout.expert_data)
        in_flight = min(layout.pipeline - index, layout.num_microbatches)
        by_type = {t: in_flight * per_layer[t] * types.count(t) for t in dict.fromkeys(types)}
        recomputed = [full_layer[t] for t in set(types) if per_layer[t] < full_layer[t]]
        recompute_peak = max(recomputed, default=0.0)
        activations = sum(by_type.values()) + extra_activations + recompute_peak
        optimizer_unsharded = sizes.optimizer * (dense + experts)
        results.append(StageMemory(
            stage=index, layers=symbols, params=dense + experts,
            weights=sizes.param * (dense + experts), gradients=sizes.gradient * (dense + experts),
            optimizer=optimizer_distributed if layout.distributed_optimizer else optimizer_unsharded,
            optimizer_unsharded=optimizer_unsharded, optimizer_distributed=optimizer_distributed,
            activations=activations, microbatches_in_flight=in_flight,
            activations_by_layer_type=by_type, loss_and_mtp=extra_activations,
            recompute_peak=recompute_peak,
        ))
    return results


def _mtp_activation_bytes(model, counts, layout, sizes, vocab_size, recompute) -> float:
    """Every MTP depth keeps its block layers, its 2d-wide projection input and its own loss."""
    tokens = layout.micro_batch * model.seq_length / layout.context
    projection = tokens / layout.sequence_shards * 2 * model.hidden_size * sizes.activation
    block = sum(activation_bytes_per_layer(t, model, layout, sizes.activation, recompute)
                for t, _ in counts.mtp_layers)
    loss = loss_activation_bytes(model, layout, vocab_size, sizes.activation)
    return model.parsed_pattern.mtp_depths * (projection + block + loss)
