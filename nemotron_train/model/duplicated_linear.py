"""A replicated (not tensor-parallel) linear with TELinear's constructor and return contract.

Fills a Megatron-Core gap: LatentMoE builds its two latent projections
(d -> l before dispatch, l -> d after combine) as `TELinear(parallel_mode="duplicated")`
and asserts TransformerEngine. This is the same layer from plain torch ops.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint


class DuplicatedLinear(MegatronModule):
    """y = x W^T (+ b), with W replicated on every tensor-parallel rank."""

    def __init__(self, input_size: int, output_size: int, *, parallel_mode: Optional[str],
                 config: TransformerConfig, init_method: Callable, bias: bool,
                 skip_bias_add: bool, skip_weight_param_allocation: bool = False,
                 is_expert: bool = False, name: Optional[str] = None, **_te_only_options):
        super().__init__(config)
        if parallel_mode != "duplicated":
            raise ValueError(f"DuplicatedLinear only replaces parallel_mode='duplicated', got {parallel_mode!r}")
        if skip_weight_param_allocation:
            raise ValueError("DuplicatedLinear always owns its weight")
        self.skip_bias_add = skip_bias_add
        self.weight = torch.nn.Parameter(
            torch.empty(output_size, input_size, device=torch.cuda.current_device(),
                        dtype=config.params_dtype))
        if config.perform_initialization:
            with get_cuda_rng_tracker().fork():
                init_method(self.weight)
        self.bias = None
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(output_size, dtype=config.params_dtype,
                                                       device=self.weight.device))
        # Replicated across TP, but under sequence parallelism each rank sees only its
        # sequence shard: mark for Megatron-Core's TP all-reduce of the gradient.
        for param in self.parameters():
            param.sequence_parallel = config.sequence_parallel

    def forward(self, x):
        if self.skip_bias_add:
            return F.linear(x, self.weight), self.bias
        return F.linear(x, self.weight, self.bias), None

    def get_extra_state(self):
        """TELinear's state dict has `_extra_state` (TE's quantization metadata); save one too."""
        return None

    def set_extra_state(self, state) -> None:
        """TE's quantization metadata means nothing here."""

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """Replicated tensors: no tensor-parallel axis."""
        state_dict = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state_dict, prefix, {}, sharded_offsets)
