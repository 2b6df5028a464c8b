"""What a hybrid model costs: parameters, training FLOPs, memory per GPU and MoE traffic.

The parameter counts come from Megatron-Core's own modules: `count_parameters` builds one
layer of each type in the pattern, the embedding, final norm, output layer and MTP block
at full width on the meta device (no memory), and the pattern's layer counts multiply
the per-layer numbers. Everything after that is arithmetic on those counts; each formula
is written out where it is computed.

How a parallel layout shards parameters (Megatron-Core's rules, read from the modules):
tensor parallelism (TP) splits every parameter marked `tensor_model_parallel` (attention
and Mamba matrices, Mamba's per-head vectors, shared-expert and dense-MLP matrices, the
vocabulary); routed experts are split across expert parallelism x expert tensor
parallelism (EP x ETP); norms, the router and the LatentMoE projections are replicated.
Pipeline parallelism (PP) gives each stage its layers, the first stage the embedding and
the last the final norm, output layer and MTP block.
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

import torch

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.pattern import LAYER_SYMBOLS

TRAINING_FLOPS_FACTOR = 3
"""Forward + backward = 3 forward passes (the backward computes input and weight gradients)."""
GPU_MEMORY_BYTES = 80 * 10**9
"""The memory budget checked: an 80 GB GPU, counted in decimal GB (an H100 80GB has ~85.5e9 usable)."""
RUNTIME_RESERVE_BYTES = 4 * 2**30
"""An allowance, not a measurement: CUDA context, NCCL buffers, cuBLAS workspaces, fragmentation."""
ADAM_STATE_BYTES = 8
"""Adam's two fp32 moments per parameter."""


@dataclass(frozen=True)
class ParamSplit:
    """Parameters of some modules, split by how a parallel layout shards them."""

    tensor_parallel: int = 0
    """Split across TP ranks (marked `tensor_model_parallel` by Megatron-Core)."""
    expert: int = 0
    """Routed-expert weights, split across EP x ETP ranks."""
    replicated: int = 0
    """On every rank of the model-parallel group: norms, router, LatentMoE projections."""
    matmul: int = 0
    """The 2-D weights a token is multiplied by (routed experts included, embedding excluded)."""

    @property
    def total(self) -> int:
        return self.tensor_parallel + self.expert + self.replicated

    def __add__(self, other: "ParamSplit") -> "ParamSplit":
        return ParamSplit(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})

    def __mul__(self, count: int) -> "ParamSplit":
        return ParamSplit(**{f.name: getattr(self, f.name) * count for f in dataclasses.fields(self)})

    def active(self, expert_fraction: float) -> float:
        """Parameters one token uses: all but the routed experts it is not sent to."""
        return self.total - self.expert * (1.0 - expert_fraction)

    def active_matmul(self, expert_fraction: float) -> float:
        """Matrix parameters one token is multiplied by (routed experts hold only matrices)."""
        return self.matmul - self.expert * (1.0 - expert_fraction)


@dataclass(frozen=True)
class MambaShape:
    """The SSD shape of one MambaMixer, read from the built module."""

    heads: int
    head_dim: int
    state_dim: int
    groups: int
    conv_kernel: int
    chunk_size: int

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        """x, B and C go through the causal conv."""
        return self.inner + 2 * self.groups * self.state_dim


@dataclass(frozen=True)
class ModuleCounts:
    """Parameter splits of one layer of each type and of every other module of the model."""

    layers: dict
    """Layer type ("mamba", "moe", "attention", "mlp") -> ParamSplit of one main-stack layer."""
    embedding: ParamSplit
    final_norm: ParamSplit
    output_layer: ParamSplit
    mtp_depth: Optional[ParamSplit]
    """One MTP depth (norms, projection, its layers), or None without MTP."""
    mtp_layers: tuple
    """(layer type, ParamSplit) of the layers inside one MTP depth, in order."""
    mtp_stored_depths: int
    """MTP depth modules with their own weights: 1 when the depths share one block."""
    mamba: Optional[MambaShape]
    linear_weights: dict
    """Name pattern of each module holding a weight matrix (experts and layers as '*') ->
    elements in the weight matrices of one such module."""

    @property
    def linear_modules(self) -> tuple:
        """Name patterns of the modules holding a weight matrix."""
        return tuple(self.linear_weights)


