"""The path decision, and the native path's Megatron-Core fields and quantization recipe
rendered from the same policy (no Blackwell here: checked as data)."""

import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.precision.execution import (
    EMULATED_DESCRIPTION,
    NATIVE_DESCRIPTION,
    plan_precision,
    te_quantization_recipe,
    require_native_ablation_environment,
    select_precision_path,
    write_te_quantization_recipe,
)
from nemotron_train.precision.policy import nvfp4_policy
from nemotron_train.precision.presets import PrecisionConfig
from nemotron_train.precision.quantized_linear import NVFP4Techniques

NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
NANO_MODULES = {
    "M": ("mixer.in_proj", "mixer.out_proj"),
    "*": ("self_attention.linear_qkv", "self_attention.linear_proj"),
    "E": ("mlp.experts.linear_fc1", "mlp.experts.linear_fc2", "mlp.shared_experts.linear_fc1",
          "mlp.shared_experts.linear_fc2"),
}
TE_VARIABLES = ("NVTE_NVFP4_DISABLE_RHT", "NVTE_NVFP4_DISABLE_STOCHASTIC_ROUNDING",
                "NVTE_NVFP4_DISABLE_2D_QUANTIZATION")


@pytest.fixture
def clean_te_environment(monkeypatch):
    for variable in TE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("recipe, execution, available, path", [
    ("bf16", "auto", True, "high_precision"),
    ("fp32", "native", False, "high_precision"),
    ("nvfp4", "auto", False, "emulated"),
    ("nvfp4", "auto", True, "native"),
    ("nvfp4", "emulated", True, "emulated"),
    ("nvfp4", "native", True, "native"),
])
def test_path_decision(recipe, execution, available, path):
    assert select_precision_path(PrecisionConfig(recipe=recipe, execution=execution), available) == path


def test_native_without_blackwell_names_the_fix():
    with pytest.raises(ConfigError, match="precision.execution='native'.*Blackwell"):
        select_precision_path(PrecisionConfig(recipe="nvfp4", execution="native"), False)


@pytest.mark.parametrize("key, value", [("last_layers_bf16_fraction", 1.5), ("execution", "fast")])
def test_bad_precision_fields_are_rejected(key, value):
    with pytest.raises(ConfigError, match=f"precision.{key}"):
        PrecisionConfig(recipe="nvfp4", **{key: value})


def test_emulated_plan_keeps_megatron_core_in_bf16():
    plan = plan_precision(PrecisionConfig(recipe="nvfp4", rht=False), 6, native_available=False)
    assert plan.description == EMULATED_DESCRIPTION == "emulated (nemotron_train.precision)"
    assert plan.nvfp4_techniques == NVFP4Techniques(rht=False)
    assert "fp4" not in plan.transformer_fields and plan.transformer_fields["bf16"]


def test_native_fields_express_the_policy(clean_te_environment):
    from megatron.core.quantization.quant_config import MatchContext

    plan = plan_precision(PrecisionConfig(recipe="nvfp4"), 52, native_available=True)
    assert plan.description == NATIVE_DESCRIPTION == "native (TE NVFP4)"
    fields = plan.transformer_fields
    assert (fields["fp4"], fields["fp4_recipe"]) == ("e2m1", "nvfp4")
    assert fields["first_last_layers_bf16"] and fields["num_layers_at_start_in_bf16"] == 0
    assert fields["num_layers_at_end_in_bf16"] == 8  # ceil(0.15 * 52)
    # Megatron-Core's own matcher, on every module of the Nano layout outside the BF16
    # layers, picks the config named like the policy's format.
    recipe = fields["quant_recipe"]
    for layer, symbol in enumerate(NANO_PATTERN[:44]):
        for module in NANO_MODULES[symbol]:
            name = f"decoder.layers.{layer}.{module}"
            key = recipe.match_to_config_key(MatchContext(module_path=name, layer_number=layer))
            assert key == plan.policy.format_of(name), name
    assert recipe.match_to_config_key(MatchContext("mtp.layers.0.eh_proj", None)) == "bf16"
    assert recipe.match_to_config_key(MatchContext("output_layer", None)) == "bf16"


def test_recipe_file_round_trips_through_megatron_cores_loader(tmp_path):
    from megatron.core.quantization.utils import load_quantization_recipe

    policy = nvfp4_policy(52)
    loaded = load_quantization_recipe(str(write_te_quantization_recipe(policy, tmp_path / "q.yaml")))
    assert loaded.configs == te_quantization_recipe(policy)["configs"]
    assert loaded.configs["mxfp8"]["training_recipe"] == {"fp8_quantization_recipe": "mxfp8",
                                                         "fp8_format": "e4m3"}
    assert loaded.configs["nvfp4"]["training_recipe"] == {"fp4_quantization_recipe": "nvfp4"}
    assert loaded.configs["bf16"]["training_recipe"] == {}
    assert all(config["transformer_engine_config_type"] == "TEQuantizationParams"
               for config in loaded.configs.values())
    # The whole-layer rules go to num_layers_at_end_in_bf16, not into the file.
    assert not any("decoder.layers.4" in matcher.pattern for matcher in loaded.matchers)


def test_native_ablations_must_match_tes_environment(clean_te_environment):
    with pytest.raises(ConfigError, match="precision.rht=False.*NVTE_NVFP4_DISABLE_RHT=1"):
        require_native_ablation_environment(NVFP4Techniques(rht=False), {})
    require_native_ablation_environment(NVFP4Techniques(rht=False), {"NVTE_NVFP4_DISABLE_RHT": "1"})
    with pytest.raises(ConfigError, match="precision.weight_2d=True"):
        require_native_ablation_environment(NVFP4Techniques(), {"NVTE_NVFP4_DISABLE_2D_QUANTIZATION": "1"})
