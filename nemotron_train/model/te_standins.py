"""Megatron-Core modules that hard-wire TransformerEngine, given local stand-ins.

Installed by `HybridModelConfig.build`, for the whole process, only where TransformerEngine
cannot be imported (CPU, or a GPU image without TE); with TE present Megatron-Core runs
untouched, except inside
`local_standins()` (the dry run's meta-device probe, which never builds TE modules). Each
stand-in keeps the parameter names and shapes of the TE module it replaces, so checkpoints
and parameter counts match.
"""

from contextlib import contextmanager

from nemotron_train.model.duplicated_linear import DuplicatedLinear
from nemotron_train.model.norms import RMSNormWithExtraState
from nemotron_train.runtime.backends import transformer_engine_available

def _swap_in(norm, linear) -> tuple:
    """Point Megatron-Core at `norm` and `linear`; return what they replaced."""
    from megatron.core.models.hybrid import hybrid_block
    from megatron.core.transformer.moe import moe_layer

    replaced = (hybrid_block.TENorm, moe_layer.TELinear, moe_layer.HAVE_TE)
    # HybridStack builds its final norm as TENorm whatever the layer spec says.
    hybrid_block.TENorm = norm
    # LatentMoE asserts TE and builds its latent projections as TELinear.
    moe_layer.TELinear = linear
    moe_layer.HAVE_TE = True
    return replaced


def _standin_modules() -> tuple:
    # With an _extra_state like TENorm's, so both specs save the same checkpoint keys.
    return RMSNormWithExtraState, DuplicatedLinear


def install() -> bool:
    """Install the stand-ins where TE is missing (again on every call: a `local_standins()`
    block that began before the first install restores TE's names when it ends); return True
    if this machine needed them."""
    if transformer_engine_available():
        return False
    _swap_in(*_standin_modules())
    return True


@contextmanager
def local_standins():
    """The stand-ins inside this block on any machine, and whatever was there before after it."""
    from megatron.core.models.hybrid import hybrid_block
    from megatron.core.transformer.moe import moe_layer

    norm, linear, have_te = _swap_in(*_standin_modules())
    try:
        yield
    finally:
        hybrid_block.TENorm, moe_layer.TELinear, moe_layer.HAVE_TE = norm, linear, have_te
