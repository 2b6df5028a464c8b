"""NVFP4 block scales on E4M3 rounding boundaries, against the kernel's formula worked
out by hand in exact rational arithmetic.

The kernel computes ``dec_b = e4m3_rne(min(block_amax · fl(S_enc · fl(1/6)), 448))``
(nemotron3_reference.md, each ``fl`` a float32 rounding). The oracle below rounds
exact fractions to float32, E4M3 and E2M1 from the formats' definitions, with no
torch arithmetic, and the cases are block amaxes on and next to every E4M3
rounding boundary, where the other order of operations, ``(block_amax · S_enc) / 6``,
picks the neighbouring scale.
"""

import functools
import math
import os
import struct
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from nemotron_train.precision import mxfp8, nvfp4
from nemotron_train.precision.hadamard import rht_matrix

FLT_MAX = Fraction(torch.finfo(torch.float32).max)


def floor_log2(q: Fraction) -> int:
    """e with 2^e <= q < 2^(e+1), for q > 0."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e if Fraction(2) ** e <= q else e - 1


def round_half_even(q: Fraction) -> int:
    n = math.floor(q)
    rest = q - n
    return n + 1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2) else n


def round_to_grid(q: Fraction, mantissa_bits: int, min_exponent: int) -> Fraction:
    """q rounded to nearest, ties to even, on a binary float grid (subnormals below min_exponent)."""
    if q == 0:
        return Fraction(0)
    e = max(floor_log2(abs(q)), min_exponent)
    ulp = Fraction(2) ** (e - mantissa_bits)
    return (-1 if q < 0 else 1) * round_half_even(abs(q) / ulp) * ulp


def f32(q: Fraction) -> Fraction:
    return round_to_grid(q, 23, -126)


def e4m3(q: Fraction) -> Fraction:
    assert 0 <= q <= 448
    return round_to_grid(q, 3, -6)


def e2m1(q: Fraction) -> Fraction:
    return round_to_grid(max(min(q, Fraction(6)), Fraction(-6)), 1, 0)


FP4_RECIPROCAL = f32(Fraction(1, 6))


def kernel_block(amax: Fraction, block: list[Fraction]) -> tuple[Fraction, list[Fraction]]:
    """(dec_b, E2M1 values) of one block, in the kernel's order of float32 operations."""
    s_enc = f32(Fraction(2688) / amax)
    s_dec = f32(1 / s_enc)
    dec_b = e4m3(min(f32(max(map(abs, block)) * f32(s_enc * FP4_RECIPROCAL)), Fraction(448)))
    enc_b = min(f32(1 / f32(dec_b * s_dec)), FLT_MAX) if dec_b else FLT_MAX
    return dec_b, [e2m1(f32(x * enc_b)) for x in block]


def other_order_scale(amax: Fraction, block_amax: Fraction) -> Fraction:
    """dec_b computed as ``(block_amax · S_enc) / 6``."""
    s_enc = f32(Fraction(2688) / amax)
    return e4m3(min(f32(f32(block_amax * s_enc) / 6), Fraction(448)))


def float32_neighbours(q: Fraction, count: int) -> list[Fraction]:
    """f32(q) and the ``count`` float32 values on either side."""
    bits = struct.unpack("<I", struct.pack("<f", float(f32(q))))[0]
    return [Fraction(struct.unpack("<f", struct.pack("<I", bits + k))[0])
            for k in range(-count, count + 1)]


# Every finite non-negative E4M3 value: subnormals m · 2^-9, normals (1 + m/8) · 2^(e-7);
# the code with e = 15, m = 7 is NaN.
E4M3_VALUES = [Fraction(m, 512) for m in range(8)] + [
    (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
    for e in range(1, 16) for m in range(8) if (e, m) != (15, 7)
]
E4M3_BOUNDARIES = [(a + b) / 2 for a, b in zip(E4M3_VALUES, E4M3_VALUES[1:])]

# Global amaxes: small integers and powers of two times them (a coarse grid), and
# values whose S_enc is not a short binary fraction.
GLOBAL_AMAXES = [Fraction(3), Fraction(5), Fraction(7), Fraction(3, 8), Fraction(10),
                 Fraction(1), Fraction(96), Fraction(2688), Fraction(3, 1024),
                 f32(Fraction(7, 10))]


@functools.cache
def boundary_blocks(amax: Fraction) -> list[list[Fraction]]:
    """Blocks whose amax lies on or next to (one float32 step) an E4M3 boundary of the
    exact quotient (for either order), each with five more elements spread below it
    and zeros."""
    s_enc = f32(Fraction(2688) / amax)
    multiplier = f32(s_enc * FP4_RECIPROCAL)
    amaxes = set()
    for boundary in E4M3_BOUNDARIES:
        for centre in (boundary / multiplier, boundary * 6 / s_enc):
            amaxes.update(b for b in float32_neighbours(centre, 1) if 0 < b <= amax)
    return [[b, *(f32(b * (-1) ** j * Fraction(j, 16)) for j in (3, 5, 8, 11, 13))]
            + [Fraction(0)] * 10 for b in sorted(amaxes)]


@functools.cache
def expected_blocks(amax: Fraction) -> list[tuple[Fraction, list[Fraction]]]:
    return [kernel_block(amax, block) for block in boundary_blocks(amax)]


def as_tensor(rows: list[list[Fraction]]) -> torch.Tensor:
    return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float32)


