"""NemotronH config.json <-> our model section: every field mapped or refused by name."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemotron_train.errors import ConfigError
from nemotron_train.convert.hf_config import (
    ARCHITECTURE_FIELDS,
    differing_fields,
    hf_from_model,
    model_from_hf,
)
from nemotron_train.model.config import HybridModelConfig

REPO = Path(__file__).resolve().parents[2]
NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
SUPER_PATTERN = ("MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*"
                 "EMEMEMEME")
# Nano's config.json as released (field names of transformers' NemotronHConfig; values from
# the Nemotron 3 reference: 52 layers at 2688, 128 experts top-6, shared 3712, scaling 2.5).
NANO_HF = dict(
    architectures=["NemotronHForCausalLM"], model_type="nemotron_h", torch_dtype="bfloat16",
    transformers_version="4.57.1", vocab_size=131072, hidden_size=2688,
    hybrid_override_pattern=NANO_PATTERN, num_hidden_layers=52, num_attention_heads=32,
    num_key_value_heads=2, head_dim=128, max_position_embeddings=262144, mamba_num_heads=64,
    mamba_head_dim=64, n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128, expand=2,
    mamba_hidden_act="silu", use_conv_bias=True, use_bias=False, mamba_proj_bias=False,
    time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4,
    time_step_limit=[0.0, {"__float__": "Infinity"}], n_routed_experts=128, num_experts_per_tok=6,
    moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712, n_shared_experts=1,
    routed_scaling_factor=2.5, n_group=1, topk_group=1, norm_topk_prob=True, mlp_hidden_act="relu2",
    mlp_bias=False, attention_bias=False, attention_dropout=0.0, hidden_dropout=0.0,
    layer_norm_epsilon=1e-5, initializer_range=0.02, rescale_prenorm_residual=True,
    residual_in_fp32=False, tie_word_embeddings=False, use_cache=True, num_logits_to_keep=1,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, use_mamba_kernels=True,
)
SUPER_HF = {**NANO_HF, "hybrid_override_pattern": SUPER_PATTERN, "num_hidden_layers": 88,
            "hidden_size": 4096, "mamba_num_heads": 128, "n_routed_experts": 512, "num_experts_per_tok": 22,
            "moe_intermediate_size": 2688, "moe_shared_expert_intermediate_size": 5376,
            "routed_scaling_factor": 5.0, "moe_latent_size": 1024, "num_nextn_predict_layers": 1,
            "mtp_hybrid_override_pattern": "*E"}


def recipe_model(name: str) -> HybridModelConfig:
    """A recipe's model section, read from recipes/model/ (its own values, not the mapping's)."""
    shared = OmegaConf.load(REPO / "recipes/model/nemotron3_shared.yaml")
    own = OmegaConf.load(REPO / f"recipes/model/{name}.yaml")
    own.pop("defaults", None)
    return HybridModelConfig(**OmegaConf.to_container(OmegaConf.merge(shared, own)))


def test_nano_config_is_the_nano_recipe():
    imported = model_from_hf(NANO_HF)
    assert differing_fields(recipe_model("nano_30b"), imported) == []
    assert imported.model.pattern == NANO_PATTERN and imported.mtp_stored_blocks == 0
    assert imported.model.moe_router_num_groups is None


def test_super_config_is_the_super_recipe_with_its_shared_mtp_block():
    imported = model_from_hf(SUPER_HF)
    assert imported.model.pattern == SUPER_PATTERN + "/*E" and imported.mtp_stored_blocks == 1
    # The recipe applies the one stored block at 2 depths: the same weights.
    assert differing_fields(recipe_model("super_120b"), imported) == []
    assert model_from_hf(SUPER_HF, mtp_depths=2).model.pattern == SUPER_PATTERN + "/*E/*E"


def test_layer_lists_legacy_names_and_pattern_strings_agree():
    as_list = {**NANO_HF, "layers_block_type": [{"M": "mamba", "E": "moe", "*": "attention"}[s]
                                                for s in NANO_PATTERN]}
    del as_list["hybrid_override_pattern"]
    legacy = {k: v for k, v in NANO_HF.items() if k not in ("n_groups", "conv_kernel", "chunk_size")}
    legacy.update(mamba_n_groups=8, mamba_d_conv=4, mamba_chunk_size=128)
    assert model_from_hf(as_list) == model_from_hf(NANO_HF) == model_from_hf(legacy)


def test_mtp_blocks_stored_per_depth_are_not_shared():
    imported = model_from_hf({**SUPER_HF, "num_nextn_predict_layers": 2})
    assert imported.model.pattern.endswith("/*E/*E") and not imported.model.mtp_shared_weights
    with pytest.raises(ConfigError, match="--mtp-depths"):
        model_from_hf({**SUPER_HF, "num_nextn_predict_layers": 2}, mtp_depths=3)


def test_group_limited_routing_maps_where_both_rank_groups_alike():
    imported = model_from_hf({**NANO_HF, "n_group": 8, "topk_group": 3})  # top-6 = 2 x 3 groups
    assert (imported.model.moe_router_num_groups, imported.model.moe_router_group_topk) == (8, 3)
    with pytest.raises(ConfigError, match="config.json:topk_group=2.*top-2 scores"):
        model_from_hf({**NANO_HF, "n_group": 8, "topk_group": 2})


@pytest.mark.parametrize("changes, field", [
    ({"norm_topk_prob": False}, "norm_topk_prob"),
    ({"num_experts_per_tok": 1}, "norm_topk_prob"),  # transformers normalises a single score to 1
    ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config"),
    ({"rope_theta": 10000.0}, "rope_theta"),
    ({"mlp_hidden_act": "silu"}, "mlp_hidden_act"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"use_conv_bias": False}, "use_conv_bias"),
    ({"time_step_limit": [0.001, 10.0]}, "time_step_limit"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),  # Megatron-Core's gated norm is fixed at 1e-5
    ({"num_hidden_layers": 51}, "num_hidden_layers"),
    ({"layers_block_type": ["moe"]}, "hybrid_override_pattern"),
    ({"model_type": "llama"}, "model_type"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"n_groups": 0}, "n_groups"),
])
def test_fields_that_do_not_convert_are_named(changes, field):
    with pytest.raises(ConfigError) as raised:
        model_from_hf({**NANO_HF, **changes})
    assert raised.value.key == f"config.json:{field}"


def test_single_expert_without_normalisation_converts():
    assert model_from_hf({**NANO_HF, "num_experts_per_tok": 1, "norm_topk_prob": False}).model.moe_router_topk == 1


def test_epsilon_is_free_without_mamba_layers():
    config = {**NANO_HF, "hybrid_override_pattern": "*E", "num_hidden_layers": 2, "layer_norm_epsilon": 1e-6}
    assert model_from_hf(config).model.layernorm_epsilon == 1e-6


SMALL = dict(pattern="M*E-ME", num_layers=6, hidden_size=64, head_dim=16, mamba_head_dim=16,
             mamba_state_dim=16, num_experts=16, moe_router_topk=4, moe_ffn_hidden_size=32)


@pytest.mark.parametrize("model", [
    HybridModelConfig(**SMALL),
    HybridModelConfig(**{**SMALL, "pattern": "M*E-ME/*E/*E"}, moe_latent_size=32,
                      moe_router_num_groups=4, moe_router_group_topk=2),
    HybridModelConfig(**{**SMALL, "pattern": "M*E-ME/*E/*E"}, mtp_shared_weights=False),
], ids=["standard", "latent_grouped_shared_mtp", "mtp_per_depth"])
def test_export_then_import_keeps_the_architecture(model):
    config = hf_from_model(model, vocab_size=512)
    back = model_from_hf(config, mtp_depths=model.parsed_pattern.mtp_depths or None).model
    for fields in ARCHITECTURE_FIELDS.values():
        for field in fields:
            assert getattr(back, field) == (512 if field == "vocab_size" else getattr(model, field)), field
    assert back.mtp_shared_weights == model.mtp_shared_weights or model.parsed_pattern.mtp_depths <= 1


def test_exported_config_is_read_natively_by_transformers():
    from transformers import NemotronHConfig

    model = HybridModelConfig(**{**SMALL, "pattern": "M*E-ME/*E/*E"}, moe_latent_size=32)
    config = hf_from_model(model, vocab_size=512)
    theirs = NemotronHConfig(**{k: v for k, v in config.items() if k != "model_type"})
    assert theirs.hybrid_override_pattern == "M*E-ME" and theirs.mtp_hybrid_override_pattern == "*E"
    assert theirs.num_nextn_predict_layers == 1 and theirs.moe_latent_size == 32
    assert theirs.n_routed_experts == 16 and theirs.num_key_value_heads == model.num_query_groups


@pytest.mark.parametrize("changes, key", [
    ({"moe_shared_expert_intermediate_size": None}, "model.moe_shared_expert_intermediate_size"),
    ({"layernorm_epsilon": 1e-6}, "model.layernorm_epsilon"),
    ({"moe_router_num_groups": 4, "moe_router_group_topk": 1}, "model.moe_router_group_topk"),
])
def test_what_transformers_cannot_express_is_not_exported(changes, key):
    with pytest.raises(ConfigError) as raised:
        hf_from_model(HybridModelConfig(**SMALL, **changes), vocab_size=512)
    assert raised.value.key == key


def test_differing_fields_are_all_named():
    imported = model_from_hf(NANO_HF)
    recipe = dataclasses.replace(recipe_model("nano_30b"), hidden_size=4096, num_experts=64,
                                 moe_router_topk=4)
    differences = differing_fields(recipe, imported)
    assert [d.split(":")[0] for d in differences] == ["model.hidden_size", "model.num_experts",
                                                      "model.moe_router_topk"]
    assert "recipe 4096 != checkpoint 2688" in differences[0]
