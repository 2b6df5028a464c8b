"""The NVFP4 precision policy: the format of every module of the tiny and Nano layouts."""

import pytest

from nemotron_train.precision.policy import (
    layers_in_bf16_at_end,
    linear_flops_fractions,
    nvfp4_policy,
    pattern_formats,
    uniform_policy,
)

NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

# The reference's policy, written per layer type (nemotron3_reference.md, "High-precision
# exceptions"): the oracle the glob rules are checked against.
FORMAT_IN_QUANTIZED_LAYER = {
    "mixer.in_proj": "nvfp4",
    "mixer.out_proj": "mxfp8",
    "self_attention.linear_qkv": "bf16",
    "self_attention.linear_proj": "bf16",
    "mlp.router": "fp32",
    "mlp.fc1_latent_proj": "bf16",
    "mlp.fc2_latent_proj": "bf16",
    "mlp.experts.local_experts.3.linear_fc1": "nvfp4",
    "mlp.experts.local_experts.3.linear_fc2": "nvfp4",
    "mlp.shared_experts.linear_fc1": "nvfp4",
    "mlp.shared_experts.linear_fc2": "nvfp4",
    "mlp.linear_fc1": "nvfp4",
    "mlp.linear_fc2": "nvfp4",
}
SYMBOL_MODULES = {
    "M": ("mixer.in_proj", "mixer.out_proj"),
    "*": ("self_attention.linear_qkv", "self_attention.linear_proj"),
    "E": ("mlp.router", "mlp.fc1_latent_proj", "mlp.fc2_latent_proj",
          "mlp.experts.local_experts.3.linear_fc1", "mlp.experts.local_experts.3.linear_fc2",
          "mlp.shared_experts.linear_fc1", "mlp.shared_experts.linear_fc2"),
    "-": ("mlp.linear_fc1", "mlp.linear_fc2"),
}


def expected_format(layer: int, module: str, num_bf16_at_end: int, num_layers: int) -> str:
    if module == "mlp.router":
        return "fp32"
    if layer >= num_layers - num_bf16_at_end:
        return "bf16"
    return FORMAT_IN_QUANTIZED_LAYER[module]


@pytest.mark.parametrize("pattern, bf16_at_end", [("MEM*ME", 1), (NANO_PATTERN, 8)])
def test_every_layer_module_gets_the_reference_format(pattern, bf16_at_end):
    # 15% of 6 layers is 0.9 -> the last layer; of 52 layers 7.8 -> the last 8 (44..51).
    assert layers_in_bf16_at_end(len(pattern), 0.15) == bf16_at_end
    policy = nvfp4_policy(len(pattern), 0.15)
    for layer, symbol in enumerate(pattern):
        for module in SYMBOL_MODULES[symbol]:
            name = f"decoder.layers.{layer}.{module}"
            assert policy.format_of(name) == expected_format(layer, module, bf16_at_end, len(pattern)), name


@pytest.mark.parametrize("name", [
    "embedding.word_embeddings", "output_layer", "mtp.layers.0.eh_proj",
    "mtp.layers.0.mtp_model_layer.layers.0.mixer.in_proj",
    "mtp.layers.0.mtp_model_layer.layers.1.mlp.experts.local_experts.0.linear_fc1",
])
def test_embeddings_output_layer_and_mtp_stay_bf16(name):
    assert nvfp4_policy(52).format_of(name) == "bf16"


def test_the_tiny_map_literally():
    policy = nvfp4_policy(6)
    assert policy.map([
        "decoder.layers.0.mixer.in_proj", "decoder.layers.0.mixer.out_proj",
        "decoder.layers.1.mlp.experts.local_experts.7.linear_fc2",
        "decoder.layers.3.self_attention.linear_qkv",
        "decoder.layers.4.mixer.out_proj", "decoder.layers.5.mlp.shared_experts.linear_fc1",
    ]) == {
        "decoder.layers.0.mixer.in_proj": "nvfp4", "decoder.layers.0.mixer.out_proj": "mxfp8",
        "decoder.layers.1.mlp.experts.local_experts.7.linear_fc2": "nvfp4",
        "decoder.layers.3.self_attention.linear_qkv": "bf16",
        "decoder.layers.4.mixer.out_proj": "mxfp8",
        "decoder.layers.5.mlp.shared_experts.linear_fc1": "bf16",
    }


def test_fraction_zero_keeps_every_layer_quantized():
    policy = nvfp4_policy(6, 0.0)
    assert policy.layers_in_bf16 == ()
    assert policy.format_of("decoder.layers.5.mlp.shared_experts.linear_fc1") == "nvfp4"


def test_uniform_policy_for_the_dtype_presets():
    policy = uniform_policy("bf16")
    assert policy.format_of("decoder.layers.0.mixer.out_proj") == "bf16"
    assert policy.format_of("decoder.layers.1.mlp.router") == "fp32"


def test_dry_run_patterns_split_where_the_last_layers_differ():
    formats = pattern_formats(nvfp4_policy(6), "MEM*ME", [
        "embedding.word_embeddings", "decoder.layers.*.mixer.in_proj",
        "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1",
        "decoder.layers.*.self_attention.linear_qkv",
    ])
    assert formats == {
        "embedding.word_embeddings": "bf16",
        "decoder.layers.*.mixer.in_proj": "nvfp4",  # Mamba layers 0, 2, 4: none in the last
        "decoder.layers.{1}.mlp.experts.local_experts.*.linear_fc1": "nvfp4",
        "decoder.layers.{5}.mlp.experts.local_experts.*.linear_fc1": "bf16",
        "decoder.layers.*.self_attention.linear_qkv": "bf16",
    }


def test_flops_fractions_count_every_layer():
    # Per layer: in_proj 3, out_proj 1 (Mamba layers 0, 2, 4); experts 2 (MoE layers 1, 5);
    # qkv 1 (layer 3); output layer 4.
    fractions = linear_flops_fractions(nvfp4_policy(6), "MEM*ME", {
        "decoder.layers.*.mixer.in_proj": 3.0, "decoder.layers.*.mixer.out_proj": 1.0,
        "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1": 2.0,
        "decoder.layers.*.self_attention.linear_qkv": 1.0, "output_layer": 4.0,
    })
    total = 3 * 3 + 3 * 1 + 2 * 2 + 1 + 4
    assert fractions == pytest.approx({"nvfp4": (9 + 2) / total, "mxfp8": 3 / total,
                                       "bf16": (2 + 1 + 4) / total})
