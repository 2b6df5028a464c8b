"""NVFP4 quantization, emulated in float32.

NVFP4 stores E2M1 elements (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}) in blocks of 16
along the GEMM's reduction dimension, one E4M3 decode scale per block, and one
float32 scale per tensor. The arithmetic follows the reference implementation
(nemotron3_reference.md, "The NVFP4 recipe") operation by operation, in
float32:

    S_enc = 6·448 / amax                  (1 when amax == 0)
    S_dec = 1 / S_enc
    dec_b = e4m3_rne(min(block_amax · S_enc / 6, 448))
    v     = x · min(1 / (dec_b · S_dec), FLT_MAX)
    q     = E2M1 rounding of v, clamped to ±6
    x̂     = q · dec_b · S_dec

There is no lower clamp on ``dec_b``: a block whose scale rounds to 0 in E4M3
decodes to zero. Its encode multiplier is FLT_MAX, so its ``values`` saturate
at ±6 (for all but subnormal x), yet every x̂ of the block is 0.

Negative zero: an element's sign is the sign bit of ``v``, so ``-0.0`` and
negative values that round to zero become ``-0.0`` (code ``0b1000``), and
dequantize to ``-0.0``.

Quantization runs along the last dimension only; callers that need the other
orientation (the columnwise copy for a transposed GEMM operand) pass the
transposed tensor. Sizes that do not divide into blocks raise ``ValueError``;
nothing is padded.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from nemotron_train.precision.hadamard import random_hadamard_transform

BLOCK_SIZE = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
FLT_MAX = torch.finfo(torch.float32).max

# E2M1 magnitudes in code order: the 3-bit magnitude index of a 4-bit code.
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

Tile = tuple[int, int]
Rounding = Literal["rne", "stochastic"]
TILES: tuple[Tile, ...] = ((1, BLOCK_SIZE), (BLOCK_SIZE, BLOCK_SIZE))
ROUNDINGS: tuple[str, ...] = ("rne", "stochastic")


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor quantized to NVFP4 along its last dimension.

    ``values * block scale * decode_scale`` is the dequantized tensor (see
    :func:`dequantize`).
    """

    values: torch.Tensor
    """E2M1 values as float32, in the input's shape."""
    block_scales: torch.Tensor
    """Per-block decode scales ``dec_b`` (float8_e4m3fn): shape ``(..., n/16)``
    for 1x16 tiles, ``(..., m/16, n/16)`` for 16x16 tiles of an ``(..., m, n)``
    input."""
    amax: torch.Tensor
    """Float32 scalar: the amax the scales were computed from (after the
    transform when ``rht``, after ``amax_reduce`` when one was given)."""
    decode_scale: torch.Tensor
    """Float32 scalar ``S_dec = 1 / S_enc``."""
    tile: Tile
    """Block shape: (1, 16) or (16, 16)."""
    rht: bool
    """Whether the values are in the random-Hadamard-rotated basis."""


