"""Multi-token prediction on the local spec: weight sharing, and the logged per-depth losses
against a recomputation from the MTP block's own outputs, including the training loss formula."""

import pytest
import torch
import torch.nn.functional as F

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.training.loop import mtp_metrics

DEPTHS, SCALE, VOCAB = 2, 0.3, 128


def _model(shared: bool):
    config = HybridModelConfig(
        pattern="M*E" + "/*E" * DEPTHS, num_layers=3, hidden_size=64, head_dim=16,
        mamba_head_dim=16, mamba_state_dim=16, mamba_chunk_size=8, num_experts=4,
        moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32,
        mtp_loss_scaling_factor=SCALE, mtp_shared_weights=shared, spec="local")
    return config.build(config.transformer_config(), vocab_size=VOCAB)


def test_shared_weights_build_one_block_applied_at_every_depth(single_process):
    model = _model(shared=True)
    assert len(model.mtp.layers) == 1
    mtp_keys = [key for key in model.state_dict() if key.startswith("mtp.")]
    assert mtp_keys and all(key.startswith("mtp.layers.0.") for key in mtp_keys)
    calls = []
    model.mtp.layers[0].register_forward_hook(lambda *_: calls.append(1))
    tokens = torch.randint(0, VOCAB, (2, 16))
    model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens, loss_mask=torch.ones(2, 16))
    assert len(calls) == DEPTHS


def test_unshared_weights_build_one_block_per_depth(single_process):
    model = _model(shared=False)
    assert len(model.mtp.layers) == DEPTHS
    first, second = (layer.eh_proj.weight for layer in model.mtp.layers)
    assert first.data_ptr() != second.data_ptr() and not torch.equal(first, second)
    assert any(key.startswith("mtp.layers.1.") for key in model.state_dict())


def _recompute_mtp_losses(model, mtp_output, labels, loss_mask):
    """Token-mean loss and greedy accuracy per depth: chunk k predicts labels[t + k] at t < seq - k."""
    batch, seq = labels.shape
    losses, accuracies = [], []
    for k, chunk in enumerate(mtp_output.chunk(1 + DEPTHS, dim=0)[1:], start=1):
        logits = model.output_layer(chunk)[0].transpose(0, 1)[:, :seq - k]  # [b, s - k, V]
        targets, mask = labels[:, k:], loss_mask[:, k:]
        per_token = F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1),
                                    reduction="none").reshape(batch, seq - k)
        losses.append((per_token * mask).sum() / mask.sum())
        accuracies.append(((logits.argmax(-1) == targets) * mask).sum() / mask.sum())
    return losses, accuracies


def test_logged_losses_and_the_gradient_follow_the_mtp_loss_formula(single_process):
    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

    torch.manual_seed(0)
    model = _model(shared=True)
    batch, seq = 2, 16
    tokens = torch.randint(0, VOCAB, (batch, seq))
    labels = torch.randint(0, VOCAB, (batch, seq))
    loss_mask = torch.ones(batch, seq)
    loss_mask[1, 5] = 0  # a masked position moves with the labels at every depth
    params = [p for p in model.parameters() if p.requires_grad]
    captured = []
    model.mtp.register_forward_hook(lambda module, args, output: captured.append(output))

    def main_loss():
        return model(tokens, torch.arange(seq).expand(batch, seq), None, labels=labels,
                     loss_mask=loss_mask).sum()

    # Megatron-Core's path: the MTP loss enters through MTPLossAutoScaler's gradient only.
    with_mtp = torch.autograd.grad(main_loss(), params, allow_unused=True)
    logged = mtp_metrics(DEPTHS, num_microbatches=1, device=torch.device("cpu"))
    assert set(logged) == {f"mtp_{k}_{what}" for k in (1, 2) for what in ("loss", "accuracy")}
    losses, accuracies = _recompute_mtp_losses(model, captured[0], labels, loss_mask)
    for k in (1, 2):
        assert logged[f"mtp_{k}_loss"] == pytest.approx(losses[k - 1].item(), rel=1e-5)
        assert logged[f"mtp_{k}_accuracy"] == pytest.approx(accuracies[k - 1].item(), abs=1e-9)

    # The formula: main + scale / depths * sum_k mean_k, with the autoscaler switched off.
    MTPLossAutoScaler.set_loss_scale(torch.tensor(0.0))
    main = main_loss()
    losses, _ = _recompute_mtp_losses(model, captured[1], labels, loss_mask)
    formula = torch.autograd.grad(main + SCALE / DEPTHS * sum(losses), params, allow_unused=True)
    mtp_params = {id(p) for p in model.mtp.parameters()}
    checked = 0
    for param, got, expected in zip(params, with_mtp, formula):
        assert (got is None) == (expected is None)
        if got is not None:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
            checked += id(param) in mtp_params
    assert checked == len(mtp_params)
