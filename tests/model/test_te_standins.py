"""The TE stand-ins are in place whenever a model is built without TransformerEngine, also
after a dry-run probe's `local_standins()` block put TE's names back."""

from megatron.core.models.hybrid import hybrid_block

from nemotron_train.model import te_standins
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.norms import RMSNormWithExtraState


class _TENormAsImported:
    """What `hybrid_block.TENorm` is before any stand-in: TE's class, which raises without TE."""


def test_a_model_built_after_a_probe_block_gets_the_standins(single_process, monkeypatch):
    monkeypatch.setattr(hybrid_block, "TENorm", _TENormAsImported)
    with te_standins.local_standins():
        te_standins.install()  # the probe builds a model inside the block (entry.model_flops)
    assert hybrid_block.TENorm is _TENormAsImported  # the block restored what it found
    config = HybridModelConfig(pattern="M", num_layers=1, hidden_size=64, mamba_head_dim=16,
                               mamba_state_dim=16, spec="local")
    model = config.build(config.transformer_config(), vocab_size=128)
    assert isinstance(model.decoder.final_norm, RMSNormWithExtraState)
