"""Which Hugging Face tensor is which of our parameters, and how their layouts differ.

Names on our side are the state-dict names of the model built by the local spec in one
process (full tensors, every expert local); dist_checkpointing maps them to checkpoint keys
and reshards them to any layout. Names on the HF side are those of the released Nemotron 3
checkpoints: `backbone.*`, `lm_head`, per-expert `mixer.experts.K.*` and the MTP block
flattened as `mtp.layers.N.*` (N counts layers across the stored blocks).

Layouts agree except attention's QKV: Megatron-Core fuses it per query group
([q heads of group g, k_g, v_g] for g = 0..G-1), transformers keeps q, k and v apart.
Mamba's in_proj ([z, x, B, C, dt]) and conv ([x, B, C]) orders are the same in both.
"""

from dataclasses import dataclass

import torch

from nemotron_train.model.config import HybridModelConfig

COPY, QKV = "copy", "qkv"
# Other names some writers use for a released tensor: transformers 5.13-5.15 save the
# embedding as `backbone.embedding.weight` (their loader renames it back).
HF_NAME_ALIASES = {"backbone.embeddings.weight": "backbone.embedding.weight"}


@dataclass(frozen=True)
class TensorMapping:
    """One of our parameters and the HF tensor(s) it is made of."""

    ours: str
    hf: tuple[str, ...]
    layout: str = COPY
    """COPY (same tensor) or QKV (ours fused per query group, HF as q, k, v)."""


@dataclass(frozen=True)
class ConversionUnit:
    """The tensors converted together: one layer, the embedding, or the output head."""

    name: str
    tensors: tuple[TensorMapping, ...]


def _layer_tensors(symbol: str, ours: str, hf: str, model: HybridModelConfig) -> list[TensorMapping]:
    """Mappings of one layer of type `symbol`; `ours`/`hf` are the two name prefixes."""
    if symbol == "M":
        pairs = [("norm.weight", "norm.weight"), ("mixer.in_proj.weight", "mixer.in_proj.weight"),
                 ("mixer.conv1d_weight", "mixer.conv1d.weight"), ("mixer.conv1d_bias", "mixer.conv1d.bias"),
                 ("mixer.dt_bias", "mixer.dt_bias"), ("mixer.A_log", "mixer.A_log"), ("mixer.D", "mixer.D"),
                 ("mixer.norm.weight", "mixer.norm.weight"), ("mixer.out_proj.weight", "mixer.out_proj.weight")]
        return [TensorMapping(ours + a, (hf + b,)) for a, b in pairs]
    if symbol == "*":
        return [TensorMapping(ours + "input_layernorm.weight", (hf + "norm.weight",)),
                TensorMapping(ours + "self_attention.linear_qkv.weight",
                              tuple(f"{hf}mixer.{p}_proj.weight" for p in "qkv"), QKV),
                TensorMapping(ours + "self_attention.linear_proj.weight", (hf + "mixer.o_proj.weight",))]
    if symbol == "-":
        return [TensorMapping(ours + "pre_mlp_layernorm.weight", (hf + "norm.weight",)),
                TensorMapping(ours + "mlp.linear_fc1.weight", (hf + "mixer.up_proj.weight",)),
                TensorMapping(ours + "mlp.linear_fc2.weight", (hf + "mixer.down_proj.weight",))]
    tensors = [TensorMapping(ours + "pre_mlp_layernorm.weight", (hf + "norm.weight",)),
               TensorMapping(ours + "mlp.router.weight", (hf + "mixer.gate.weight",)),
               TensorMapping(ours + "mlp.router.expert_bias", (hf + "mixer.gate.e_score_correction_bias",))]
    if model.moe_latent_size is not None:
        tensors += [TensorMapping(f"{ours}mlp.fc{i}_latent_proj.weight", (f"{hf}mixer.fc{i}_latent_proj.weight",))
                    for i in (1, 2)]
    for expert in range(model.num_experts):
        for fc, proj in ((1, "up"), (2, "down")):
            tensors.append(TensorMapping(f"{ours}mlp.experts.local_experts.{expert}.linear_fc{fc}.weight",
                                         (f"{hf}mixer.experts.{expert}.{proj}_proj.weight",)))
    for fc, proj in ((1, "up"), (2, "down")):
        tensors.append(TensorMapping(f"{ours}mlp.shared_experts.linear_fc{fc}.weight",
                                     (f"{hf}mixer.shared_experts.{proj}_proj.weight",)))
    return tensors


