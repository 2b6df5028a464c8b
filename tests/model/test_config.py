import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.model.config import HybridModelConfig, padded_vocab_size


def test_pattern_length_must_match_num_layers():
    with pytest.raises(ConfigError, match=r"model.num_layers=5: .* has 6 main-stack layers; set model.num_layers=6"):
        HybridModelConfig(pattern="MEM*ME", num_layers=5)


def test_query_groups_must_divide_heads():
    with pytest.raises(ConfigError, match=r"model.num_query_groups=3: must be positive and divide model.num_attention_heads=4"):
        HybridModelConfig(num_attention_heads=4, num_query_groups=3)


def test_mamba_groups_must_divide_mamba_heads():
    with pytest.raises(ConfigError, match=r"model.mamba_num_groups=3"):
        HybridModelConfig(mamba_num_heads=8, mamba_num_groups=3)


def test_transformer_config_carries_the_nemotron3_moe_settings():
    config = HybridModelConfig(pattern="ME*", num_layers=3).transformer_config()
    assert config.moe_router_score_function == "sigmoid"
    assert config.moe_router_dtype == "fp32"
    assert config.moe_router_enable_expert_bias is True
    assert config.moe_router_load_balancing_type == "seq_aux_loss"
    assert config.moe_router_topk_scaling_factor == 2.5
    assert config.add_bias_linear is False and config.gated_linear_unit is False
    assert config.activation_func.__name__ == "squared_relu"
    assert config.normalization == "RMSNorm"


def test_vocab_is_padded_to_a_multiple_of_128_times_tp():
    assert padded_vocab_size(4096, 1) == 4096
    assert padded_vocab_size(4097, 1) == 4224
    assert padded_vocab_size(4097, 2) == 4352
