"""LatentMoE's reinvestment rule: from a standard MoE to the latent one at the same cost.

Projecting the routed experts and their all-to-all from width d down to l divides each
routed copy's traffic and expert weights by d/l. The LatentMoE paper spends that saving on
N' = N·d/l experts and K' = K·d/l active experts, so total expert parameters stay the same
and the expert FLOPs per token match (Megatron-Core builds the layer from `moe_latent_size`).
"""

from dataclasses import dataclass

from nemotron_train.errors import ConfigError


@dataclass(frozen=True)
class LatentReinvestment:
    """The LatentMoE shape that matches a standard MoE's expert parameters and FLOPs."""

    num_experts: int
    """N' = N·d/l routed experts."""
    topk: int
    """K' = K·d/l routed experts per token."""
    width_ratio: int
    """d/l."""


def reinvested_latent_moe(num_experts: int, topk: int, hidden_size: int, latent_size: int,
                          key: str = "model.moe_latent_size") -> LatentReinvestment:
    """N' and K' for a LatentMoE of width `latent_size` replacing `num_experts` top-`topk` at d.

    >>> reinvested_latent_moe(128, 6, hidden_size=4096, latent_size=1024)
    LatentReinvestment(num_experts=512, topk=24, width_ratio=4)
    """
    if not 0 < latent_size < hidden_size:
        raise ConfigError(key, latent_size, f"choose 0 < l < hidden size d={hidden_size}")
    if hidden_size % latent_size:
        raise ConfigError(key, latent_size,
                          f"the reinvestment N·d/l, K·d/l needs l to divide d={hidden_size}; "
                          f"choose a divisor such as {hidden_size // 4}")
    if not 0 < topk <= num_experts:
        raise ConfigError("model.moe_router_topk", topk,
                          f"choose 1 <= top-k <= model.num_experts={num_experts}")
    ratio = hidden_size // latent_size
    return LatentReinvestment(num_experts=num_experts * ratio, topk=topk * ratio, width_ratio=ratio)
