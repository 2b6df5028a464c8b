"""NVFP4 quantization against values derived by hand from the reference formulas."""

import math

import pytest
import torch

from nemotron_train.precision import nvfp4
from nemotron_train.precision.hadamard import random_hadamard_transform, rht_matrix

E4M3 = torch.float8_e4m3fn
# amax = 6·448 gives S_enc = S_dec = 1 exactly, and a block whose amax is 6
# then gets dec_b = 1, so its elements are rounded to E2M1 unscaled.
UNIT_SCALE_AMAX = 6 * 448.0


def up(x: float) -> float:
    """The next float32 above x."""
    return torch.nextafter(torch.tensor(x), torch.tensor(math.inf)).item()


def down(x: float) -> float:
    """The next float32 below x."""
    return torch.nextafter(torch.tensor(x), torch.tensor(-math.inf)).item()


def unit_scale_tensor(blocks: list[list[float]]) -> torch.Tensor:
    """Rows of 16: an anchor row holding the amax 6·448, then the given blocks, zero-padded."""
    anchor = [UNIT_SCALE_AMAX] + [0.0] * 15
    return torch.tensor([anchor] + [block + [0.0] * (16 - len(block)) for block in blocks])


def quantize_unit_scale(values: list[float]) -> torch.Tensor:
    """Quantized values of ``values`` in blocks led by 6, so that v = x exactly."""
    blocks = [[6.0] + values[i : i + 15] for i in range(0, len(values), 15)]
    q = nvfp4.quantize(unit_scale_tensor(blocks))
    assert q.decode_scale.item() == 1.0
    assert torch.all(q.block_scales[1:].float() == 1.0)
    return torch.cat([row[1 : 1 + 15] for row in q.values[1:]])[: len(values)]


# (input, E2M1 value): every rounding boundary, midpoints tie to the even code.
E2M1_BOUNDARIES = [
    (0.0, 0.0),
    (0.25, 0.0),  # tie: 0 (code 0) over 0.5 (code 1)
    (up(0.25), 0.5),
    (down(0.75), 0.5),
    (0.75, 1.0),  # tie: 1 (code 2) over 0.5 (code 1)
    (1.25, 1.0),  # tie: 1 (code 2) over 1.5 (code 3)
    (up(1.25), 1.5),
    (down(1.75), 1.5),
    (1.75, 2.0),  # tie: 2 (code 4) over 1.5 (code 3)
    (2.5, 2.0),  # tie: 2 (code 4) over 3 (code 5)
    (up(2.5), 3.0),
    (down(3.5), 3.0),
    (3.5, 4.0),  # tie: 4 (code 6) over 3 (code 5)
    (5.0, 4.0),  # tie: 4 (code 6) over 6 (code 7)
    (up(5.0), 6.0),
    (6.0, 6.0),
    (0.5, 0.5),
    (1.5, 1.5),
    (3.0, 3.0),
    (4.0, 4.0),
]


def test_every_e2m1_rounding_boundary():
    inputs = [x for x, _ in E2M1_BOUNDARIES] + [-x for x, _ in E2M1_BOUNDARIES]
    expected = [q for _, q in E2M1_BOUNDARIES] + [-q for _, q in E2M1_BOUNDARIES]
    assert torch.equal(quantize_unit_scale(inputs), torch.tensor(expected))


def test_round_to_e2m1_saturates_at_6():
    v = torch.tensor([6.0, 6.5, 1e30, math.inf, -7.0, -math.inf])
    assert torch.equal(nvfp4.round_to_e2m1(v), torch.tensor([6.0, 6, 6, 6, -6, -6]))


def test_element_saturation_when_block_scale_rounds_down():
    # block amax 6.36: dec_b = e4m3(6.36 / 6 = 1.06) = 1 (E4M3 neighbours 1 and
    # 1.125), so v = x and the largest elements exceed 6: they saturate at 6.
    q = nvfp4.quantize(unit_scale_tensor([[6.36, -6.2, 5.9, 5.0]]))
    assert q.block_scales[1].float().item() == 1.0
    assert q.values[1, :4].tolist() == [6.0, -6.0, 6.0, 4.0]
    assert nvfp4.dequantize(q)[1, 0].item() == 6.0