def quantize(
    x: torch.Tensor,
    tile: Tile = (1, 16),
    rounding: Rounding = "rne",
    rht: bool = False,
    generator: torch.Generator | None = None,
    amax_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> NVFP4Tensor:
    """Quantize ``x`` to NVFP4 with blocks along its last dimension.

    Args:
        x: tensor of any float dtype; converted to float32 first.
        tile: (1, 16) for 16-element blocks along the last dimension, or
            (16, 16) for 2D blocks over the last two dimensions (one amax per
            tile, so a matrix and its transpose quantize to the same numbers).
        rounding: "rne" (round to nearest, ties to even) or "stochastic"
            (8 random bits per element; see :func:`stochastic_round_to_e2m1`).
            Block scales are always RNE.
        rht: first rotate each 16-element chunk of the last dimension with the
            random Hadamard transform (result rounded to BF16), then take the
            amax and quantize. The values stay in the rotated basis.
        generator: source of the random bits for stochastic rounding; a seeded
            generator makes the result reproducible. ``None`` uses torch's
            default generator.
        amax_reduce: maps the local amax (float32 scalar) to the amax to use,
            e.g. an all-reduce MAX across a tensor-parallel group, so that every
            rank's shard is quantized as the whole tensor would be.

    Raises:
        ValueError: unknown ``tile`` or ``rounding``; ``rht`` with 2D tiles;
            a last dimension (or, for 2D tiles, second-to-last dimension) that
            is not a multiple of 16.
    """
    _check_arguments(x, tile, rounding, rht)
    x = random_hadamard_transform(x).float() if rht else x.float()

    amax = x.abs().amax()
    if amax_reduce is not None:
        amax = amax_reduce(amax)
    # Constants divide as tensors on x's device: torch computes `c / t` as
    # `reciprocal(t) * c`, and on CUDA `t / c` as `t * (1 / c)`, each a
    # rounding away from the quotient the formula means (`1.0 / t` is fine:
    # the reciprocal is correctly rounded).
    fp4_max, fp4_times_fp8_max = x.new_full((), E2M1_MAX), x.new_full((), E2M1_MAX * E4M3_MAX)
    # Clamped so that an amax below 6·448/FLT_MAX gives a finite S_enc instead
    # of inf (which would turn all-zero blocks into 0·inf = NaN).
    s_enc = torch.where(amax == 0, 1.0, torch.clamp(fp4_times_fp8_max / amax, max=FLT_MAX))
    s_dec = 1.0 / s_enc

    blocks = _block_view(x, tile)
    block_amax = blocks.abs().amax(dim=_block_dims(tile), keepdim=True)
    # Saturate before casting: depending on the torch version, the float8
    # cast turns out-of-range values into NaN.
    dec_b = torch.clamp(block_amax * s_enc / fp4_max, max=E4M3_MAX).to(torch.float8_e4m3fn)
    enc_b = torch.clamp(1.0 / (dec_b.float() * s_dec), max=FLT_MAX)
    v = (blocks * enc_b).reshape(x.shape)

    if rounding == "rne":
        q = round_to_e2m1(v)
    else:
        random_bits = torch.randint(
            256, v.shape, generator=generator, device=v.device, dtype=torch.uint8
        )
        q = stochastic_round_to_e2m1(v, random_bits)
    return NVFP4Tensor(
        values=q,
        block_scales=dec_b.squeeze(_block_dims(tile)),
        amax=amax,
        decode_scale=s_dec,
        tile=tile,
        rht=rht,
    )


def dequantize(q: NVFP4Tensor) -> torch.Tensor:
    """``x̂ = q · dec_b · S_dec`` in float32, in the shape of the quantized input.

    For a tensor quantized with ``rht=True`` the result is in the rotated
    basis: it approximates ``random_hadamard_transform(x)``, not ``x``. Use it
    as a GEMM operand together with another operand rotated the same way
    along the same reduction dimension, which cancels the rotation.
    """
    dec_b = q.block_scales.float().unsqueeze(-1)
    if q.tile[0] > 1:
        dec_b = dec_b.unsqueeze(-3)
    x_hat = _block_view(q.values, q.tile) * dec_b * q.decode_scale
    return x_hat.reshape(q.values.shape)


def _e2m1_step(magnitude: torch.Tensor) -> torch.Tensor:
    """Spacing of the E2M1 grid in the binade of ``magnitude``: 0.5 below 2, 1 below 4, else 2."""
    return torch.where(magnitude < 2, 0.5, torch.where(magnitude < 4, 1.0, 2.0))


def round_to_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round float32 ``v`` to the nearest E2M1 value, ties to even, clamped to ±6.

    Within a binade the grid is ``k · step``, and ``k`` is even exactly when
    the mantissa bit is 0, so torch.round's ties-to-even on ``|v| / step`` is
    ties-to-even on the E2M1 grid (e.g. 0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4).
    """
    magnitude = v.abs().clamp(max=E2M1_MAX)
    step = _e2m1_step(magnitude)
    return torch.copysign(torch.round(magnitude / step) * step, v)


def stochastic_round_to_e2m1(v: torch.Tensor, random_bits: torch.Tensor) -> torch.Tensor:
    """Round float32 ``v`` to E2M1 up or down at random, using 8 bits per element.

    The reference's software rounding: with ``u = r / 256`` for the uint8
    ``random_bits`` r, ``t = |v| + u · step(|v|)``, and the result is
    ``floor(t / step(t)) · step(t)`` clamped to 6, with the sign of ``v``.
    ``|v|`` rounds up with probability ``floor(256 · f) / 256``, where ``f`` is
    its fractional position between the two neighbouring grid points, so the
    mean is exact for ``v`` on the 1/256 sub-grid and biased toward zero by
    less than ``step / 256`` elsewhere.
    """
    u = random_bits.float() / 256
    t = v.abs() + u * _e2m1_step(v.abs())
    step_t = _e2m1_step(t)
    magnitude = torch.clamp(torch.floor(t / step_t) * step_t, max=E2M1_MAX)
    return torch.copysign(magnitude, v)


def e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8, one per element) of E2M1 ``values``: sign bit << 3 | magnitude index."""
    grid = torch.tensor(E2M1_MAGNITUDES, dtype=values.dtype, device=values.device)
    index = torch.searchsorted(grid, values.abs())
    if not torch.equal(grid[index.clamp(max=len(E2M1_MAGNITUDES) - 1)], values.abs()):
        raise ValueError("e2m1_codes: values must lie on the E2M1 grid")
    return (torch.signbit(values).to(torch.uint8) << 3) | index.to(torch.uint8)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """Float32 E2M1 values of 4-bit ``codes`` (inverse of :func:`e2m1_codes`, -0.0 included)."""
    grid = torch.tensor(E2M1_MAGNITUDES, device=codes.device)
    magnitude = grid[(codes & 0b0111).long()]
    return torch.where((codes & 0b1000) != 0, -magnitude, magnitude)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dimension (even index in the low nibble)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_codes: last dimension of shape {tuple(codes.shape)} must be even")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: one 4-bit code per uint8, last dimension doubled."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)