def mtp_stored_blocks(model: HybridModelConfig) -> int:
    """MTP blocks with weights of their own: one when shared across depths, else one per depth."""
    parsed = model.parsed_pattern
    if parsed.mtp_block is None:
        return 0
    return 1 if model.mtp_shared_weights else parsed.mtp_depths


def conversion_units(model: HybridModelConfig) -> list[ConversionUnit]:
    """Every parameter of `model`, in the order the released checkpoints store them."""
    parsed = model.parsed_pattern
    units = [ConversionUnit("embedding", (TensorMapping("embedding.word_embeddings.weight",
                                                         ("backbone.embeddings.weight",)),))]
    for index, symbol in enumerate(parsed.main):
        units.append(ConversionUnit(f"layer {index} ({symbol})", tuple(_layer_tensors(
            symbol, f"decoder.layers.{index}.", f"backbone.layers.{index}.", model))))
    units.append(ConversionUnit("final norm and output layer", (
        TensorMapping("decoder.final_norm.weight", ("backbone.norm_f.weight",)),
        TensorMapping("output_layer.weight", ("lm_head.weight",)))))
    block = parsed.mtp_block or ""
    for depth in range(mtp_stored_blocks(model)):
        first, last = depth * len(block), depth * len(block) + len(block) - 1
        ours = f"mtp.layers.{depth}."
        tensors = [TensorMapping(f"{ours}{name}.weight", (f"mtp.layers.{first}.{name}.weight",))
                   for name in ("enorm", "hnorm", "eh_proj")]
        for index, symbol in enumerate(block):
            tensors += _layer_tensors(symbol, f"{ours}mtp_model_layer.layers.{index}.",
                                      f"mtp.layers.{first + index}.", model)
        tensors.append(TensorMapping(f"{ours}final_layernorm.weight", (f"mtp.layers.{last}.final_layernorm.weight",)))
        units.append(ConversionUnit(f"MTP block {depth}", tuple(tensors)))
    return units


def _qkv_sizes(model: HybridModelConfig) -> tuple[int, int]:
    return model.num_attention_heads // model.num_query_groups, model.head_dim


def to_hf(mapping: TensorMapping, tensor: torch.Tensor, model: HybridModelConfig) -> list[torch.Tensor]:
    """The HF tensor(s) of one of our parameters (views where the layout allows)."""
    if mapping.layout == COPY:
        return [tensor]
    heads_per_group, head_dim = _qkv_sizes(model)
    grouped = tensor.view(model.num_query_groups, heads_per_group + 2, head_dim, tensor.shape[-1])
    q, k, v = grouped.split([heads_per_group, 1, 1], dim=1)
    return [part.reshape(-1, tensor.shape[-1]) for part in (q, k, v)]


def from_hf(mapping: TensorMapping, tensors: list[torch.Tensor], model: HybridModelConfig) -> torch.Tensor:
    """One of our parameters from its HF tensor(s); QKV is interleaved into a new tensor."""
    if mapping.layout == COPY:
        return tensors[0]
    heads_per_group, head_dim = _qkv_sizes(model)
    q, k, v = tensors
    groups, width = model.num_query_groups, q.shape[-1]
    fused = torch.cat([q.view(groups, heads_per_group, head_dim, width), k.view(groups, 1, head_dim, width),
                       v.view(groups, 1, head_dim, width)], dim=1)
    return fused.view(-1, width)
