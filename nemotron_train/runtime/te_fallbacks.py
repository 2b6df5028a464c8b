"""Megatron-Core modules that hard-wire TransformerEngine, given local stand-ins.

Active only where TransformerEngine cannot be imported (CPU, or a GPU image
without TE); with TE present Megatron-Core runs untouched. Each stand-in keeps
the parameter names of the TE module it replaces, so checkpoints match.
"""

from nemotron_train.runtime.backends import transformer_engine_available

_installed = False


def install() -> bool:
    """Install the stand-ins once; return True if this machine needed them."""
    global _installed
    if transformer_engine_available():
        return False
    if not _installed:
        from megatron.core.models.hybrid import hybrid_block
        from megatron.core.transformer.moe import moe_layer

        from nemotron_train.model.duplicated_linear import DuplicatedLinear
        from nemotron_train.model.norms import RMSNormWithExtraState

        # HybridStack builds its final norm as TENorm whatever the layer spec says.
        hybrid_block.TENorm = RMSNormWithExtraState
        # LatentMoE asserts TE and builds its latent projections as TELinear.
        moe_layer.HAVE_TE = True
        moe_layer.TELinear = DuplicatedLinear
        _installed = True
    return True
