"""Hugging Face NemotronH `config.json` <-> our HybridModelConfig, field by field.

Every field of a NemotronH config is in exactly one table below: mapped to a model field,
required to hold the one value both implementations share, recorded as carrying no model
semantics (generation, tokenizer, storage and initialisation settings, which a converted
model's weights and logits do not depend on), or unknown and refused. Where transformers'
NemotronH and Megatron-Core compute differently (router normalisation, group-limited
routing, the Mamba gated norm's epsilon, the dt clamp) the field is mapped to the
Megatron-Core setting that reproduces it or refused with the reason; docs/hf_interop.md
lists each difference.
"""

import dataclasses
import math

from nemotron_train.errors import ConfigError
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.pattern import MTP_SEPARATOR

MODEL_TYPE = "nemotron_h"
ARCHITECTURE = "NemotronHForCausalLM"
# transformers' layer type names, current and legacy, and our pattern symbols.
BLOCK_SYMBOLS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*",
                 "moe": "E", "mlp": "-"}
SYMBOL_BLOCKS = {"M": "linear_attention", "*": "full_attention", "E": "moe", "-": "mlp"}
# Megatron-Core's MambaMixer builds its gated RMSNorm with eps=1e-5 whatever the config says;
# transformers uses layer_norm_epsilon there.
MEGATRON_GATED_NORM_EPSILON = 1e-5
# transformers' router ranks groups by the sum of their top-2 scores; Megatron-Core by the sum
# of their top (topk // group_topk).
HF_GROUP_SCORE_TOPK = 2

# HF field -> HybridModelConfig field, copied as is.
MAPPED_FIELDS = {
    "hidden_size": "hidden_size",
    "vocab_size": "vocab_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "head_dim": "head_dim",
    "intermediate_size": "ffn_hidden_size",
    "mamba_num_heads": "mamba_num_heads",
    "mamba_head_dim": "mamba_head_dim",
    "ssm_state_size": "mamba_state_dim",
    "n_groups": "mamba_num_groups",
    "conv_kernel": "mamba_conv_kernel",
    "chunk_size": "mamba_chunk_size",
    "n_routed_experts": "num_experts",
    "num_experts_per_tok": "moe_router_topk",
    "moe_intermediate_size": "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
    "moe_latent_size": "moe_latent_size",
    "routed_scaling_factor": "moe_router_topk_scaling_factor",
    "layer_norm_epsilon": "layernorm_epsilon",
    "initializer_range": "init_method_std",
}
# Older spellings transformers still accepts, and the field each one means.
LEGACY_FIELDS = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_expand": "expand",
                 "mamba_dt_min": "time_step_min", "mamba_dt_max": "time_step_max",
                 "mamba_dt_limit": "time_step_limit", "mamba_dt_init_floor": "time_step_floor",
                 "mamba_conv_bias": "use_conv_bias", "mamba_chunk_size": "chunk_size"}
# Fields handled by their own rule below (layout, MTP, routing, embeddings).
RULE_FIELDS = {"model_type", "architectures", "layers_block_type", "hybrid_override_pattern",
               "num_hidden_layers", "num_nextn_predict_layers", "mtp_layers_block_type",
               "mtp_hybrid_override_pattern", "n_group", "topk_group", "norm_topk_prob",
               "tie_word_embeddings", "time_step_limit"}