def test_block_scale_saturates_at_448_before_the_cast():
    # An external amax 4x too small puts block_amax · S_enc / 6 at 4·448: the
    # scale must be 448, not the float8 cast of 1792 (NaN in some torch versions).
    x = torch.randn(4, 32)
    q = nvfp4.quantize(x, amax_reduce=lambda amax: amax / 4)
    assert q.block_scales.float().max().item() == 448.0
    assert not torch.isnan(q.block_scales.float()).any()
    assert q.values.abs().max().item() == 6.0


def test_hand_built_scales():
    # amax 5: S_enc = 2688 / 5 = 537.6 (float32), S_dec = 1 / S_enc, and the
    # block multiplier fl(537.6 · fl(1/6)) = 89.6 (to float32 precision).
    # Block A, amax 5: 5 · 89.6 = 448, dec_b = 448, v = x · 6 / 5.
    # Block B, amax 0.7: 0.7 · 89.6 = 62.72, E4M3 neighbours 60 and 64:
    # dec_b = 64, v = x · 537.6 / 64 = x · 8.4.
    x = torch.tensor(
        [
            [5.0, 1.0, 2.0, -2.6] + [0.0] * 12,
            [0.7, 0.35, -0.2, 0.1, 0.02] + [0.0] * 11,
        ]
    )
    q = nvfp4.quantize(x)
    s_enc = torch.tensor(2688.0) / torch.tensor(5.0)
    assert s_enc.item() == torch.tensor(537.6).item()
    assert q.amax.item() == 5.0
    assert q.decode_scale.item() == (1 / s_enc).item()
    assert q.block_scales.dtype == E4M3
    assert q.block_scales.float().tolist() == [[448.0], [64.0]]
    # A: 6, 1.2 -> 1, 2.4 -> 2, -3.12 -> -3.
    # B: 5.88 -> 6, 2.94 -> 3, -1.68 -> -1.5, 0.84 -> 1, 0.168 -> 0.
    assert q.values[0, :4].tolist() == [6.0, 1.0, 2.0, -3.0]
    assert q.values[1, :5].tolist() == [6.0, 3.0, -1.5, 1.0, 0.0]
    expected = torch.tensor([[448.0], [64.0]]) * q.values * q.decode_scale
    assert torch.equal(nvfp4.dequantize(q), expected)


def test_all_zero_block_in_a_nonzero_tensor():
    x = torch.cat([torch.randn(1, 16), torch.zeros(1, 16)])
    q = nvfp4.quantize(x)
    assert q.block_scales[1].float().item() == 0.0
    assert torch.equal(q.values[1], torch.zeros(16))
    assert torch.equal(nvfp4.dequantize(q)[1], torch.zeros(16))


@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
def test_all_zero_tensor_uses_unit_global_scale(rounding):
    q = nvfp4.quantize(torch.zeros(2, 32), rounding=rounding)
    assert q.amax.item() == 0.0
    assert q.decode_scale.item() == 1.0
    assert torch.equal(q.block_scales.float(), torch.zeros(2, 2))
    assert torch.equal(nvfp4.dequantize(q), torch.zeros(2, 32))


def test_tiny_blocks_flush_to_zero():
    # At unit global scale dec_b = e4m3(block_amax / 6). E4M3's smallest
    # subnormal is 2^-9, so block_amax / 6 = 2^-10 is a tie that rounds to the
    # even 0: the block decodes to zero. Its encode multiplier is FLT_MAX, so
    # its non-zero values saturate at ±6 (zeros stay 0); all decode to 0.
    tie = 6 * 2.0**-10
    above = up(tie)
    q = nvfp4.quantize(unit_scale_tensor([[tie, -tie / 3, 0.0], [above, above / 2]]))
    assert q.block_scales[1].float().item() == 0.0
    assert q.values[1, :3].tolist() == [6.0, -6.0, 0.0]
    assert torch.equal(nvfp4.dequantize(q)[1], torch.zeros(16))
    # Just above the tie: dec_b = 2^-9, v = x · 2^9 = 3.0000002 -> 3, 1.5 -> 1.5.
    assert q.block_scales[2].float().item() == 2.0**-9
    assert q.values[2, :2].tolist() == [3.0, 1.5]
    assert nvfp4.dequantize(q)[2, :2].tolist() == [3 * 2.0**-9, 1.5 * 2.0**-9]


