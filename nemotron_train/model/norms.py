"""RMSNorm for the local (non-TransformerEngine) layer spec.

Fills a Megatron-Core gap: its torch-norm wrapper (`WrappedTorchNorm`) refuses
sequence parallelism, and TE's norm is unavailable without TransformerEngine.
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