# HF field -> the one value Megatron-Core's modules implement.
REQUIRED_VALUES = {
    "mlp_hidden_act": "relu2",   # squared-ReLU experts and dense MLP
    "mamba_hidden_act": "silu",  # MambaMixer's conv activation
    "use_conv_bias": True,       # MambaMixer asserts conv_bias
    "use_bias": False,           # MambaMixer asserts no in/out projection bias
    "mamba_proj_bias": False,
    "mlp_bias": False,           # no linear biases (add_bias_linear=False)
    "attention_bias": False,
    "residual_in_fp32": False,   # residuals in the compute dtype (fp32_residual_connection=False)
    "attention_dropout": 0.0,    # we train without dropout
    "hidden_dropout": 0.0,
    "sliding_window": None,      # full causal attention
    "is_encoder_decoder": False,
    "add_cross_attention": False,
}
# Fields that change no weight and no logit of a converted model: generation, tokenizer ids,
# storage dtype, provenance, kernels and caches, and initialisation of weights the checkpoint
# supplies anyway. `n_shared_experts` and `expand` are not read by transformers' modeling
# (one shared MLP of moe_shared_expert_intermediate_size; d_inner = heads x head dim).
NO_MODEL_SEMANTICS = {
    "transformers_version", "_name_or_path", "auto_map", "dtype", "torch_dtype", "use_bfloat16",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "num_logits_to_keep", "output_router_logits", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "chunk_size_feed_forward",
    "is_decoder", "tie_encoder_decoder", "problem_type", "id2label", "label2id", "num_labels",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "pruned_heads",
    "cross_attention_hidden_size", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
    "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "diversity_penalty",
    "output_scores", "return_dict_in_generate", "encoder_no_repeat_ngram_size",
    "begin_suppress_tokens", "suppress_tokens", "remove_invalid_values",
    "exponential_decay_length_penalty",
    "max_position_embeddings",  # no positional embedding: attention works at any length
    "use_mamba_kernels", "mamba_ssm_cache_dtype", "moe_shared_expert_overlap", "n_shared_experts",
    "expand", "rescale_prenorm_residual", "time_step_max", "time_step_floor",
    # Initialisation only for Megatron-Core; transformers >= 5.15 also clamps dt from below at
    # it, which Megatron-Core never does (docs/hf_interop.md), so export writes 0.0.
    "time_step_min",
}
# transformers' defaults for the fields our mapping reads when a config omits them.
HF_DEFAULTS = {"tie_word_embeddings": False, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
               "num_nextn_predict_layers": 0, "moe_latent_size": None, "conv_kernel": 4,
               "chunk_size": 128, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
               "n_groups": 8, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "intermediate_size": 21504, "n_routed_experts": 8, "num_experts_per_tok": 2,
               "moe_intermediate_size": 7688, "moe_shared_expert_intermediate_size": 7688,
               "routed_scaling_factor": 1.0, "vocab_size": 131072, "hidden_size": 4096,
               "use_conv_bias": True, "mlp_hidden_act": "relu2", "mamba_hidden_act": "silu",
               "use_bias": False, "mamba_proj_bias": False, "mlp_bias": False,
               "attention_bias": False, "residual_in_fp32": False, "attention_dropout": 0.0,
               "hidden_dropout": 0.0, "sliding_window": None, "is_encoder_decoder": False,
               "add_cross_attention": False}
# Our model fields the HF config decides, compared with a recipe for `checkpoint.load=hf:DIR`,
# by the layer type that makes them matter.
ARCHITECTURE_FIELDS = {
    None: ("pattern", "num_layers", "hidden_size", "vocab_size", "layernorm_epsilon"),
    "*": ("num_attention_heads", "num_query_groups", "head_dim"),
    "M": ("mamba_num_heads", "mamba_head_dim", "mamba_state_dim", "mamba_num_groups",
          "mamba_conv_kernel", "mamba_chunk_size"),
    "-": ("ffn_hidden_size",),
    "E": ("num_experts", "moe_router_topk", "moe_ffn_hidden_size",
          "moe_shared_expert_intermediate_size", "moe_router_topk_scaling_factor", "moe_latent_size",
          "moe_router_num_groups", "moe_router_group_topk"),
}


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """What a Hugging Face config decides: our model section and the stored MTP blocks."""

    model: HybridModelConfig
    mtp_stored_blocks: int
    """MTP blocks with weights of their own (HF's num_nextn_predict_layers)."""


def _error(field: str, value, fix: str) -> ConfigError:
    return ConfigError(f"config.json:{field}", value, fix)


