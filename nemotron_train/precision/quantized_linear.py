"""Linear layers whose three GEMMs run on NVFP4 or MXFP8 operands (emulated).

For ``y = x Wᵀ`` with ``x`` flattened to tokens ``X`` (T x in) and ``W``
(out x in), each GEMM is ``Â @ B̂ᵀ`` where both operands are quantized along
the GEMM's reduction dimension (their last dimension) and dequantized to
float32:

    fprop  Y  = X̂ Ŵᵀ            reduction over in
    dgrad  dX = dŶ (Ŵᵀ)ᵀ         reduction over out
    wgrad  dW = (dYᵀ)^ (Xᵀ)^ᵀ    reduction over tokens

The NVFP4 recipe (nemotron3_reference.md) quantizes X 1x16 RNE, W with 16x16
blocks RNE (the dgrad reuses the same numbers transposed), dY 1x16 with
stochastic rounding, and rotates both wgrad operands with the random
Hadamard transform along the tokens, dYᵀ with stochastic rounding and Xᵀ
with RNE. Every operand is quantized separately from the high-precision
tensor with its own amax. The GEMMs run in float32 and the results are cast
back to the dtypes of ``x`` and ``W``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nemotron_train.precision import mxfp8, nvfp4
from nemotron_train.precision.hadamard import random_hadamard_transform

AmaxReduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class NVFP4Techniques:
    """Which parts of the NVFP4 training recipe are on; each can be switched off for ablations."""

    rht: bool = True
    """Random Hadamard transform of both wgrad operands along the tokens."""
    stochastic_rounding: bool = True
    """Stochastic rounding of the output-gradient operands (dgrad and wgrad); RNE when off."""
    weight_2d: bool = True
    """16x16 weight blocks, shared by fprop and dgrad. When off, fprop quantizes W
    in 1x16 blocks along its input dimension and dgrad quantizes a separate
    copy, Wᵀ in 1x16 blocks along the output dimension."""


@dataclass
class FlushCounter:
    """Counts, per GEMM operand, the non-zero inputs that quantization turned into zeros.

    A value is flushed when its quantizer input is non-zero and its dequantized
    value is zero (an E2M1/E4M3 zero, or a block scale that rounded to zero).
    For RHT operands both are taken in the rotated basis. Counts accumulate as
    tensors on the operands' device, so recording never synchronises with the
    host; :meth:`fractions` does. Pass one counter to every layer of a kind
    to get that kind's totals.

    Operand names: ``x`` and ``weight`` (fprop), ``grad_output`` and
    ``weight_t`` (dgrad; ``weight_t`` only when the weight is not shared
    with fprop), ``grad_output_t`` and ``x_t`` (wgrad).
    """

    flushed: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per operand: number of non-zero inputs that dequantized to zero."""
    nonzero: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per operand: number of non-zero inputs."""

    def record(self, operand: str, source: torch.Tensor, dequantized: torch.Tensor) -> None:
        """Add the counts of one quantization of ``source`` to ``operand``'s totals."""
        nonzero = source != 0
        flushed = (nonzero & (dequantized == 0)).sum()
        self.flushed[operand] = self.flushed.get(operand, 0) + flushed
        self.nonzero[operand] = self.nonzero.get(operand, 0) + nonzero.sum()

    def fractions(self) -> dict[str, float]:
        """Flushed / non-zero per operand (0 for an operand without non-zero inputs)."""
        return {
            operand: (self.flushed[operand].double() / self.nonzero[operand].clamp(min=1)).item()
            for operand in self.flushed
        }


def nvfp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    techniques: NVFP4Techniques = NVFP4Techniques(),
    tp_group: dist.ProcessGroup | None = None,
    generator: torch.Generator | None = None,
    flush_counter: FlushCounter | None = None,
) -> torch.Tensor:
    """``x @ weight.T`` with NVFP4 fprop, dgrad and wgrad GEMMs as ``techniques`` prescribes.

    Args:
        x: input ``(..., in)``, e.g. ``(seq, batch, hidden)``; the leading
            dimensions are flattened into tokens, whose count must be a
            multiple of 16 (the wgrad blocks run along the tokens).
        weight: ``(out, in)``; ``in`` (and ``out`` with 2D weight blocks) must
            be multiples of 16.
        techniques: which NVFP4 techniques are on.
        tp_group: when given, every operand's amax is max-reduced across it
            (``all_reduce`` MAX) before the scales are computed, so each rank's
            shard is quantized as the unsharded tensor would be.
        generator: random bits for stochastic rounding (dgrad's output
            gradient is drawn before wgrad's).
        flush_counter: optional :class:`FlushCounter` to record into.

    Returns:
        ``(..., out)`` in ``x``'s dtype; gradients come back in the dtypes of
        ``x`` and ``weight``.
    """
    amax_reduce = None if tp_group is None else _all_reduce_max(tp_group)
    return NVFP4LinearFunction.apply(x, weight, techniques, amax_reduce, generator, flush_counter)


def mxfp8_linear(
    x: torch.Tensor, weight: torch.Tensor, flush_counter: FlushCounter | None = None
) -> torch.Tensor:
    """``x @ weight.T`` with MXFP8 fprop, dgrad and wgrad GEMMs (the Mamba out_proj exception).

    Every operand is quantized separately along its GEMM's reduction
    dimension in 1x32 blocks, RNE: X and W along ``in`` (rowwise copies), dY
    and Wᵀ along ``out``, dYᵀ and Xᵀ along the tokens (the columnwise copies).
    No per-tensor scale, so nothing is reduced across ranks. The token count,
    ``in`` and ``out`` must be multiples of 32.
    """
    return MXFP8LinearFunction.apply(x, weight, flush_counter)


