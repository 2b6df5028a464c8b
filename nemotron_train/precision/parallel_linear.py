"""Megatron-Core's column- and row-parallel linears with an emulated NVFP4 or MXFP8 GEMM.

`ColumnParallelLinear` and `RowParallelLinear` do their tensor-parallel communication
around one call, ``self._forward_impl(input=..., weight=..., bias=..., ...)``, which
runs Megatron-Core's linear autograd function (the sequence-parallel all-gather and
the dgrad all-reduce or reduce-scatter happen inside it). The subclasses here replace
that call when the module's ``quantization_format`` (set by
``execution.apply_precision_policy``) is ``nvfp4`` or ``mxfp8``: the same communication
is done with Megatron-Core's autograd-aware mappings, and the GEMMs with
``quantized_linear.nvfp4_linear`` / ``mxfp8_linear``. Any other format runs the parent's
code unchanged, so a model built from these classes trains bit for bit like one built
from Megatron-Core's.

Gradients reach Megatron-Core's DDP as ``weight.grad`` (its backward hook adds them
into ``main_grad``), whether or not ``gradient_accumulation_fusion`` is on.

Sizes: the NVFP4 recipe needs every GEMM dimension (tokens, in, out) to be a multiple
of 16, MXFP8 of 32. Dimensions that are not (the tiny Mamba in_proj's 648 outputs, an
expert's token count) are zero-padded before quantizing and the output is sliced back:
zeros change no amax and add nothing to any product, so the real entries see the
recipe as if the hardware's padding had been applied (TransformerEngine instead refuses
such shapes, and Megatron-Core pads expert token counts with
``moe_router_padding_for_quantization``).
"""

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)
from megatron.core.utils import get_pg_size

from nemotron_train.precision.quantized_linear import (
    FlushCounter,
    NVFP4Techniques,
    mxfp8_linear,
    nvfp4_linear,
)

_BLOCK = {"nvfp4": 16, "mxfp8": 32}


class QuantizedGemmMixin:
    """The replacement of ``_forward_impl``; mixed into both parallel linears."""

    quantization_format: str = "bf16"
    """'nvfp4' or 'mxfp8' quantize the GEMMs; anything else runs Megatron-Core's GEMM."""
    nvfp4_techniques: NVFP4Techniques = NVFP4Techniques()
    """Which NVFP4 recipe features are on (ablation switches)."""
    flush_counter: FlushCounter | None = None
    """When set, counts the values each operand's quantization flushed to zero."""
    rounding_generator: torch.Generator | None = None
    """The random bits of stochastic rounding (precision/stochastic_rounding.py); None draws
    from torch's default generator."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        if self.quantization_format not in _BLOCK:
            return super()._forward_impl(input, weight, *args, **kwargs)
        if args:
            raise TypeError("the quantized _forward_impl expects keyword arguments, as "
                            "Megatron-Core's parallel linears pass them")
        if kwargs.get("grad_output_buffer") is not None or kwargs.get("gtp_remat_size", 1) > 1:
            raise NotImplementedError(
                f"{type(self).__name__}: deferred embedding wgrad and GTP weight "
                "rematerialisation are not supported with quantized GEMMs")
        # Row-parallel linears pass tp_group=None (their communication is outside); the
        # amax reduction still needs the group the weight is sharded over.
        group = kwargs.get("tp_group") or self.tp_group
        if kwargs.get("sequence_parallel"):
            total_input = gather_from_sequence_parallel_region(input, group=group)
        elif kwargs.get("allreduce_dgrad"):
            total_input = copy_to_tensor_model_parallel_region(input, group=group)
        else:
            total_input = input
        amax_group = self.tp_group if get_pg_size(self.tp_group) > 1 else None
        output = _padded_quantized_gemm(total_input, weight, self.quantization_format,
                                        self.nvfp4_techniques, amax_group, self.flush_counter,
                                        self.rounding_generator)
        bias = kwargs.get("bias")
        return output if bias is None else output + bias


class QuantizedColumnParallelLinear(QuantizedGemmMixin, ColumnParallelLinear):
    """Megatron-Core's ColumnParallelLinear whose GEMMs follow ``quantization_format``."""


class QuantizedRowParallelLinear(QuantizedGemmMixin, RowParallelLinear):
    """Megatron-Core's RowParallelLinear whose GEMMs follow ``quantization_format``."""


def _padded_quantized_gemm(x, weight, fmt, techniques, amax_group, flush_counter, generator=None):
    """``x @ weight.T`` in ``fmt`` with tokens, in and out zero-padded to the block size."""
    block = _BLOCK[fmt]
    tokens = x.reshape(-1, x.shape[-1])
    num_tokens, (out_features, in_features) = tokens.shape[0], weight.shape
    pad_tokens = -num_tokens % block or (block if num_tokens == 0 else 0)
    pad_in, pad_out = -in_features % block, -out_features % block
    if pad_tokens or pad_in:
        tokens = F.pad(tokens, (0, pad_in, 0, pad_tokens))
    padded_weight = F.pad(weight, (0, pad_in, 0, pad_out)) if pad_in or pad_out else weight
    if fmt == "nvfp4":
        y = nvfp4_linear(tokens, padded_weight, techniques, tp_group=amax_group,
                         generator=generator, flush_counter=flush_counter)
    else:
        y = mxfp8_linear(tokens, padded_weight, flush_counter=flush_counter)
    return y[:num_tokens, :out_features].reshape(*x.shape[:-1], out_features)
