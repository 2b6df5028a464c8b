"""One checkpoint format for both layer specs: the local spec saves the TE spec's keys.

TransformerEngine cannot be imported on a CPU machine, so the TE spec's keys are derived
here by reading Megatron-Core 0.19.2's `megatron/core/models/hybrid/hybrid_layer_specs.py`
(`hybrid_stack_spec`) and the TE wrappers in `megatron/core/extensions/transformer_engine.py`:

- Mamba layer: no separate norm (`MambaLayerSubmodules.norm` stays `IdentityOp`); the mixer's
  `in_proj` is `TELayerNormColumnParallelLinear` (state: `weight`, `layer_norm_weight`,
  `_extra_state`) and `out_proj` is `TERowParallelLinear` (`weight`, `_extra_state`). The
  mixer's own parameters (conv1d, dt_bias, A_log, D, the gated norm) and the split of
  `in_proj.weight` into z/x/B/C/dt and of conv1d into x/B/C are the mixer's, whatever the spec.
- Attention layer: no `input_layernorm`; `linear_qkv` is `TELayerNormColumnParallelLinear`,
  `linear_proj` is `TERowParallelLinear`; `TEDotProductAttention.sharded_state_dict` is empty
  (no learnable softmax offset).
- Dense MLP layer: no `pre_mlp_layernorm`; `linear_fc1` is `TELayerNormColumnParallelLinear`.
- MoE layer: `pre_mlp_layernorm=TENorm` (TE's RMSNorm op: `weight`, `_extra_state`); the
  router is Megatron-Core's (`weight`, `expert_bias`); `TEGroupedMLP` saves under the same keys
  as `SequentialMLP` (`experts.experts.linear_fc{1,2}.{weight,_extra_state}`, its docstring says
  "interchangeable"); the shared expert's linears are TE column/row linears; LatentMoE's
  projections are `TELinear` (`weight`, `_extra_state`).
- The stack's final norm and MTP's `enorm`, `hnorm` and `final_layernorm` are `TENorm`; `eh_proj`
  is `TEColumnParallelLinear`; MTP's inner layers are the stack's layer specs again.
- The output layer is Megatron-Core's `ColumnParallelLinear` in both specs (`weight`,
  `_extra_state`, kept for TE compatibility by Megatron-Core itself).
"""

import pytest
import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, apply_factories

from nemotron_train.model.config import HybridModelConfig

OBJECT = "object"  # a ShardedObject (TE's `_extra_state`); every other key is a tensor

MAMBA_KEYS = [
    "mixer.in_proj.weight.z", "mixer.in_proj.weight.x", "mixer.in_proj.weight.B",
    "mixer.in_proj.weight.C", "mixer.in_proj.weight.dt", "mixer.in_proj.layer_norm_weight",
    ("mixer.in_proj._extra_state", OBJECT),
    "mixer.conv1d.weight.x", "mixer.conv1d.weight.B", "mixer.conv1d.weight.C",
    "mixer.conv1d.bias.x", "mixer.conv1d.bias.B", "mixer.conv1d.bias.C",
    "mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight",
    "mixer.out_proj.weight", ("mixer.out_proj._extra_state", OBJECT),
]
ATTENTION_KEYS = [
    "self_attention.linear_qkv.weight", "self_attention.linear_qkv.layer_norm_weight",
    ("self_attention.linear_qkv._extra_state", OBJECT),
    "self_attention.linear_proj.weight", ("self_attention.linear_proj._extra_state", OBJECT),
]
MLP_KEYS = [
    "mlp.linear_fc1.weight", "mlp.linear_fc1.layer_norm_weight", ("mlp.linear_fc1._extra_state", OBJECT),
    "mlp.linear_fc2.weight", ("mlp.linear_fc2._extra_state", OBJECT),
]
MOE_KEYS = [
    "pre_mlp_layernorm.weight", ("pre_mlp_layernorm._extra_state", OBJECT),
    "mlp.router.weight", "mlp.router.expert_bias",
    "mlp.experts.experts.linear_fc1.weight", ("mlp.experts.experts.linear_fc1._extra_state", OBJECT),
    "mlp.experts.experts.linear_fc2.weight", ("mlp.experts.experts.linear_fc2._extra_state", OBJECT),
    "mlp.shared_experts.linear_fc1.weight", ("mlp.shared_experts.linear_fc1._extra_state", OBJECT),
    "mlp.shared_experts.linear_fc2.weight", ("mlp.shared_experts.linear_fc2._extra_state", OBJECT),
]
LATENT_KEYS = [
    "mlp.fc1_latent_proj.weight", ("mlp.fc1_latent_proj._extra_state", OBJECT),
    "mlp.fc2_latent_proj.weight", ("mlp.fc2_latent_proj._extra_state", OBJECT),
]
LAYER_KEYS = {"M": MAMBA_KEYS, "*": ATTENTION_KEYS, "-": MLP_KEYS, "E": MOE_KEYS}


