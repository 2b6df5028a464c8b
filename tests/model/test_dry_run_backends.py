"""The dry run counts from the same modules whatever the machine has: no TE module is built on
the meta device, and nothing is allocated on a GPU."""

import pytest
import torch

from nemotron_train.planning import parameters
from tests.model.test_report import VOCAB, small_model

LATENT = dict(pattern="ME*EM/*E", moe_latent_size=32)


class RefusesTheMetaDevice(torch.nn.Module):
    """Stands for a TE module (TENorm, TELinear) that the probe must not build."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the dry run built a TransformerEngine module on the meta device")


def test_dry_run_builds_no_te_module_where_te_imports(monkeypatch):
    from megatron.core.models.hybrid import hybrid_block
    from megatron.core.transformer.moe import moe_layer

    model = small_model(**LATENT)
    expected = parameters.count_parameters(model, VOCAB)
    # What Megatron-Core holds on a machine with TE: its own TE classes, untouched.
    monkeypatch.setattr(hybrid_block, "TENorm", RefusesTheMetaDevice)
    monkeypatch.setattr(moe_layer, "TELinear", RefusesTheMetaDevice)
    monkeypatch.setattr(moe_layer, "HAVE_TE", True)
    counts = parameters.count_parameters(model, VOCAB)
    assert counts == expected
    assert hybrid_block.TENorm is RefusesTheMetaDevice  # and the run's modules are left as found
    assert moe_layer.TELinear is RefusesTheMetaDevice


@pytest.mark.gpu
def test_dry_run_allocates_nothing_on_the_gpu():
    before = torch.cuda.memory_allocated()
    model = small_model(**LATENT, hidden_size=2048)
    summary = parameters.summarize_parameters(model, parameters.count_parameters(model, VOCAB))
    assert summary.total * 4 > 10**7  # these weights in fp32 would take over 10 MB
    assert torch.cuda.memory_allocated() - before < 10**6


@pytest.mark.gpu
@pytest.mark.imports("transformer_engine")
def test_te_spec_holds_the_parameters_the_dry_run_counts(single_process):
    model = small_model(**LATENT, spec="te")
    summary = parameters.summarize_parameters(model, parameters.count_parameters(model, VOCAB))
    built = model.build(model.transformer_config(params_dtype=torch.bfloat16, bf16=True), VOCAB)
    assert sum(p.numel() for p in built.parameters()) == summary.total
