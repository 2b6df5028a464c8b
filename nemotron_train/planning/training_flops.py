"""Training FLOPs per token of a hybrid model, from its parameter counts."""

from dataclasses import dataclass

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.planning.parameters import MambaShape, ModuleCounts, ParamSplit, expert_fraction

TRAINING_FLOPS_FACTOR = 3
"""Forward + backward = 3 forward passes (the backward computes input and weight gradients)."""


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
