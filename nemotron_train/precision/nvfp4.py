"""NVFP4 quantization, emulated in float32.

NVFP4 stores E2M1 elements (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}) in blocks of 16
along the GEMM's reduction dimension, one E4M3 decode scale per block, and one
float32 scale per tensor. The arithmetic follows the reference implementation
(nemotron3_reference.md, "The NVFP4 recipe") operation by operation, in
float32, each ``fl`` a float32 rounding:

    S_enc = 6·448 / amax                  (1 when amax == 0)
    S_dec = 1 / S_enc
    dec_b = e4m3_rne(min(block_amax · fl(S_enc · fl(1/6)), 448))
    v     = x · min(1 / (dec_b · S_dec), FLT_MAX)
    q     = E2M1 rounding of v, clamped to ±6
    x̂     = q · dec_b · S_dec

The block scale folds the FP4 reciprocal into the global multiplier first, in
exactly this order, as TransformerEngine's kernel does: ``block_amax · S_enc / 6``
rounds differently when the exact quotient falls on an E4M3 rounding boundary
(amax 3, block amax 2.25: exact 336, a tie; the kernel's order gives 352, the
other 320), and that changes the codes of the whole block.

There is no lower clamp on ``dec_b``: a block whose scale rounds to 0 in E4M3
decodes to zero. Its encode multiplier is FLT_MAX, so its ``values`` saturate
at ±6 (for all but subnormal x), yet every x̂ of the block is 0.

Negative zero: an element's sign is the sign bit of ``v``, so ``-0.0`` and
negative values that round to zero become ``-0.0`` (code ``0b1000``), and
dequantize to ``-0.0``.

Quantization runs along the last dimension only; callers that need the other
orientation (the columnwise copy for a transposed GEMM operand) pass the
transposed tensor. A transposed view is quantized where it lies in memory,
without a copy, and its results are transposed views too. Sizes that do not
divide into blocks raise ``ValueError``; nothing is padded.

Speed: torch's CPU kernels are fast in place and slow where they allocate
(page faults) or mix dtypes, so each quantization makes one float32 buffer and
works in it; E2M1 rounding is integer and float32 operations on the bit
pattern (see :func:`round_to_e2m1`) instead of a chain of float passes.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from nemotron_train.precision.hadamard import random_hadamard_transform

BLOCK_SIZE = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
FLT_MAX = torch.finfo(torch.float32).max
# fl(1/6), the kernel's `constexpr float fp4_max_inv = 1.0f / 6.0f` (a Python
# float holding the float32 value exactly; no tensor, so importing this module under a
# meta-device allocation context works).
E2M1_MAX_RECIPROCAL = struct.unpack("f", struct.pack("f", 1 / 6))[0]

# E2M1 magnitudes in code order: the 3-bit magnitude index of a 4-bit code.
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Float32 bit fields for the rounding: sign and exponent masks, the pattern of 1.0,
# the mantissa width.
_SIGN_BIT = -(2**31)
_EXPONENT_BITS = 0x7F800000
_ONE_BITS = 0x3F800000
_MANTISSA_WIDTH = 23
# Elements per chunk of the CPU passes (see _encode): about the size of a core's L2 cache.
_CPU_CHUNK = 1 << 20

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
    """E2M1 values as float32, in the input's shape (a transposed view for a
    transposed input)."""
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


@dataclass(frozen=True)
class _Matrix:
    """The quantizer's input as a contiguous matrix: the logical tensor is ``data``
    reshaped to ``shape``, or, when ``transposed``, ``data.T``."""

    data: torch.Tensor
    transposed: bool
    shape: torch.Size

    @staticmethod
    def of(x: torch.Tensor) -> "_Matrix":
        if x.dim() == 2 and not x.is_contiguous() and x.T.is_contiguous():
            return _Matrix(x.T, True, x.shape)
        return _Matrix(x.contiguous().reshape(-1, x.shape[-1]), False, x.shape)

    def tile(self, tile: Tile) -> Tile:
        """``tile`` (over the logical tensor's last two dimensions) in ``data``'s layout."""
        return tile[::-1] if self.transposed else tile

    def logical(self, t: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A matrix laid out like ``data``, viewed in the logical orientation (and ``shape``,
        by default the logical tensor's)."""
        if self.transposed:
            return t.T
        return t.reshape(self.shape if shape is None else shape)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`logical`: a contiguous tensor of the logical shape, viewed
        as a matrix laid out like ``data``."""
        return t.T if self.transposed else t.reshape(self.data.shape)


@dataclass(frozen=True)
class _Scales:
    """The scales of one quantization."""

    amax: torch.Tensor
    decode: torch.Tensor
    """S_dec (float32 scalar)."""
    block: torch.Tensor
    """dec_b (float8_e4m3fn), one per block."""
    encode: torch.Tensor
    """The float32 encode multiplier of each block, ``min(1 / (dec_b · S_dec), FLT_MAX)``."""


@dataclass(frozen=True)
class _Encoded:
    """One quantization in ``matrix.data``'s layout: E2M1 values and the scales."""

    matrix: _Matrix
    values: torch.Tensor
    scales: _Scales
    """Block scales of shape (rows / tile rows, cols / tile cols) in ``matrix.data``'s layout."""
    tile: Tile
    """The tile in ``matrix.data``'s layout."""


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
        x: tensor of any float dtype; computed in float32.
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
            default generator. The bits are drawn in the order of ``x``'s
            elements, whatever its memory layout.
        amax_reduce: maps the local amax (float32 scalar) to the amax to use,
            e.g. an all-reduce MAX across a tensor-parallel group, so that every
            rank's shard is quantized as the whole tensor would be.

    Raises:
        ValueError: unknown ``tile`` or ``rounding``; ``rht`` with 2D tiles;
            a last dimension (or, for 2D tiles, second-to-last dimension) that
            is not a multiple of 16.
    """
    encoded = _encode(x, tile, rounding, rht, generator, amax_reduce)
    rows, cols = tile
    scales_shape = (*x.shape[:-2], x.shape[-2] // rows, x.shape[-1] // cols) if rows > 1 else (
        *x.shape[:-1], x.shape[-1] // cols)
    return NVFP4Tensor(
        values=encoded.matrix.logical(encoded.values),
        block_scales=encoded.matrix.logical(encoded.scales.block, scales_shape),
        amax=encoded.scales.amax,
        decode_scale=encoded.scales.decode,
        tile=tile,
        rht=rht,
    )


def quantize_dequantize(
    x: torch.Tensor,
    tile: Tile = (1, 16),
    rounding: Rounding = "rne",
    rht: bool = False,
    generator: torch.Generator | None = None,
    amax_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x, ...))``, bit for bit, in one float32 buffer: the
    operand an emulated NVFP4 GEMM multiplies. Arguments as for :func:`quantize`."""
    encoded = _encode(x, tile, rounding, rht, generator, amax_reduce)
    dec_b = encoded.scales.block.float()[:, None, :, None]
    _blocks(encoded.values, encoded.tile).mul_(dec_b).mul_(encoded.scales.decode)
    return encoded.matrix.logical(encoded.values)


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


@torch.no_grad()
def _encode(x, tile, rounding, rht, generator, amax_reduce) -> _Encoded:
    """Scales and E2M1 values of ``x`` (see :func:`quantize`), in ``x``'s memory layout.

    Two passes over ``x``, a chunk of rows at a time: block amaxes, then, once
    the global amax is known, the scaled and rounded values. Each chunk's
    intermediate results stay in cache and in a reused scratch buffer (fresh
    CPU buffers cost more in page faults than the arithmetic does).
    """
    _check_arguments(x, tile, rounding, rht)
    if rht:
        x = random_hadamard_transform(x)
    matrix = _Matrix.of(x)
    data, data_tile = matrix.data, matrix.tile(tile)
    chunks = _row_chunks(data, data_tile[0])
    scratch = torch.empty(2, chunks[0].numel(), dtype=torch.int32, device=x.device)

    magnitude = scratch[0].view(torch.float32)
    block_amax = torch.cat([
        _block_amax(magnitude[: rows.numel()].view(rows.shape).copy_(rows).abs_(), data_tile)
        for rows in chunks
    ])
    scales = _scales(block_amax, amax_reduce)

    values = torch.empty(data.shape, dtype=torch.float32, device=x.device)
    if rounding == "stochastic":
        random_bits = random_bytes(x.shape, generator, x.device)
        random_bits = matrix.layout(random_bits).contiguous()
    start = 0
    for rows in chunks:
        end = start + rows.shape[0]
        v = values[start:end].copy_(rows)
        block_rows = slice(start // data_tile[0], end // data_tile[0])
        _blocks(v, data_tile).mul_(scales.encode[block_rows, None, :, None])
        v, chunk_scratch = v.view(-1), scratch[:, : v.numel()]
        if rounding == "rne":
            _round_to_e2m1_(v, *chunk_scratch)
        else:
            _stochastic_round_to_e2m1_(v, random_bits[start:end].view(-1), *chunk_scratch)
        start = end
    return _Encoded(matrix, values, scales, data_tile)


def _scales(block_amax: torch.Tensor, amax_reduce) -> _Scales:
    """The global and block scales for ``block_amax`` (float32, one per block), in the
    kernel's order of float32 operations."""
    amax = block_amax.amax()
    if amax_reduce is not None:
        amax = amax_reduce(amax)
    # Constants divide as tensors on the amax's device: torch computes `c / t` as
    # `reciprocal(t) * c`, and on CUDA `t / c` as `t * (1 / c)`, each a rounding
    # away from the quotient the formula means (`1.0 / t` is fine: the
    # reciprocal is correctly rounded).
    s_enc = torch.clamp(amax.new_tensor(E2M1_MAX * E4M3_MAX) / amax, max=FLT_MAX)
    # The kernel falls back to 1 for amax 0 (and for amax inf, where S_enc is 0); an
    # amax below 6·448/FLT_MAX was clamped to a finite S_enc instead of inf.
    s_enc = torch.where((amax == 0) | (s_enc == 0), 1.0, s_enc)
    s_dec = 1.0 / s_enc
    multiplier = s_enc * s_enc.new_tensor(E2M1_MAX_RECIPROCAL)
    # Saturate before casting: depending on the torch version, the float8
    # cast turns out-of-range values into NaN.
    dec_b = torch.clamp(block_amax * multiplier, max=E4M3_MAX).to(torch.float8_e4m3fn)
    enc_b = torch.clamp(1.0 / (dec_b.float() * s_dec), max=FLT_MAX)
    return _Scales(amax=amax, decode=s_dec, block=dec_b, encode=enc_b)


def _row_chunks(data: torch.Tensor, tile_rows: int) -> tuple[torch.Tensor, ...]:
    """``data`` (rows, cols) split into chunks of whole tiles of about ``_CPU_CHUNK``
    elements on the CPU; one chunk on CUDA, whose caching allocator makes buffers cheap."""
    if data.device.type == "cuda":
        return (data,)
    rows = max(tile_rows, _CPU_CHUNK // max(data.shape[1], 1) // tile_rows * tile_rows)
    return data.split(rows)


def _block_amax(magnitude: torch.Tensor, tile: Tile) -> torch.Tensor:
    """Max of the non-negative ``magnitude`` (rows, cols) over each ``tile``:
    (rows / tile rows, cols / tile cols)."""
    rows, cols = tile
    if cols > 1:
        # max_pool1d reduces runs of 16 along the last dimension several times
        # faster than amax over an unflattened dimension of 16.
        magnitude = F.max_pool1d(magnitude, cols, cols)
    if rows > 1:
        magnitude = magnitude.unflatten(0, (-1, rows)).amax(1)
    return magnitude


def _blocks(t: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The (rows, cols) matrix ``t`` viewed as (rows / r, r, cols / c, c) for ``tile`` (r, c)."""
    rows, cols = tile
    return t.view(t.shape[0] // rows, rows, t.shape[1] // cols, cols)


def random_bytes(shape: tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform random uint8 of ``shape``, drawn from ``generator`` eight at a time.

    Each draw of a full-range int64 gives eight bytes: on the CPU a draw costs
    about as much whatever its width, so this is several times faster than
    ``torch.randint(256, ...)`` with one draw per byte.
    """
    count = 1
    for size in shape:
        count *= size
    draws = torch.empty(-(-count // 8), dtype=torch.int64, device=device)
    draws.random_(-(2**63), None, generator=generator)
    return draws.view(torch.uint8)[:count].view(shape)


def round_to_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round float32 ``v`` to the nearest E2M1 value, ties to even, clamped to ±6.

    The E2M1 grid has step 0.5 below 2, 1 in [2, 4) and 2 from 4, that is
    ``max(2^e, 1) / 2`` for the binary exponent e of ``|v|``. Adding
    ``M = 2^23 · step`` puts ``|v| + M`` in a binade whose float32 spacing is
    exactly ``step``, so float32's own round-to-nearest-even rounds ``|v|`` onto
    the grid, and ``(|v| + M) - M`` is the result, to which v's sign bit is
    restored. The even neighbour is the even multiple of the step, which is the
    E2M1 code with mantissa bit 0 (0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4).
    """
    v = v.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    _round_to_e2m1_(v.view(-1), *torch.empty(2, v.numel(), dtype=torch.int32, device=v.device))
    return v


def _round_to_e2m1_(v: torch.Tensor, sign: torch.Tensor, magic: torch.Tensor) -> None:
    """:func:`round_to_e2m1` in place on the flat float32 ``v``; ``sign`` and ``magic``
    are int32 scratch of the same size. (Integer operations on the bit pattern:
    torch's copysign is several times slower than an add.)"""
    bits = v.view(torch.int32)
    torch.bitwise_and(bits, _SIGN_BIT, out=sign)
    magnitude = v.abs_().clamp_(max=E2M1_MAX)
    torch.bitwise_and(bits, _EXPONENT_BITS, out=magic)
    magic = magic.clamp_(min=_ONE_BITS).add_((_MANTISSA_WIDTH - 1) << _MANTISSA_WIDTH)
    magnitude.add_(magic.view(torch.float32)).sub_(magic.view(torch.float32))
    bits.bitwise_or_(sign)


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
    v = v.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    scratch = torch.empty(2, v.numel(), dtype=torch.int32, device=v.device)
    _stochastic_round_to_e2m1_(v.view(-1), random_bits.reshape(-1), *scratch)
    return v


def _stochastic_round_to_e2m1_(
    v: torch.Tensor, random_bits: torch.Tensor, sign: torch.Tensor, step: torch.Tensor
) -> None:
    """:func:`stochastic_round_to_e2m1` in place on the flat float32 ``v``; ``sign`` and
    ``step`` are int32 scratch of the same size."""
    bits = v.view(torch.int32)
    torch.bitwise_and(bits, _SIGN_BIT, out=sign)
    # |v| >= 6 gives t in [6, 8), which floors to 6: clamping first is the
    # reference's final clamp, and keeps every t below 8.
    magnitude = v.abs_().clamp_(max=E2M1_MAX)
    increment = _e2m1_step(magnitude, step).mul_(random_bits).mul_(1 / 256)
    t = magnitude.add_(increment)
    step_t = _e2m1_step(t, step)
    t.div_(step_t).floor_().mul_(step_t)
    bits.bitwise_or_(sign)


def _e2m1_step(v: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """In ``scratch`` (int32), viewed as float32: the E2M1 grid step ``max(2^e, 1) / 2`` of
    each non-negative float32 ``v`` below 8 (0.5 below 2, 1 below 4, else 2)."""
    torch.bitwise_and(v.view(torch.int32), _EXPONENT_BITS, out=scratch)
    return scratch.clamp_(min=_ONE_BITS).sub_(1 << _MANTISSA_WIDTH).view(torch.float32)


def e2m1_codes(values: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8, one per element) of E2M1 ``values``: sign bit << 3 | magnitude index."""
    grid = torch.tensor(E2M1_MAGNITUDES, dtype=values.dtype, device=values.device)
    index = torch.searchsorted(grid, values.abs().contiguous())
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
