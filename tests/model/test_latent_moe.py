"""LatentMoE on the local spec: the reinvestment rule, l-wide dispatch, and a dense oracle."""

import pytest
import torch
import torch.nn.functional as F

from nemotron_train.errors import ConfigError
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.latent_moe import reinvested_latent_moe

HIDDEN, LATENT = 64, 16


def test_paper_shape_is_four_times_the_experts_and_the_active_experts():
    # LatentMoE paper, Table 1: d=4096, 128 experts top-6 -> l=1024 at N'=512 (it trains top-22).
    shape = reinvested_latent_moe(128, 6, hidden_size=4096, latent_size=1024)
    assert (shape.num_experts, shape.topk, shape.width_ratio) == (512, 24, 4)
    small = reinvested_latent_moe(16, 3, hidden_size=256, latent_size=64)
    assert (small.num_experts, small.topk, small.width_ratio) == (64, 12, 4)


@pytest.mark.parametrize("latent, message", [
    (1000, r"model.moe_latent_size=1000: the reinvestment .* needs l to divide d=4096"),
    (4096, r"model.moe_latent_size=4096: choose 0 < l < hidden size d=4096"),
    (0, r"model.moe_latent_size=0: choose 0 < l"),
])
def test_reinvestment_rejects_a_latent_width_that_cannot_work(latent, message):
    with pytest.raises(ConfigError, match=message):
        reinvested_latent_moe(128, 6, hidden_size=4096, latent_size=latent)


def test_reinvestment_rejects_topk_above_the_expert_count():
    with pytest.raises(ConfigError, match=r"model.moe_router_topk=9: choose 1 <= top-k <= model.num_experts=8"):
        reinvested_latent_moe(8, 9, hidden_size=64, latent_size=16)


def _moe_layer(latent_size, dispatcher="alltoall", num_experts=8, topk=3):
    config = HybridModelConfig(
        pattern="E", num_layers=1, hidden_size=HIDDEN, head_dim=16, num_experts=num_experts,
        moe_router_topk=topk, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=48,
        moe_router_topk_scaling_factor=2.5, moe_latent_size=latent_size,
        moe_token_dispatcher_type=dispatcher, spec="local")
    model = config.build(config.transformer_config(), vocab_size=128)
    moe = model.decoder.layers[0].mlp
    # A non-zero expert bias, so the oracle also checks that the bias picks experts but
    # does not enter the gate values.
    with torch.no_grad():
        moe.router.expert_bias.copy_(torch.linspace(-0.3, 0.3, num_experts))
    return moe


DISPATCHER_METHODS = ("dispatch_preprocess", "token_dispatch", "dispatch_postprocess",
                      "combine_preprocess", "token_combine", "combine_postprocess")


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather"])
def test_every_tensor_crossing_the_dispatcher_is_latent_wide(single_process, dispatcher):
    moe = _moe_layer(LATENT, dispatcher)
    crossings = []
    token_dispatcher = moe.token_dispatcher
    for name in DISPATCHER_METHODS:
        original = getattr(token_dispatcher, name)

        def recording(*args, _name=name, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            outputs = result if isinstance(result, tuple) else (result,)
            crossings.append((_name, args[0].shape, outputs[0].shape))
            return result

        setattr(token_dispatcher, name, recording)
    tokens, batch = 10, 2
    output, _ = moe(torch.randn(tokens, batch, HIDDEN))
    assert output.shape == (tokens, batch, HIDDEN)
    assert [name for name, _, _ in crossings] == list(DISPATCHER_METHODS)
    for name, shape_in, shape_out in crossings:
        assert shape_in[-1] == LATENT and shape_out[-1] == LATENT, (name, shape_in, shape_out)
    # One routed copy per token and chosen expert reaches the experts.
    routed = dict((name, shape_out) for name, _, shape_out in crossings)["dispatch_postprocess"]
    assert routed[0] == tokens * batch * moe.config.moe_router_topk


def dense_oracle(moe, hidden: torch.Tensor) -> torch.Tensor:
    """The MoE layer recomputed from its weights: every expert on every token, gated by top-k."""
    config = moe.config
    x = hidden.reshape(-1, hidden.shape[-1])
    scores = torch.sigmoid(x.float() @ moe.router.weight.float().t())
    chosen = torch.topk(scores + moe.router.expert_bias, config.moe_router_topk, dim=-1).indices
    picked = scores.gather(-1, chosen)
    gates = torch.zeros_like(scores).scatter(
        -1, chosen, picked / picked.sum(-1, keepdim=True) * config.moe_router_topk_scaling_factor)
    routed_in = x @ moe.fc1_latent_proj.weight.t() if config.moe_latent_size else x
    routed = torch.zeros_like(routed_in)
    for index, expert in enumerate(moe.experts.local_experts):
        expert_out = F.relu(routed_in @ expert.linear_fc1.weight.t()).square() @ expert.linear_fc2.weight.t()
        routed = routed + gates[:, index:index + 1] * expert_out
    if config.moe_latent_size:
        routed = routed @ moe.fc2_latent_proj.weight.t()
    shared = moe.shared_experts
    shared_out = F.relu(x @ shared.linear_fc1.weight.t()).square() @ shared.linear_fc2.weight.t()
    return (routed + shared_out).reshape(hidden.shape)


@pytest.mark.parametrize("latent_size", [LATENT, None], ids=["latent", "standard"])
def test_layer_matches_a_dense_recomputation_of_its_weights(single_process, latent_size):
    moe = _moe_layer(latent_size)
    assert moe.experts.local_experts[0].linear_fc1.weight.shape[1] == (latent_size or HIDDEN)
    assert moe.shared_experts.linear_fc1.weight.shape[1] == HIDDEN  # the shared expert stays at d
    assert moe.router.weight.shape == (8, HIDDEN)  # so does the router
    hidden = torch.randn(12, 2, HIDDEN)
    output, _ = moe(hidden)
    with torch.no_grad():
        expected = dense_oracle(moe, hidden)
    torch.testing.assert_close(output.detach(), expected, rtol=1e-5, atol=1e-6)