def count_parameters(model: HybridModelConfig, vocab_size: int) -> ModuleCounts:
    """Build one layer of each type (and the rest) on the meta device and count their parameters.

    Starts and stops a world-size-1 process group of its own, so the modules are built
    unsharded whatever the run's layout; sharding is applied arithmetically afterwards.
    """
    import torch.distributed as dist
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemotron_train.runtime import te_fallbacks
    from nemotron_train.runtime.device_redirect import allocate_on
    from nemotron_train.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        initialize_distributed,
        megatron_parallel_fields,
    )
    from nemotron_train.runtime.setup import prepare_runtime

    if dist.is_initialized():
        raise RuntimeError("count_parameters builds unsharded modules; call it outside a distributed run")
    parsed = model.parsed_pattern
    one_of_each = "".join(dict.fromkeys(parsed.main))
    mtp_suffix = f"/{parsed.mtp_block}" * parsed.mtp_depths
    # The local spec builds on any machine; TE's spec holds the same parameter shapes, and
    # so does the flex dispatcher (whose DeepEP buffers cannot be built on the meta device).
    probe_config = dataclasses.replace(model, pattern=one_of_each + mtp_suffix,
                                       num_layers=len(one_of_each), spec="local",
                                       moe_token_dispatcher_type="alltoall")
    prepare_runtime()
    initialize_distributed(ParallelConfig(backend="gloo"), local=True)
    try:
        model_parallel_cuda_manual_seed(0)
        transformer_config = probe_config.transformer_config(
            **megatron_parallel_fields(ParallelConfig()), perform_initialization=False)
        # TE's modules never reach the meta device: the local stand-ins hold the same shapes.
        with allocate_on(torch.device("meta")), te_fallbacks.local_standins():
            probe = probe_config.build(transformer_config, vocab_size=vocab_size)
        return _counts_from_probe(probe, one_of_each, parsed.mtp_block or "")
    finally:
        destroy_distributed()


def _counts_from_probe(probe, one_of_each: str, mtp_block: str) -> ModuleCounts:
    from megatron.core.ssm.mamba_mixer import MambaMixer
    from megatron.core.transformer.moe.moe_layer import MoELayer

    expert_ids = {id(p) for m in probe.modules() if isinstance(m, MoELayer)
                  for p in m.experts.parameters()}
    embedding_ids = {id(p) for p in probe.embedding.parameters()}

    def split(module) -> ParamSplit:
        counts = dict(tensor_parallel=0, expert=0, replicated=0, matmul=0)
        for param in module.parameters():
            if id(param) in expert_ids:
                counts["expert"] += param.numel()
            elif getattr(param, "tensor_model_parallel", False):
                counts["tensor_parallel"] += param.numel()
            else:
                counts["replicated"] += param.numel()
            if param.dim() == 2 and id(param) not in embedding_ids:
                counts["matmul"] += param.numel()
        return ParamSplit(**counts)

    layers = {LAYER_SYMBOLS[symbol]: split(layer)
              for symbol, layer in zip(one_of_each, probe.decoder.layers)}
    mtp_depth, mtp_layers, stored_depths = None, (), 0
    if getattr(probe, "mtp", None) is not None:
        depth_module = probe.mtp.layers[0]
        mtp_depth = split(depth_module)
        inner = depth_module.mtp_model_layer.layers
        mtp_layers = tuple((LAYER_SYMBOLS[symbol], split(layer)) for symbol, layer in zip(mtp_block, inner))
        stored_depths = len(probe.mtp.layers)
    mixers = [m for m in probe.modules() if isinstance(m, MambaMixer)]
    mamba = None
    if mixers:
        mixer = mixers[0]
        mamba = MambaShape(heads=mixer.nheads, head_dim=mixer.headdim, state_dim=mixer.d_state,
                           groups=mixer.ngroups, conv_kernel=mixer.d_conv, chunk_size=mixer.chunk_size)
    linear_weights = {}
    for name, module in probe.named_modules():
        matrices = [p.numel() for p in module.parameters(recurse=False) if p.dim() == 2]
        if matrices:
            pattern = re.sub(r"(layers|local_experts)\.\d+", r"\1.*", name)
            linear_weights.setdefault(pattern, sum(matrices))
    return ModuleCounts(layers=layers, embedding=split(probe.embedding),
                        final_norm=split(probe.decoder.final_norm),
                        output_layer=split(probe.output_layer), mtp_depth=mtp_depth, mtp_layers=mtp_layers,
                        mtp_stored_depths=stored_depths, mamba=mamba, linear_weights=linear_weights)


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParameterSummary:
    """Parameter totals and the per-token active counts."""

    by_layer_type: dict
    """Layer type -> {"layers", "per_layer", "total", "active_per_layer"}."""
    embedding: int
    output_layer: int
    final_norm: int
    mtp: int
    total: int
    """Every parameter the run trains, MTP included."""
    total_without_mtp: int
    active: float
    """Parameters a token uses, both embeddings included (MTP not: it drafts, it does not predict)."""
    active_without_input_embedding: float
    """As `active`, less the input embedding lookup (which does no FLOPs)."""
    active_without_embeddings: float
    """As `active`, less both the input embedding and the output layer."""
    mtp_active: float