def _normalise(hf: dict) -> dict:
    """The config with legacy spellings renamed and transformers' defaults filled in."""
    if hf.get("model_type") != MODEL_TYPE:
        raise _error("model_type", hf.get("model_type"), f"only {MODEL_TYPE!r} (NemotronH) converts")
    config = {}
    for key, value in hf.items():
        key = LEGACY_FIELDS.get(key, key)
        if key in config:
            raise _error(key, value, "given twice (under its current and its legacy name)")
        config[key] = value
    return {**HF_DEFAULTS, **config}


def _block_symbols(value, field: str) -> str:
    if isinstance(value, str):
        symbols = value
    elif isinstance(value, list):
        unknown = [v for v in value if v not in BLOCK_SYMBOLS]
        if unknown:
            raise _error(field, unknown, f"layer types must be among {sorted(BLOCK_SYMBOLS)}")
        symbols = "".join(BLOCK_SYMBOLS[v] for v in value)
    else:
        raise _error(field, value, "give a pattern string or a list of layer types")
    bad = sorted(set(symbols) - set(SYMBOL_BLOCKS))
    if bad or not symbols:
        raise _error(field, value, "layer symbols must be M (Mamba-2), * (attention), E (MoE), - (MLP)")
    return symbols


def _main_pattern(config: dict) -> str:
    if config.get("layers_block_type") is not None:
        main = _block_symbols(config["layers_block_type"], "layers_block_type")
        if config.get("hybrid_override_pattern") not in (None, main):
            raise _error("hybrid_override_pattern", config["hybrid_override_pattern"],
                         f"disagrees with layers_block_type ({main!r}); give one of the two")
    elif config.get("hybrid_override_pattern") is not None:
        main = _block_symbols(config["hybrid_override_pattern"], "hybrid_override_pattern")
    else:
        raise _error("layers_block_type", None, "give layers_block_type or hybrid_override_pattern")
    layers = config.get("num_hidden_layers")
    if layers is not None and layers != len(main):
        raise _error("num_hidden_layers", layers, f"the layer pattern has {len(main)} layers")
    return main


def _mtp_block(config: dict) -> str:
    stored = config["num_nextn_predict_layers"]
    if not isinstance(stored, int) or stored < 0:
        raise _error("num_nextn_predict_layers", stored, "must be a non-negative integer")
    if stored == 0:
        return ""
    for field in ("mtp_layers_block_type", "mtp_hybrid_override_pattern"):
        if config.get(field) is not None:
            return _block_symbols(config[field], field)
    return "*E"  # transformers' default MTP block


def _routing_fields(config: dict, main: str, mtp_block: str) -> dict:
    """Megatron-Core's routing settings that compute what transformers' router computes."""
    if "E" not in main + mtp_block:
        return {}
    topk, experts = config["num_experts_per_tok"], config["n_routed_experts"]
    normalise = config["norm_topk_prob"]
    # Megatron-Core's sigmoid router divides the chosen scores by their sum exactly when top-k > 1.
    if normalise != (topk > 1):
        raise _error("norm_topk_prob", normalise,
                     f"with num_experts_per_tok={topk} Megatron-Core's sigmoid router "
                     f"{'normalises' if topk > 1 else 'does not normalise'} the top-k scores; "
                     f"only norm_topk_prob={topk > 1} converts")
    groups, group_topk = config["n_group"], config["topk_group"]
    if groups == 1 and group_topk == 1:
        return {}
    if not isinstance(groups, int) or groups < 1 or experts % groups:
        raise _error("n_group", groups, f"must divide n_routed_experts={experts}")
    if group_topk * HF_GROUP_SCORE_TOPK != topk:
        raise _error("topk_group", group_topk,
                     f"transformers ranks expert groups by their top-{HF_GROUP_SCORE_TOPK} scores, "
                     f"Megatron-Core by their top num_experts_per_tok / topk_group = {topk}/"
                     f"{group_topk}; they agree only for topk_group = {topk // HF_GROUP_SCORE_TOPK}")
    return {"moe_router_num_groups": groups, "moe_router_group_topk": group_topk}