class NVFP4LinearFunction(torch.autograd.Function):
    """Autograd function behind :func:`nvfp4_linear`.

    Takes the same arguments, with an ``amax_reduce`` callable (see
    :func:`nvfp4.quantize`) in place of ``tp_group``.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        techniques: NVFP4Techniques,
        amax_reduce: AmaxReduce | None,
        generator: torch.Generator | None,
        flush_counter: FlushCounter | None,
    ) -> torch.Tensor:
        quantize = _nvfp4_operand_quantizer(amax_reduce, generator, flush_counter)
        tokens = x.reshape(-1, x.shape[-1])
        x_hat = quantize("x", tokens)
        w_hat = quantize("weight", weight, tile=(16, 16) if techniques.weight_2d else (1, 16))
        ctx.save_for_backward(x, weight, w_hat if techniques.weight_2d else None)
        ctx.techniques, ctx.quantize = techniques, quantize
        y = _gemm(x_hat, w_hat)
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight, w_hat = ctx.saved_tensors
        techniques, quantize = ctx.techniques, ctx.quantize
        rounding = "stochastic" if techniques.stochastic_rounding else "rne"
        tokens = x.reshape(-1, x.shape[-1])
        dy = grad_output.reshape(-1, grad_output.shape[-1])

        grad_x = None
        if ctx.needs_input_grad[0]:
            dy_hat = quantize("grad_output", dy, rounding=rounding)
            # A 16x16-block quantization of Wᵀ is the transpose of W's.
            w_t_hat = w_hat.T if techniques.weight_2d else quantize("weight_t", weight.T)
            grad_x = _gemm(dy_hat, w_t_hat).to(x.dtype).reshape(x.shape)

        grad_w = None
        if ctx.needs_input_grad[1]:
            dy_t_hat = quantize("grad_output_t", dy.T, rounding=rounding, rht=techniques.rht)
            x_t_hat = quantize("x_t", tokens.T, rht=techniques.rht)
            grad_w = _gemm(dy_t_hat, x_t_hat).to(weight.dtype)
        return grad_x, grad_w, None, None, None, None


class MXFP8LinearFunction(torch.autograd.Function):
    """Autograd function behind :func:`mxfp8_linear`."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, flush_counter: FlushCounter | None
    ) -> torch.Tensor:
        quantize = _mxfp8_operand_quantizer(flush_counter)
        tokens = x.reshape(-1, x.shape[-1])
        y = _gemm(quantize("x", tokens), quantize("weight", weight))
        ctx.save_for_backward(x, weight)
        ctx.quantize = quantize
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        quantize = ctx.quantize
        tokens = x.reshape(-1, x.shape[-1])
        dy = grad_output.reshape(-1, grad_output.shape[-1])

        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(quantize("grad_output", dy), quantize("weight_t", weight.T))
            grad_x = grad_x.to(x.dtype).reshape(x.shape)

        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(quantize("grad_output_t", dy.T), quantize("x_t", tokens.T))
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, None


def _nvfp4_operand_quantizer(
    amax_reduce: AmaxReduce | None,
    generator: torch.Generator | None,
    flush_counter: FlushCounter | None,
) -> Callable[..., torch.Tensor]:
    """A function ``(operand, t, tile, rounding, rht) -> t̂`` that quantizes, dequantizes and
    counts flushes."""

    def quantize(operand, t, tile=(1, 16), rounding="rne", rht=False):
        t_hat = nvfp4.quantize_dequantize(
            t, tile=tile, rounding=rounding, rht=rht, generator=generator, amax_reduce=amax_reduce
        )
        if flush_counter is not None:
            source = random_hadamard_transform(t) if rht else t
            flush_counter.record(operand, source, t_hat)
        return t_hat

    return quantize


def _mxfp8_operand_quantizer(flush_counter: FlushCounter | None) -> Callable[..., torch.Tensor]:
    """A function ``(operand, t) -> t̂``: quantize, dequantize, count flushes."""

    def quantize(operand, t):
        t_hat = mxfp8.dequantize(mxfp8.quantize(t))
        if flush_counter is not None:
            flush_counter.record(operand, t, t_hat)
        return t_hat

    return quantize


def _gemm(a_hat: torch.Tensor, b_hat: torch.Tensor) -> torch.Tensor:
    """``a_hat @ b_hat.T`` in float32.

    On CUDA this is float32 only while TF32 matmuls are off (torch's default,
    ``torch.backends.cuda.matmul.allow_tf32``); with TF32 on, the dequantized
    operands lose mantissa bits that the emulation assumes they keep.
    """
    # Autocast would run the matmul in BF16; the emulated GEMM accumulates in
    # float32 like the tensor cores it stands in for.
    with torch.autocast(a_hat.device.type, enabled=False):
        return a_hat @ b_hat.T


def _all_reduce_max(group: dist.ProcessGroup) -> AmaxReduce:
    """An ``amax_reduce`` that takes the maximum of the amax over ``group``."""

    def reduce(amax: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        return amax

    return reduce