def test_negative_zero_keeps_its_sign():
    values = quantize_unit_scale([-0.0, -0.1, -0.25, 0.0, 0.1])
    assert values.tolist() == [0.0] * 5
    assert torch.signbit(values).tolist() == [True, True, True, False, False]
    x = unit_scale_tensor([[6.0, -0.0, -0.1]])
    x_hat = nvfp4.dequantize(nvfp4.quantize(x))
    assert torch.signbit(x_hat[1, 1:3]).tolist() == [True, True]


def test_2d_blocks_of_a_matrix_and_its_transpose_are_the_same_numbers():
    w = torch.randn(32, 48)
    q, q_t = nvfp4.quantize(w, tile=(16, 16)), nvfp4.quantize(w.T, tile=(16, 16))
    assert q.block_scales.shape == (2, 3)
    assert torch.equal(q.values, q_t.values.T)
    assert torch.equal(q.block_scales.float(), q_t.block_scales.float().T)
    assert torch.equal(nvfp4.dequantize(q), nvfp4.dequantize(q_t).T)


def test_2d_block_scale_is_one_amax_per_tile():
    w = torch.randn(32, 32)
    q = nvfp4.quantize(w, tile=(16, 16))
    s_enc = torch.tensor(2688.0) / w.abs().max()  # not 2688.0 / t: torch multiplies by 1/t
    multiplier = s_enc * torch.tensor(1 / 6, dtype=torch.float32)
    for i in range(2):
        for j in range(2):
            tile_amax = w[16 * i : 16 * (i + 1), 16 * j : 16 * (j + 1)].abs().max()
            assert q.block_scales[i, j] == (tile_amax * multiplier).to(E4M3)


def test_leading_dimensions_are_kept():
    x = torch.randn(3, 2, 32)
    q = nvfp4.quantize(x)
    assert q.values.shape == (3, 2, 32) and q.block_scales.shape == (3, 2, 2)
    assert nvfp4.dequantize(q).shape == (3, 2, 32)
    q2 = nvfp4.quantize(torch.randn(2, 32, 16), tile=(16, 16))
    assert q2.block_scales.shape == (2, 2, 1)
    assert nvfp4.dequantize(q2).shape == (2, 32, 16)


def test_rht_quantizes_the_bf16_rotated_tensor():
    x = torch.randn(4, 64) * torch.logspace(-2, 2, 64)
    q = nvfp4.quantize(x, rht=True)
    rotated = random_hadamard_transform(x)
    q_ref = nvfp4.quantize(rotated)
    assert q.rht and not q_ref.rht
    assert q.amax == rotated.abs().max().float()
    assert torch.equal(q.values, q_ref.values)
    assert torch.equal(q.block_scales.float(), q_ref.block_scales.float())
    assert torch.equal(nvfp4.dequantize(q), nvfp4.dequantize(q_ref))


def test_amax_reduce_sets_the_global_scale():
    x = torch.randn(2, 32)
    q = nvfp4.quantize(x, amax_reduce=lambda amax: torch.tensor(UNIT_SCALE_AMAX))
    assert q.amax.item() == UNIT_SCALE_AMAX and q.decode_scale.item() == 1.0


def grid_rounding(v: torch.Tensor) -> torch.Tensor:
    """E2M1 round-to-nearest-even by definition: the nearest grid value in float64, a
    tie going to the even code (mantissa bit 0: magnitude index even)."""
    grid = torch.tensor(nvfp4.E2M1_MAGNITUDES, dtype=torch.float64)
    magnitude = v.double().abs().clamp(max=6.0)
    distance = (magnitude[:, None] - grid).abs()
    nearest = distance.min(dim=1, keepdim=True).values
    candidates = distance == nearest
    # among the (at most two) nearest, prefer the even index
    even = candidates & (torch.arange(8) % 2 == 0)
    index = torch.where(even.any(1), even.int().argmax(1), candidates.int().argmax(1))
    return torch.copysign(grid[index], v.double()).float()