def te_spec_checkpoint_keys(main: str, mtp_block: str, mtp_stored_depths: int, latent: bool) -> dict:
    """{checkpoint key: 'tensor' or 'object'} that Megatron-Core's TE hybrid spec saves."""
    def layer(prefix: str, symbol: str) -> list:
        entries = LAYER_KEYS[symbol] + (LATENT_KEYS if symbol == "E" and latent else [])
        return [(prefix + e, "tensor") if isinstance(e, str) else (prefix + e[0], e[1]) for e in entries]

    keys = [("embedding.word_embeddings.weight", "tensor"), ("output_layer.weight", "tensor"),
            ("output_layer._extra_state", OBJECT),
            ("decoder.final_norm.weight", "tensor"), ("decoder.final_norm._extra_state", OBJECT)]
    for index, symbol in enumerate(main):
        keys += layer(f"decoder.layers.{index}.", symbol)
    for depth in range(mtp_stored_depths):
        prefix = f"mtp.layers.{depth}."
        for name in ("enorm", "hnorm", "final_layernorm"):
            keys += [(f"{prefix}{name}.weight", "tensor"), (f"{prefix}{name}._extra_state", OBJECT)]
        keys += [(f"{prefix}eh_proj.weight", "tensor"), (f"{prefix}eh_proj._extra_state", OBJECT)]
        for index, symbol in enumerate(mtp_block):
            keys += layer(f"{prefix}mtp_model_layer.layers.{index}.", symbol)
    return dict(keys)


def saved_checkpoint_keys(model) -> dict:
    """{checkpoint key: 'tensor' or 'object'} exactly as dist_checkpointing would write them."""
    sharded = model.sharded_state_dict()
    apply_factories(sharded)
    return {item.key: OBJECT if isinstance(item, ShardedObject) else "tensor"
            for item in nested_values(sharded)}


def small_model_config(spec: str, mtp_shared_weights: bool = True) -> HybridModelConfig:
    return HybridModelConfig(pattern="M*E-/*E/*E", num_layers=4, hidden_size=64, head_dim=16,
                             mamba_head_dim=16, mamba_state_dim=16, num_experts=4,
                             moe_latent_size=32, mtp_shared_weights=mtp_shared_weights, spec=spec)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_mtp", "mtp_per_depth"])
def test_local_spec_saves_the_te_spec_keys(single_process, shared):
    config = small_model_config("local", mtp_shared_weights=shared)
    model = config.build(config.transformer_config(), vocab_size=128)
    expected = te_spec_checkpoint_keys("M*E-", "*E", 1 if shared else 2, latent=True)
    saved = saved_checkpoint_keys(model)
    assert sorted(set(saved) - set(expected)) == [] and sorted(set(expected) - set(saved)) == []
    assert saved == expected


def test_standard_moe_has_no_latent_keys(single_process):
    config = HybridModelConfig(pattern="E", num_layers=1, hidden_size=64, num_experts=4, spec="local")
    model = config.build(config.transformer_config(), vocab_size=128)
    assert saved_checkpoint_keys(model) == te_spec_checkpoint_keys("E", "", 0, latent=False)


@pytest.mark.gpu
@pytest.mark.imports("transformer_engine")
def test_te_spec_saves_the_same_keys_and_loads_a_local_checkpoint(single_process, tmp_path):
    """Where TE imports: the real TE spec's keys, and a local-spec checkpoint loaded under it."""
    from megatron.core import dist_checkpointing

    torch.manual_seed(0)
    local_config = small_model_config("local")
    local = local_config.build(local_config.transformer_config(), vocab_size=128).cuda()
    te_config = small_model_config("te")
    te_model = te_config.build(te_config.transformer_config(), vocab_size=128).cuda()
    assert saved_checkpoint_keys(te_model) == saved_checkpoint_keys(local)
    dist_checkpointing.save(local.sharded_state_dict(), str(tmp_path))
    te_model.load_state_dict(dist_checkpointing.load(te_model.sharded_state_dict(), str(tmp_path)))
    tokens = torch.randint(0, 128, (2, 16), device="cuda")
    positions = torch.arange(16, device="cuda").expand(2, 16)
    local.eval()
    te_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(te_model(tokens, positions, None), local(tokens, positions, None),
                                   rtol=1e-3, atol=1e-3)