def summarize_parameters(model: HybridModelConfig, counts: ModuleCounts) -> ParameterSummary:
    parsed = model.parsed_pattern
    fraction = expert_fraction(model)
    by_type = {}
    layers_total = 0
    layers_active = 0.0
    for layer_type, split in counts.layers.items():
        number = parsed.count(layer_type)
        by_type[layer_type] = dict(layers=number, per_layer=split.total, total=split.total * number,
                                   active_per_layer=split.active(fraction))
        layers_total += split.total * number
        layers_active += split.active(fraction) * number
    mtp_total = counts.mtp_depth.total * counts.mtp_stored_depths if counts.mtp_depth else 0
    mtp_active = counts.mtp_depth.active(fraction) if counts.mtp_depth else 0.0
    embedding, output = counts.embedding.total, counts.output_layer.total
    without_embeddings = layers_active + counts.final_norm.total
    total_without_mtp = layers_total + embedding + output + counts.final_norm.total
    return ParameterSummary(
        by_layer_type=by_type, embedding=embedding, output_layer=output,
        final_norm=counts.final_norm.total, mtp=mtp_total,
        total=total_without_mtp + mtp_total, total_without_mtp=total_without_mtp,
        active=without_embeddings + embedding + output,
        active_without_input_embedding=without_embeddings + output,
        active_without_embeddings=without_embeddings, mtp_active=mtp_active,
    )


def expert_fraction(model: HybridModelConfig) -> float:
    """The share of a MoE layer's routed experts one token is sent to (k / N)."""
    return model.moe_router_topk / model.num_experts


# ---------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs (forward + backward) per token, by where they are spent."""

    by_layer_type: dict
    """Layer type -> FLOPs of all main-stack layers of that type (matmuls + scan/attention core)."""
    attention_core: float
    """The part of by_layer_type["attention"] that grows with the sequence: QK^T and AV."""
    attention_core_per_context_token: float
    """d attention_core / d seq_length: what one more token of context costs each token."""
    mamba_scan: float
    """The part of by_layer_type["mamba"] outside weight matmuls: causal conv and SSD scan."""
    output_layer: float
    mtp: float
    """All MTP depths: projection, block layers and the shared output layer at each depth."""
    seq_length: int

    @property
    def total(self) -> float:
        return sum(self.by_layer_type.values()) + self.output_layer + self.mtp

    @property
    def total_without_mtp(self) -> float:
        return self.total - self.mtp


def mamba_scan_forward_flops(shape: MambaShape) -> float:
    """Forward FLOPs per token of one Mamba-2 layer outside its weight matmuls.

    Chunked SSD with chunk Q, heads H of width P, state N, G groups of B/C:
    within a chunk a token scores Q/2 earlier tokens on average (causal), C.B^T costs
    2.N per score per group and applying the scores 2.P per score per head, so
    G.Q.N + H.Q.P; the chunk states B^T x and the output C.state add 2.N.P each per head
    (4.H.N.P); the depthwise causal conv adds 2.kernel per channel. Gating, the gated
    RMSNorm and the inter-chunk recurrence (1/Q of the state work) are left out.
    """
    q, n, p = shape.chunk_size, shape.state_dim, shape.head_dim
    return (shape.groups * q * n + shape.heads * q * p + 4 * shape.heads * n * p
            + 2 * shape.conv_kernel * shape.conv_channels)


def attention_core_forward_flops(model: HybridModelConfig, seq_length: int) -> float:
    """Forward FLOPs per token of one causal attention core (flash: no s^2 memory, same math).

    QK^T and AV each cost 2 x (query heads x head dim) per key; under the causal mask a
    token sees (s + 1) / 2 keys on average.
    """
    query_width = model.num_attention_heads * model.head_dim
    return 2 * 2 * query_width * (seq_length + 1) / 2