def _check_arguments(x: torch.Tensor, tile: Tile, rounding: str, rht: bool) -> None:
    if tile not in TILES:
        raise ValueError(f"nvfp4.quantize: tile={tile!r}; allowed: {TILES}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"nvfp4.quantize: rounding={rounding!r}; allowed: {ROUNDINGS}")
    if rht and tile != (1, 16):
        raise ValueError(f"nvfp4.quantize: rht=True needs tile=(1, 16), got tile={tile!r}")
    rows, cols = tile
    if x.shape[-1] % cols:
        raise ValueError(
            f"nvfp4.quantize: last dimension of shape {tuple(x.shape)} must be a multiple of "
            f"{cols} (inputs are not padded)"
        )
    if rows > 1 and (x.dim() < 2 or x.shape[-2] % rows):
        raise ValueError(
            f"nvfp4.quantize: tile={tile!r} needs the last two dimensions of shape "
            f"{tuple(x.shape)} to be multiples of {rows} (inputs are not padded)"
        )


def _block_view(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """Split the last dimension (and for 16x16 tiles the second-to-last) into blocks.

    ``(..., m, n)`` becomes ``(..., m, n/16, 16)`` for 1x16 tiles and
    ``(..., m/16, 16, n/16, 16)`` for 16x16 tiles.
    """
    rows, cols = tile
    blocks = x.unflatten(-1, (-1, cols))
    if rows > 1:
        blocks = blocks.unflatten(-3, (-1, rows))
    return blocks


def _block_dims(tile: Tile) -> tuple[int, ...]:
    """The dimensions of :func:`_block_view` that run inside one block."""
    return (-1,) if tile[0] == 1 else (-3, -1)
