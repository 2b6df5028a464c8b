"""RMSNorm for the local (non-TransformerEngine) layer spec.

Fills a Megatron-Core gap: its torch-norm wrapper (`WrappedTorchNorm`) refuses
sequence parallelism, and TE's norm is unavailable without TransformerEngine.
Two flavours keep the local spec's checkpoints in the TE spec's key layout: the norms
TE fuses into the next linear (`layer_norm_weight` of `TELayerNormColumnParallelLinear`)
are plain `RMSNorm`s whose keys the spec remaps; the norms TE builds as separate `TENorm`
modules are `RMSNormWithExtraState`, which saves an `_extra_state` as `TENorm` does.
"""

import torch

from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` built the way Megatron-Core builds its norms.

    Under sequence parallelism each tensor-parallel rank normalises its own
    sequence shard, so the weight gradient is partial; `sequence_parallel` on the
    parameter makes Megatron-Core's `finalize_model_grads` all-reduce it across
    the tensor-parallel group.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        if config.normalization != "RMSNorm":
            raise ValueError(
                f"model.normalization={config.normalization!r}: the local spec builds RMSNorm only"
            )
        self.weight.sequence_parallel = config.sequence_parallel


class RMSNormWithExtraState(RMSNorm):
    """An `RMSNorm` whose state dict carries `_extra_state`, as TransformerEngine's `TENorm`'s does.

    TE keeps its quantization metadata there; this norm has none, so it saves None and
    ignores what it loads (as Megatron-Core's own parallel linears do for TE's linears).
    """

    def get_extra_state(self):
        return None

    def set_extra_state(self, state) -> None:
        """TE's quantization metadata means nothing to a torch RMSNorm."""
