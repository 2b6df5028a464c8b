"""The local spec builds every layer type from Megatron-Core's non-TE modules."""

import pytest
import torch

from nemotron_train.errors import ConfigError
from nemotron_train.model.config import HybridModelConfig


def test_unknown_spec_is_rejected_when_the_config_is_made():
    with pytest.raises(ConfigError, match="model.spec='fast'"):
        HybridModelConfig(pattern="M", num_layers=1, hidden_size=64, spec="fast")


def test_local_spec_builds_each_layer_type(single_process):
    from megatron.core.ssm.mamba_layer import MambaLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.moe.experts import SequentialMLP
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from nemotron_train.model.norms import RMSNorm
    from nemotron_train.runtime.ssd_scan import GatedRMSNorm

    config = HybridModelConfig(pattern="M*E-/*E", num_layers=4, hidden_size=64, head_dim=16,
                               mamba_head_dim=16, mamba_state_dim=16, num_experts=4,
                               moe_latent_size=32, spec="local")
    model = config.build(config.transformer_config(), vocab_size=128)
    mamba, attention, moe, mlp = model.decoder.layers
    assert isinstance(mamba, MambaLayer)
    assert isinstance(mamba.norm, RMSNorm) and isinstance(mamba.mixer.norm, GatedRMSNorm)
    assert isinstance(mamba.mixer.in_proj, ColumnParallelLinear)
    assert isinstance(mamba.mixer.out_proj, RowParallelLinear)
    assert isinstance(attention.self_attention.core_attention, DotProductAttention)
    assert isinstance(attention.input_layernorm, RMSNorm)
    assert isinstance(moe.mlp, MoELayer) and isinstance(moe.mlp.experts, SequentialMLP)
    assert moe.mlp.shared_experts is not None
    assert moe.mlp.fc1_latent_proj.weight.shape == (32, 64)  # LatentMoE: d -> l
    assert isinstance(mlp.pre_mlp_layernorm, RMSNorm)
    assert isinstance(model.decoder.final_norm, RMSNorm)
    assert len(model.mtp.layers) == 1  # one shared MTP block
    assert not model.embedding.add_position_embedding  # no positional embedding: Mamba carries position
    tokens = torch.randint(0, 128, (2, 16))
    positions = torch.arange(16).expand(2, 16)
    loss = model(tokens, positions, None, labels=tokens, loss_mask=torch.ones(2, 16))
    loss.sum().backward()
    assert model.embedding.word_embeddings.weight.grad is not None