def flops_per_token(model: HybridModelConfig, counts: ModuleCounts, vocab_size: int) -> FlopsPerToken:
    """Training FLOPs per token: 3 x (2 x active matmul parameters + scan + attention core)."""
    seq = model.seq_length
    fraction = expert_fraction(model)
    parsed = model.parsed_pattern

    def layer_forward(layer_type: str, split: ParamSplit) -> tuple[float, float]:
        extra = 0.0
        if layer_type == "mamba":
            extra = mamba_scan_forward_flops(counts.mamba)
        elif layer_type == "attention":
            extra = attention_core_forward_flops(model, seq)
        return 2 * split.active_matmul(fraction), extra

    by_type = {}
    attention_core = mamba_scan = 0.0
    for layer_type, split in counts.layers.items():
        number = parsed.count(layer_type)
        matmul, extra = layer_forward(layer_type, split)
        by_type[layer_type] = TRAINING_FLOPS_FACTOR * (matmul + extra) * number
        if layer_type == "attention":
            attention_core = TRAINING_FLOPS_FACTOR * extra * number
        if layer_type == "mamba":
            mamba_scan = TRAINING_FLOPS_FACTOR * extra * number
    output_forward = 2 * vocab_size * model.hidden_size
    mtp = 0.0
    if counts.mtp_depth is not None:
        depth_forward = 2 * counts.mtp_depth.active_matmul(fraction) + output_forward
        depth_forward += sum(layer_forward(t, s)[1] for t, s in counts.mtp_layers)
        mtp = TRAINING_FLOPS_FACTOR * depth_forward * parsed.mtp_depths
    slope = TRAINING_FLOPS_FACTOR * 2 * model.num_attention_heads * model.head_dim * parsed.count("attention")
    return FlopsPerToken(by_layer_type=by_type, attention_core=attention_core,
                         attention_core_per_context_token=slope, mamba_scan=mamba_scan,
                         output_layer=TRAINING_FLOPS_FACTOR * output_forward, mtp=mtp, seq_length=seq)


def linear_flops_by_module(model: HybridModelConfig, counts: ModuleCounts) -> dict:
    """Training FLOPs per token of each weight-matrix module pattern, as the precision
    policy sees it: 6 x weight elements, times top-k for a routed expert, and for an MTP
    module times the depths it is applied at; the output layer counts once per
    prediction (main + each MTP depth). The input embedding is a lookup, not a GEMM.

    A ``decoder.layers.*`` pattern's value is one layer's worth
    (``precision.policy.linear_flops_fractions`` multiplies it out by the pattern).
    """
    depths = model.parsed_pattern.mtp_depths
    flops = {}
    for pattern, elements in counts.linear_weights.items():
        if pattern.startswith("embedding."):
            continue
        applied = TRAINING_FLOPS_FACTOR * 2 * elements
        if "local_experts.*" in pattern:
            applied *= model.moe_router_topk
        if pattern.startswith("mtp."):
            applied *= depths
        if pattern == "output_layer":
            applied *= 1 + depths
        flops[pattern] = applied
    return flops


# ---------------------------------------------------------------------------- MoE traffic


@dataclass(frozen=True)
class MoETraffic:
    """Per token and MoE layer: what the expert all-to-all moves and what the experts read."""

    dispatch_width: int
    """Channels a routed token copy carries: the latent size l under LatentMoE, else d."""
    all_to_all_bytes_forward: float
    """Dispatch (k copies out) + combine (k copies back), in the activation dtype."""
    all_to_all_bytes_training: float
    """Forward and backward (the gradients travel the same two hops in reverse)."""
    off_rank_fraction: float
    """Share of those copies that leave the GPU under uniform routing: (EP - 1) / EP."""
    expert_weight_bytes: float
    """Routed-expert weight bytes one token reads: k experts x their matrices."""
    width_ratio: float
    """d / l: the factor LatentMoE cuts both of the above by at equal k (1 for standard MoE)."""
    moe_layers: int
    """MoE layers in the main stack (MTP layers come on top, once per depth)."""


def moe_traffic(model: HybridModelConfig, counts: ModuleCounts, *, expert_parallel: int,
                activation_bytes: int, param_bytes: int) -> Optional[MoETraffic]:
    if "moe" not in counts.layers:
        return None
    k = model.moe_router_topk
    width = model.moe_latent_size or model.hidden_size
    one_way = k * width * activation_bytes
    per_expert = counts.layers["moe"].expert / model.num_experts
    return MoETraffic(
        dispatch_width=width, all_to_all_bytes_forward=2 * one_way,
        all_to_all_bytes_training=4 * one_way,
        off_rank_fraction=(expert_parallel - 1) / expert_parallel,
        expert_weight_bytes=k * per_expert * param_bytes,
        width_ratio=model.hidden_size / width, moe_layers=model.parsed_pattern.count("moe"),
    )


# ---------------------------------------------------------------------------- memory


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
