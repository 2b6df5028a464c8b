"""ScaledDotProductAttention computes what Megatron-Core's DotProductAttention computes (the
oracle, on CPU through SDPA's math path) and keeps its interface and state-dict keys; on CUDA
it keeps no seq x seq tensor."""

import pytest
import torch

from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.sdpa_attention import ScaledDotProductAttention
from nemotron_train.model.specs import local_hybrid_stack_spec

HEADS, GROUPS, HEAD_DIM = 4, 2, 16


def _config(**overrides) -> TransformerConfig:
    return TransformerConfig(num_layers=4, hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                             num_query_groups=GROUPS, kv_channels=HEAD_DIM, attention_dropout=0.0,
                             **overrides)


def _pair(mask_type, **overrides):
    config = _config(**overrides)
    kwargs = dict(config=config, layer_number=3, attn_mask_type=mask_type, attention_type="self")
    return DotProductAttention(**kwargs), ScaledDotProductAttention(**kwargs)


def _qkv(seq=24, batch=2, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    shapes = [(seq, batch, HEADS, HEAD_DIM), (seq, batch, GROUPS, HEAD_DIM), (seq, batch, GROUPS, HEAD_DIM)]
    return [torch.randn(shape, generator=generator).to(device, dtype).requires_grad_() for shape in shapes]


def _run(module, inputs, mask=None):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = module(*inputs, attention_mask=mask)
    out.backward(torch.ones_like(out))
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("layer_scaling", [False, True])
def test_causal_gqa_matches_dot_product_attention(single_process, layer_scaling):
    oracle, fused = _pair(AttnMaskType.causal, apply_query_key_layer_scaling=layer_scaling)
    inputs = _qkv()
    expected, expected_grads = _run(oracle, inputs)
    got, grads = _run(fused, inputs)
    assert got.shape == expected.shape == (24, 2, HEADS * HEAD_DIM)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    # Causal: the first query attends to the first key only, so it returns the first value.
    first_value = inputs[2][0].repeat_interleave(HEADS // GROUPS, dim=1).reshape(2, -1)
    torch.testing.assert_close(got[0], first_value, rtol=1e-5, atol=1e-6)


def test_an_explicit_mask_replaces_the_causal_one(single_process):
    oracle, fused = _pair(AttnMaskType.padding)
    inputs = _qkv(seq=12)
    mask = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.7
    mask[..., 0] = False  # every query sees at least one key
    torch.testing.assert_close(_run(fused, inputs, mask)[0], _run(oracle, inputs, mask)[0],
                               rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_dot_product_attentions(single_process):
    oracle, fused = _pair(AttnMaskType.causal)
    assert fused.state_dict().keys() == oracle.state_dict().keys()
    metadata = ensure_metadata_has_dp_cp_group(None)
    assert (fused.sharded_state_dict(prefix="x.", metadata=metadata).keys()
            == oracle.sharded_state_dict(prefix="x.", metadata=metadata).keys())


def test_local_spec_picks_it_where_cuda_is(single_process):
    def core(fused_attention):
        spec = local_hybrid_stack_spec(fused_attention=fused_attention)
        return spec.submodules.attention_layer.submodules.self_attention.submodules.core_attention

    assert core(True) is ScaledDotProductAttention and core(False) is DotProductAttention
    assert core(None) is (ScaledDotProductAttention if torch.cuda.is_available() else DotProductAttention)
    # The model's keys do not depend on the choice: a checkpoint moves between CPU and GPU runs.
    model = HybridModelConfig(pattern="M*E", num_layers=3, hidden_size=64, head_dim=16,
                              mamba_head_dim=16, mamba_state_dim=16, num_experts=4, spec="local")
    assert "decoder.layers.1.self_attention.core_attention" in dict(
        model.build(model.transformer_config(), vocab_size=128).named_modules())


@pytest.mark.gpu
def test_on_cuda_bf16_matches_and_keeps_no_seq_by_seq_tensor(single_process):
    oracle = _pair(AttnMaskType.causal)[0]  # fp32, on the fp32 copies of the inputs
    fused = _pair(AttnMaskType.causal, bf16=True, params_dtype=torch.bfloat16)[1]
    small = _qkv(seq=256, device="cuda", dtype=torch.bfloat16)
    expected = _run(oracle, [t.float() for t in small])[0]
    torch.testing.assert_close(_run(fused, small)[0].float(), expected, rtol=2e-2, atol=2e-2)
    seq, batch = 16384, 1
    inputs = _qkv(seq=seq, batch=batch, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    _run(fused, inputs)
    torch.cuda.synchronize()
    scores_bytes = batch * HEADS * seq * seq * 4  # what DotProductAttention's fp32 scores take
    assert torch.cuda.max_memory_allocated() - start < scores_bytes / 20