def in_both_layouts(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` contiguous, and the same values as a transposed view of a contiguous tensor."""
    return [t, t.T.contiguous().T]


def test_the_kernels_multiplier_is_the_float32_of_one_sixth():
    assert struct.pack("<f", nvfp4.E2M1_MAX_RECIPROCAL) == struct.pack("<I", 0x3E2AAAAB)
    assert Fraction(nvfp4.E2M1_MAX_RECIPROCAL) == FP4_RECIPROCAL


@pytest.mark.parametrize("layout", [0, 1], ids=["contiguous", "transposed_view"])
def test_amax_3_block_amax_2_25_takes_the_upper_scale(layout):
    # amax 3: S_enc = 2688 / 3 = 896. fl(1/6) = 11184811 · 2^-26, a hair above 1/6,
    # and 896 · fl(1/6) = 149.3333378 rounds up to 9786710 · 2^-16 = 149.33334351.
    # 2.25 · 149.33334351 = 336.0000229, float32 336.00003052: just above the E4M3
    # tie 336 between 320 and 352, so dec_b = 352 (the other order gets exactly
    # 336 and the even 320). S_dec = fl(1/896), enc_b = 1 / (352 · S_dec) = 2.5454545,
    # and 1.25 · 2.5454545 = 3.1818 -> 3 (with 320: 1.25 · 2.8 = 3.5, a tie -> 4).
    x = torch.zeros(2, 16)
    x[0, 0], x[1, :2] = 3.0, torch.tensor([2.25, 1.25])
    q = nvfp4.quantize(in_both_layouts(x)[layout])
    assert q.block_scales[1, 0].float().item() == 352.0
    assert q.values[1, :2].tolist() == [6.0, 3.0]
    assert other_order_scale(Fraction(3), Fraction(9, 4)) == 320


@pytest.mark.parametrize("amax", GLOBAL_AMAXES, ids=str)
@pytest.mark.parametrize("tile", [(1, 16), (16, 16)], ids=["1x16", "16x16"])
@pytest.mark.parametrize("layout", [0, 1], ids=["contiguous", "transposed_view"])
def test_block_scales_and_codes_on_e4m3_boundaries(amax, tile, layout):
    blocks, expected = boundary_blocks(amax), expected_blocks(amax)
    anchor = [amax] + [Fraction(0)] * 15
    if tile == (1, 16):
        x = as_tensor([anchor, *blocks])
    else:  # each block is the first row of a 16x16 tile, the other rows zero
        x = torch.zeros(16 * (len(blocks) + 1), 16)
        x[::16] = as_tensor([anchor, *blocks])
    q = nvfp4.quantize(in_both_layouts(x)[layout], tile=tile)

    scales = q.block_scales.float()[1:, 0].tolist()
    values = q.values[::tile[0]][1:].tolist()
    assert scales == [float(dec_b) for dec_b, _ in expected]
    assert values == [[float(v) for v in block_values] for _, block_values in expected]
    # With amax 7, S_enc = 384 and the multiplier is exactly 384 / 6 = 64.
    if amax != 7:
        differs = sum(other_order_scale(amax, block[0]) != dec_b
                      for block, (dec_b, _) in zip(blocks, expected))
        assert differs > 0, "the cases must include blocks the other order scales differently"


def test_rht_operands_on_e4m3_boundaries():
    # RHT(x) = x @ R with R = diag(s) · H16 / 4 orthogonal, so x = T @ Rᵀ rotates
    # onto the target T. T on a grid of quarters keeps x exact in BF16 and the
    # rotation exact in float32: the quantizer sees T exactly. Block amaxes
    # 2.25 / 2^k under amax 3 are the ties 336 / 2^k between E4M3 neighbours.
    amax = Fraction(3)
    blocks = [[Fraction(9, 4) / 2**k] + [Fraction((-1) ** j * (j % 9), 4) / 2**k for j in
                                         range(1, 16)] for k in range(4)]
    target = as_tensor([[amax] + [Fraction(0)] * 15, *blocks])
    x64 = target.double() @ rht_matrix().double().T
    x = x64.to(torch.bfloat16)
    assert torch.equal(x.double(), x64)
    expected = [kernel_block(amax, block) for block in blocks]
    assert all(dec_b != other_order_scale(amax, block[0]) for block, (dec_b, _) in
               zip(blocks, expected))
    for view in in_both_layouts(x):
        q = nvfp4.quantize(view, rht=True)
        assert q.block_scales.float()[1:, 0].tolist() == [float(d) for d, _ in expected]
        assert q.values[1:].tolist() == [[float(v) for v in values] for _, values in expected]


def test_mxfp8_scale_does_not_depend_on_the_order():
    # TransformerEngine's MXFP8 kernel rounds block_amax · fl(1/448) up to a power of
    # two (the exponent plus one unless the mantissa is 0), where we take
    # ceil(log2(block_amax / 448)); the two could differ only where the quotient is
    # near a power of two, i.e. block_amax near 448 · 2^k = 1.75 · 2^(k+8). Sampled
    # here over several binades (scaling by 2 is exact) and the subnormals, densely
    # around 1.75 and the binade edges. (Checked offline over every positive float32:
    # no amax gets a different scale.)
    rcp = torch.tensor(1 / 448, dtype=torch.float32)
    near = torch.arange(-256, 257)
    mantissas = torch.cat([torch.arange(0, 1 << 23, 4099), near % (1 << 23), 0x600000 + near])
    for biased_exponent in (0, 1, 120, 127, 133, 254):
        amax = ((biased_exponent << 23) + mantissas).to(torch.int32).view(torch.float32)
        product = (amax * rcp).view(torch.int32)
        biased, mantissa = product >> 23, product & 0x7FFFFF
        rounds_up = (mantissa > 0) & (biased != 0xFE) & ~((biased == 0) & (mantissa <= 0x400000))
        kernel = biased + rounds_up.int()
        x = torch.zeros(amax.numel(), 32)
        x[:, 0] = amax
        ours = mxfp8.quantize(x).block_scales.view(torch.uint8).squeeze(-1).int()
        nonzero = amax > 0
        assert torch.equal(ours[nonzero], kernel[nonzero]), biased_exponent


TE_SOURCE = Path(os.environ.get("NEMOTRON_TE_SRC", ".cache/TransformerEngine"))


# An extra oracle where TE's source tree was fetched (benchmarks/reference_sources.py);
# never committed, so CI's oracle is the hand-derived values above.
@pytest.mark.reference(TE_SOURCE / "transformer_engine")
@pytest.mark.parametrize("tile, rht", [((1, 16), False), ((16, 16), False), ((1, 16), True)])
def test_bits_equal_transformer_engines_reference_quantizer(tile, rht):
    from benchmarks.reference_sources import load_te_nvfp4_reference

    te = load_te_nvfp4_reference(TE_SOURCE)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(-12, 13, (256, 128), generator=generator) / 4
    for x in (torch.randn(256, 128, generator=generator), coarse):
        x = x.bfloat16()
        reference = te.NVFP4QuantizerRef(
            dtype=te.reference_utils.Fp4Formats.E2M1, rowwise=True, columnwise=True,
            quant_tile_shape=tile, with_rht=rht,
        ).quantize(x)
        rowwise, columnwise = nvfp4.quantize(x, tile=tile), nvfp4.quantize(x.T, tile=tile, rht=rht)
        copies = [(rowwise, reference.data, reference.scale)] if not rht else []
        copies.append((columnwise, reference.data_t, reference.scale_t))
        for ours, data, scale in copies:
            assert torch.equal(nvfp4.pack_codes(nvfp4.e2m1_codes(ours.values)), data)
            scales = ours.block_scales.repeat_interleave(tile[0], dim=0)
            assert torch.equal(scales.view(torch.uint8), scale.view(torch.uint8))