def _as_float(value) -> float:
    """A number from config.json, where transformers writes infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict):
        value = value.get("__float__")
    return float(value)


def _check_fields(config: dict) -> None:
    unknown = sorted(set(config) - set(MAPPED_FIELDS) - RULE_FIELDS - set(REQUIRED_VALUES)
                     - NO_MODEL_SEMANTICS)
    if unknown:
        raise _error(unknown[0], config[unknown[0]],
                     f"unknown to the NemotronH conversion (all unknown fields: {unknown}); a "
                     "config with quantization, RoPE or other extensions does not convert")
    for field, required in REQUIRED_VALUES.items():
        if config[field] != required:
            raise _error(field, config[field], f"Megatron-Core's modules implement only {required!r}")
    if config["tie_word_embeddings"]:
        raise _error("tie_word_embeddings", True, "Nemotron 3 models keep input and output embeddings "
                                                  "separate; tied embeddings do not convert")
    limit = config.get("time_step_limit")
    if limit is not None and (_as_float(limit[0]) != 0 or not math.isinf(_as_float(limit[1]))):
        raise _error("time_step_limit", limit, "transformers <= 5.14 clamps dt to it and Megatron-Core "
                                               "never clamps dt; only (0.0, inf) converts")
    architectures = config.get("architectures")
    if architectures is not None and ARCHITECTURE not in architectures:
        raise _error("architectures", architectures, f"only {ARCHITECTURE} converts")


def model_from_hf(hf: dict, mtp_depths: int | None = None) -> ImportedModel:
    """Our model section for a NemotronH config.json (a dict); ConfigError names any field
    that does not convert. `mtp_depths` applies a single stored MTP block at that many depths
    (shared weights, as Super trains); by default each stored block is one depth."""
    config = _normalise(hf)
    _check_fields(config)
    main, mtp_block = _main_pattern(config), _mtp_block(config)
    stored = config["num_nextn_predict_layers"] if mtp_block else 0
    if mtp_depths is not None and mtp_depths != stored and stored != 1:
        raise ConfigError("--mtp-depths", mtp_depths,
                          f"the checkpoint stores {stored} MTP blocks, one per depth; only a "
                          "single stored block can be shared across more depths")
    if mtp_depths is not None and not mtp_block:
        raise ConfigError("--mtp-depths", mtp_depths, "the checkpoint has no MTP block")
    depths = mtp_depths if mtp_depths is not None else stored
    fields = {ours: config[theirs] for theirs, ours in MAPPED_FIELDS.items()}
    if "M" in main + mtp_block and fields["layernorm_epsilon"] != MEGATRON_GATED_NORM_EPSILON:
        raise _error("layer_norm_epsilon", fields["layernorm_epsilon"],
                     "Megatron-Core's Mamba mixer fixes its gated norm's epsilon at "
                     f"{MEGATRON_GATED_NORM_EPSILON}; only that value converts with Mamba layers")
    if fields["num_query_groups"] is None:
        fields["num_query_groups"] = fields["num_attention_heads"]
    fields.update(_routing_fields(config, main, mtp_block))
    pattern = main + (MTP_SEPARATOR + mtp_block) * depths
    try:
        model = HybridModelConfig(pattern=pattern, num_layers=len(main),
                                  mtp_shared_weights=stored <= 1, **fields)
    except ConfigError as error:
        ours = error.key.removeprefix("model.")
        theirs = next((hf for hf, field in MAPPED_FIELDS.items() if field == ours), ours)
        raise _error(theirs, error.value, error.fix) from None
    return ImportedModel(model=model, mtp_stored_blocks=stored)


def hf_from_model(model: HybridModelConfig, vocab_size: int, *, token_ids: dict | None = None,
                  dtype: str = "bfloat16") -> dict:
    """The NemotronH config.json for our model section, for transformers to load natively.

    Raises ConfigError naming the field that transformers' NemotronH cannot express.
    """
    parsed = model.parsed_pattern
    block = parsed.mtp_block or ""
    layer_types = parsed.main + block
    if "E" in layer_types and model.moe_shared_expert_intermediate_size is None:
        raise ConfigError("model.moe_shared_expert_intermediate_size", None,
                          "transformers' NemotronH always has a shared expert; a model without "
                          "one does not export")
    if "M" in layer_types and model.layernorm_epsilon != MEGATRON_GATED_NORM_EPSILON:
        raise ConfigError("model.layernorm_epsilon", model.layernorm_epsilon,
                          "transformers applies it to the Mamba gated norm, where Megatron-Core "
                          f"uses {MEGATRON_GATED_NORM_EPSILON}; only that value exports")
    groups, group_topk = model.moe_router_num_groups or 1, model.moe_router_group_topk or 1
    if groups > 1 and model.moe_router_topk != HF_GROUP_SCORE_TOPK * group_topk:
        raise ConfigError("model.moe_router_group_topk", group_topk,
                          f"transformers ranks groups by their top-{HF_GROUP_SCORE_TOPK} scores; "
                          f"only moe_router_topk = {HF_GROUP_SCORE_TOPK} x moe_router_group_topk exports")
    stored = (1 if model.mtp_shared_weights else parsed.mtp_depths) if block else 0
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "dtype": dtype,
        "layers_block_type": [SYMBOL_BLOCKS[s] for s in parsed.main],
        "hybrid_override_pattern": parsed.main,  # the older spelling, for readers that know only it
        "num_nextn_predict_layers": stored,
        "tie_word_embeddings": False,
        "n_group": groups,
        "topk_group": group_topk,
        "norm_topk_prob": model.moe_router_topk > 1,
        "max_position_embeddings": model.seq_length,
        "n_shared_experts": 1,
        "time_step_min": 0.0,
        **REQUIRED_VALUES,
    }
    if block:
        config["mtp_layers_block_type"] = [SYMBOL_BLOCKS[s] for s in block]
        config["mtp_hybrid_override_pattern"] = block
    for theirs, ours in MAPPED_FIELDS.items():
        config[theirs] = getattr(model, ours)
    config["vocab_size"] = vocab_size
    config.update(token_ids or {})
    return config


def differing_fields(recipe: HybridModelConfig, imported: ImportedModel) -> list[str]:
    """`field: recipe value != checkpoint value` for every architecture field that differs.

    MTP: the recipe must store the same blocks (shared weights count as one); the number of
    depths a shared block is applied at is a training choice the checkpoint does not fix.
    """
    theirs, differences = imported.model, []
    ours_parsed, theirs_parsed = recipe.parsed_pattern, theirs.parsed_pattern
    used = set(ours_parsed.main + (ours_parsed.mtp_block or "")) | set(
        theirs_parsed.main + (theirs_parsed.mtp_block or ""))
    for symbol, fields in ARCHITECTURE_FIELDS.items():
        if symbol is not None and symbol not in used:
            continue
        for field in fields:
            ours_value, theirs_value = getattr(recipe, field), getattr(theirs, field)
            if field == "pattern":
                ours_value, theirs_value = ours_parsed.main, theirs_parsed.main
            if ours_value != theirs_value:
                differences.append(f"model.{field}: recipe {ours_value!r} != checkpoint {theirs_value!r}")
    recipe_stored = (1 if recipe.mtp_shared_weights else ours_parsed.mtp_depths) if ours_parsed.mtp_block else 0
    if (ours_parsed.mtp_block or "") != (theirs_parsed.mtp_block or "") or recipe_stored != imported.mtp_stored_blocks:
        differences.append(
            f"model.pattern (MTP): recipe stores {recipe_stored} block(s) {ours_parsed.mtp_block!r} "
            f"!= checkpoint {imported.mtp_stored_blocks} block(s) {theirs_parsed.mtp_block!r}")
    return differences