def test_round_to_e2m1_matches_the_grid_definition_on_a_dense_sample():
    # Every 4099th float32 in [0, 8), the boundaries and their neighbours, both signs.
    sample = torch.arange(0, 0x41000000, 4099, dtype=torch.int32).view(torch.float32)
    edges = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 1.0, 2.0, 4.0, 6.0, 8.0])
    around = [torch.nextafter(edges, edges.new_full((), d)) for d in (math.inf, -math.inf)]
    v = torch.cat([sample, edges, *around])
    v = torch.cat([v, -v])
    rounded = nvfp4.round_to_e2m1(v)
    assert torch.equal(rounded, grid_rounding(v))
    assert torch.equal(torch.signbit(rounded), torch.signbit(v))


def test_quantize_dequantize_is_dequantize_of_quantize():
    x = torch.randn(48, 64) * torch.logspace(-3, 3, 64)
    x[3, :16] = 0.0
    for view in (x, x.T.contiguous().T, x.T):
        for tile, rht in (((1, 16), False), ((16, 16), False), ((1, 16), True)):
            for rounding in ("rne", "stochastic"):
                kwargs = dict(tile=tile, rounding=rounding, rht=rht)
                expected = nvfp4.dequantize(
                    nvfp4.quantize(view, generator=torch.Generator().manual_seed(3), **kwargs))
                got = nvfp4.quantize_dequantize(
                    view, generator=torch.Generator().manual_seed(3), **kwargs)
                assert torch.equal(got, expected)
                assert torch.equal(torch.signbit(got), torch.signbit(expected))


@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
@pytest.mark.parametrize("tile", [(1, 16), (16, 16)])
def test_a_transposed_view_quantizes_as_its_contiguous_copy(tile, rounding):
    # The view is quantized where it lies (blocks down the columns of the memory);
    # the random bits still follow the logical element order.
    t = torch.randn(64, 48).bfloat16().T
    assert not t.is_contiguous()
    view, copy = (nvfp4.quantize(u, tile=tile, rounding=rounding,
                                 generator=torch.Generator().manual_seed(5))
                  for u in (t, t.contiguous()))
    assert torch.equal(view.values, copy.values)
    assert torch.equal(view.block_scales.float(), copy.block_scales.float())
    assert view.amax == copy.amax and view.decode_scale == copy.decode_scale


@pytest.mark.parametrize("tile", [(1, 16), (16, 16)])
def test_chunked_passes_give_the_one_chunk_result(monkeypatch, tile):
    x = torch.randn(96, 64) * torch.logspace(-2, 2, 64)
    results = []
    for chunk in (1 << 20, 512, 64):  # one chunk, several, and one tile row per chunk
        monkeypatch.setattr(nvfp4, "_CPU_CHUNK", chunk)
        for view in (x, x.T):
            q = nvfp4.quantize(view, tile=tile, rounding="stochastic",
                               generator=torch.Generator().manual_seed(0))
            results.append((view is x, q))
    for is_x, q in results:
        reference = next(r for same, r in results if same == is_x)
        assert torch.equal(q.values, reference.values)
        assert torch.equal(q.block_scales.float(), reference.block_scales.float())


def test_random_bytes_use_all_eight_bytes_of_each_draw():
    # A draw over [0, 2^63) would leave every eighth byte below 128.
    r = nvfp4.random_bytes((4096, 16), torch.Generator().manual_seed(0))
    assert r.dtype == torch.uint8 and r.shape == (4096, 16)
    for position in range(8):
        high = (r.view(-1, 8)[:, position] >= 128).double().mean().item()
        assert abs(high - 0.5) < 5 * 0.5 / math.sqrt(r.numel() / 8)
    again = nvfp4.random_bytes((4096, 16), torch.Generator().manual_seed(0))
    assert torch.equal(r, again)


# Stochastic rounding.
#
# Between grid neighbours lo < hi = lo + step, one SR draw q is a Bernoulli
# choice, so Var(q) = step² p (1 - p) <= step² / 4 and the mean of n draws has
# standard deviation <= step / (2 sqrt(n)). With 8 bits q rounds away from
# zero with probability floor(256 f) / 256 (f = (|v| - lo) / step), so the
# mean is exact on the 1/256 sub-grid and biased toward zero by < step / 256
# elsewhere. Tolerance: that bias plus 5 standard deviations.

