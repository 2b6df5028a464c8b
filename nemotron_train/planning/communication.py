"""MoE token traffic per step: what the dispatcher moves between expert-parallel ranks."""

from dataclasses import dataclass
from typing import Optional

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.planning.parameters import ModuleCounts


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
