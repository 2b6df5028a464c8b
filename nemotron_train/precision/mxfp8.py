"""MXFP8 quantization, emulated in float32.

MXFP8 stores E4M3 elements in blocks of 32 along the GEMM's reduction
dimension, each block with a power-of-two E8M0 scale and no per-tensor scale
(nemotron3_reference.md, "High-precision exceptions"):

    scale_b = 2^ceil(log2(block_amax / 448))
    q       = e4m3_rne(clamp(x / scale_b, -448, 448))
    x̂       = q · scale_b

The exponent is clamped to E8M0's range [-127, 127]; an all-zero block
(log2(0) = -inf) gets the smallest scale 2^-127 and zero elements. Scales are
stored as ``torch.float8_e8m0fnu`` (torch >= 2.7); their raw bytes, via
``.view(torch.uint8)``, are the biased exponents ``e + 127``.

Quantization runs along the last dimension only; the columnwise (32x1) copy
is the quantization of the transposed tensor. A last dimension that is not a
multiple of 32 raises ``ValueError``; nothing is padded.
"""

from dataclasses import dataclass

import torch

BLOCK_SIZE = 32
E4M3_MAX = 448.0
E8M0_MIN_EXPONENT = -127
E8M0_BIAS = 127


@dataclass(frozen=True)
class MXFP8Tensor:
    """A tensor quantized to MXFP8 along its last dimension (see :func:`dequantize`)."""

    values: torch.Tensor
    """E4M3 elements (float8_e4m3fn), in the input's shape."""
    block_scales: torch.Tensor
    """Power-of-two scales (float8_e8m0fnu), shape ``(..., n/32)``."""


def quantize(x: torch.Tensor) -> MXFP8Tensor:
    """Quantize ``x`` (any float dtype, converted to float32) to MXFP8 along its last dimension.

    Raises:
        ValueError: the last dimension is not a multiple of 32.
    """
    if x.shape[-1] % BLOCK_SIZE:
        raise ValueError(
            f"mxfp8.quantize: last dimension of shape {tuple(x.shape)} must be a multiple of "
            f"{BLOCK_SIZE} (inputs are not padded)"
        )
    blocks = x.float().unflatten(-1, (-1, BLOCK_SIZE))
    block_amax = blocks.abs().amax(dim=-1, keepdim=True)
    # 448 divides as a tensor on x's device: on CUDA `t / 448` is computed as
    # `t * (1 / 448)`, which can put the ratio on the wrong side of a power of
    # two. log2 in float64: in float32, log2(2^k · (1 + 2^-23)) rounds to k
    # for k >= 4 or k <= -5, which would pick a scale one power of two too small.
    ratio = block_amax / blocks.new_full((), E4M3_MAX)
    exponent = torch.ceil(torch.log2(ratio.double()))
    biased = (exponent.clamp(min=E8M0_MIN_EXPONENT) + E8M0_BIAS).to(torch.uint8)
    block_scales = biased.view(torch.float8_e8m0fnu)
    # Saturate before casting: depending on the torch version, the float8
    # cast turns out-of-range values into NaN.
    values = torch.clamp(blocks / block_scales.float(), -E4M3_MAX, E4M3_MAX)
    return MXFP8Tensor(
        values=values.to(torch.float8_e4m3fn).flatten(-2),
        block_scales=block_scales.squeeze(-1),
    )


def dequantize(q: MXFP8Tensor) -> torch.Tensor:
    """``x̂ = q · scale_b`` in float32, in the shape of the quantized input."""
    scale = q.block_scales.float().unsqueeze(-1)
    x_hat = q.values.float().unflatten(-1, (-1, BLOCK_SIZE)) * scale
    return x_hat.flatten(-2)