SR_CASES = [  # (v, lo, step)
    (0.0 + 77 / 256 * 0.5, 0.0, 0.5),
    (1.5 + 200 / 256 * 0.5, 1.5, 0.5),  # rounds up across a binade edge to 2
    (3.0 + 3 / 256 * 1.0, 3.0, 1.0),  # up to 4
    (4.0 + 129 / 256 * 2.0, 4.0, 2.0),
    (2.0 + 128 / 256 * 1.0, 2.0, 1.0),  # midpoint: SR is not RNE
]


@pytest.mark.parametrize("v, lo, step", SR_CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sr_over_all_256_bit_patterns_has_exact_mean(v, lo, step, sign):
    r = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q = nvfp4.stochastic_round_to_e2m1(torch.full((256,), sign * v), r)
    assert set(q.abs().tolist()) <= {lo, lo + step}
    assert q.double().mean().item() == sign * v


def test_sr_is_the_reference_formula_for_every_bit_pattern():
    # The formula as the reference writes it, in float32 operations.
    def step(m):
        return torch.where(m < 2, 0.5, torch.where(m < 4, 1.0, 2.0))

    v = torch.tensor([0.0, 0.1, 0.3, 0.49, 0.5, 0.9, 1.2, 1.99, 2.0, 2.7, 3.99, 4.0, 5.3,
                      5.99, 6.0, 6.5, 100.0, 1e-30])
    v = torch.cat([v, -v])
    r = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vv, rr = v[:, None].expand(-1, 256), r[None, :].expand(v.numel(), -1)
    t = vv.abs() + rr.float() / 256 * step(vv.abs())
    expected = torch.copysign(torch.clamp(torch.floor(t / step(t)) * step(t), max=6.0), vv)
    got = nvfp4.stochastic_round_to_e2m1(vv, rr)
    assert torch.equal(got, expected)
    assert torch.equal(torch.signbit(got), torch.signbit(expected))


def test_sr_off_sub_grid_mean_is_floor_formula():
    v, step = 0.3, 0.5  # f = 0.6, floor(256 · 0.6) = 153 of 256 patterns round up
    r = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q = nvfp4.stochastic_round_to_e2m1(torch.full((256,), v), r)
    assert q.double().mean().item() == 153 / 256 * step


def test_sr_saturates_and_keeps_signed_zero():
    r = torch.tensor([0, 255, 255, 0, 255], dtype=torch.uint8)
    q = nvfp4.stochastic_round_to_e2m1(torch.tensor([6.0, 6.0, 7.5, -0.0, math.inf]), r)
    assert q.tolist() == [6.0, 6.0, 6.0, 0.0, 6.0]
    assert torch.signbit(q).tolist() == [False, False, False, True, False]


@pytest.mark.parametrize("v, lo, step", SR_CASES + [(0.3, 0.0, 0.5), (4.9, 4.0, 2.0)])
def test_sr_quantize_is_unbiased(v, lo, step):
    n_rows = 1024  # 15 draws per row at unit scale
    q = nvfp4.quantize(
        unit_scale_tensor([[6.0] + [v] * 15] * n_rows),
        rounding="stochastic",
        generator=torch.Generator().manual_seed(0),
    )
    draws = q.values[1:, 1:]
    n = draws.numel()
    tolerance = step / 256 + 5 * step / (2 * math.sqrt(n))
    assert abs(draws.double().mean().item() - v) <= tolerance
    assert q.values[0, 0].item() == 6.0 and torch.all(q.values[1:, 0] == 6.0)


def test_sr_seeded_generator_is_reproducible():
    x = torch.randn(8, 64)

    def draw(seed):
        return nvfp4.quantize(
            x, rounding="stochastic", generator=torch.Generator().manual_seed(seed)
        ).values

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    generator = torch.Generator().manual_seed(1)
    first = nvfp4.quantize(x, rounding="stochastic", generator=generator).values
    second = nvfp4.quantize(x, rounding="stochastic", generator=generator).values
    assert torch.equal(first, draw(1)) and not torch.equal(first, second)


def test_sr_leaves_scales_round_to_nearest():
    x = torch.randn(8, 64)
    sr = nvfp4.quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    rne = nvfp4.quantize(x)
    assert torch.equal(sr.block_scales.float(), rne.block_scales.float())
    assert sr.decode_scale == rne.decode_scale


# Codes and packing.


def test_code_table():
    magnitudes = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    values = nvfp4.e2m1_values(torch.arange(16, dtype=torch.int32).to(torch.uint8))
    assert values.tolist() == magnitudes + [-m for m in magnitudes]
    assert torch.signbit(values).tolist() == [False] * 8 + [True] * 8


def test_pack_round_trip_is_exact():
    values = nvfp4.quantize(torch.randn(4, 6, 32)).values
    values[0, 0, :4] = torch.tensor([-0.0, 0.0, -6.0, 6.0])
    codes = nvfp4.e2m1_codes(values)
    packed = nvfp4.pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (4, 6, 16)
    unpacked = nvfp4.unpack_codes(packed)
    assert torch.equal(unpacked, codes)
    restored = nvfp4.e2m1_values(unpacked)
    assert torch.equal(restored, values)
    assert torch.equal(torch.signbit(restored), torch.signbit(values))


def test_pack_layout_puts_the_even_element_in_the_low_nibble():
    codes = torch.tensor([0x1, 0x2, 0xF, 0x8], dtype=torch.uint8)
    assert nvfp4.pack_codes(codes).tolist() == [0x21, 0x8F]


def test_codes_reject_values_off_the_grid():
    with pytest.raises(ValueError, match="E2M1 grid"):
        nvfp4.e2m1_codes(torch.tensor([0.0, 0.7]))


# Argument checks.


def test_last_dimension_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match=r"\(4, 20\)"):
        nvfp4.quantize(torch.zeros(4, 20))


def test_2d_tiles_need_rows_in_multiples_of_16():
    with pytest.raises(ValueError, match=r"\(20, 32\)"):
        nvfp4.quantize(torch.zeros(20, 32), tile=(16, 16))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile": (1, 32)}, "tile"),
        ({"rounding": "nearest"}, "rounding"),
        ({"tile": (16, 16), "rht": True}, "rht"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nvfp4.quantize(torch.zeros(16, 32), **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("tile, rht", [((1, 16), False), ((16, 16), False), ((1, 16), True)])
def test_cuda_matches_cpu_bit_for_bit(tile, rht):
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 128)
    source = x
    if rht:
        # The rotation is a float32 GEMM whose summation order is the BLAS library's: the
        # devices differ by at most the float32 error bound of a 16-term dot product
        # (16 u sum |x_i h_i|, which covers cancellation) plus one BF16 step from rounding.
        # The quantizer after it must agree bit for bit.
        on_cuda = random_hadamard_transform(x.cuda()).cpu().float()
        on_cpu = random_hadamard_transform(x).float()
        dot_error = 16 * 2.0**-24 * (x.abs().reshape(-1, 16) @ rht_matrix().abs()).reshape(x.shape)
        step = torch.finfo(torch.bfloat16).eps * on_cpu.abs()
        assert ((on_cuda - on_cpu).abs() <= step + 2 * dot_error).all()
        source = on_cuda
    cpu = nvfp4.quantize(source, tile=tile)
    gpu = nvfp4.quantize(x.cuda(), tile=tile, rht=rht)
    assert torch.equal(gpu.values.cpu(), cpu.values)
    assert torch.equal(gpu.block_scales.cpu().float(), cpu.block_scales.float())
    assert torch.equal(gpu.decode_scale.cpu(), cpu.decode_scale)


@pytest.mark.gpu
def test_cuda_stochastic_rounding_matches_cpu_for_the_same_bits():
    v = torch.linspace(-7, 7, 4096)
    bits = torch.randint(256, v.shape, generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    on_cuda = nvfp4.stochastic_round_to_e2m1(v.cuda(), bits.cuda()).cpu()
    assert torch.equal(on_cuda, nvfp4.stochastic_round_to_e2m1(v, bits))
