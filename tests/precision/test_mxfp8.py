"""MXFP8 quantization against scales and elements derived by hand."""

import math

import pytest
import torch

from nemotron_train.precision import mxfp8


def block(amax: float, *rest: float) -> list[float]:
    """A 32-element block: its amax first, then ``rest``, zero-padded."""
    return [amax, *rest] + [0.0] * (31 - len(rest))


def test_hand_built_blocks():
    just_above_2_to_10 = torch.nextafter(torch.tensor(448.0 * 2**10), torch.tensor(math.inf))
    # (block, biased exponent, expected E4M3 elements of the first entries)
    cases = [
        # amax 448: log2(1) = 0, scale 1; 0.3 -> E4M3 step 2^-5 in [0.25, 0.5): 0.3125.
        (block(448.0, 1.0, 0.3, -2.0), 127, [448.0, 1.0, 0.3125, -2.0]),
        # amax 449: log2 just above 0 -> 1, scale 2; 224.5 -> E4M3 step 16: 224.
        (block(449.0, 3.0), 128, [224.0, 1.5]),
        # amax 56 = 448 · 2^-3 exactly: scale 2^-3, the amax maps to 448.
        (block(56.0, -7.0), 124, [448.0, -56.0]),
        # amax 57: log2(57/448) = -2.97 -> -2, scale 1/4; 228 -> 224.
        (block(57.0), 125, [224.0]),
        # all zero: log2(0) = -inf, clamped to the smallest scale 2^-127.
        (block(0.0), 0, [0.0]),
        # amax 448 · 2^-130: the exponent -130 clamps to -127, elements x · 2^127.
        (block(448.0 * 2**-130), 0, [56.0]),
        # amax 3e38: log2(3e38 / 448) = 119.01 -> 120; 3e38 / 2^120 = 225.7 -> 224.
        (block(3e38), 247, [224.0]),
        # amax one ulp above 448 · 2^10: the ratio exceeds 2^10, so the scale is 2^11.
        (block(just_above_2_to_10.item()), 138, [224.0]),
    ]
    q = mxfp8.quantize(torch.tensor([b for b, _, _ in cases]))
    assert q.block_scales.dtype == torch.float8_e8m0fnu
    assert q.values.dtype == torch.float8_e4m3fn
    assert q.block_scales.view(torch.uint8).squeeze(-1).tolist() == [e for _, e, _ in cases]
    assert q.block_scales.float().squeeze(-1).tolist() == [2.0 ** (e - 127) for _, e, _ in cases]
    for row, (_, _, elements) in enumerate(cases):
        assert q.values[row, : len(elements)].float().tolist() == elements


def test_elements_are_bounded_and_finite_over_a_wide_range():
    x = torch.randn(64, 128) * torch.logspace(-30, 30, 128)
    q = mxfp8.quantize(x)
    values = q.values.float()
    assert torch.isfinite(values).all()
    assert values.abs().max().item() <= 448.0
    # The scale rounds up, so each block's amax lands in [224, 448] after rounding.
    block_max = values.abs().unflatten(-1, (-1, 32)).amax(-1)
    assert torch.all((block_max >= 224) & (block_max <= 448))


def test_dequantize_error_is_within_half_an_e4m3_step():
    # E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normal values, and
    # absolute error <= half the subnormal step 2^-9 · scale below 2^-6 · scale.
    x = torch.randn(8, 4, 64)
    q = mxfp8.quantize(x)
    x_hat = mxfp8.dequantize(q)
    assert x_hat.shape == x.shape
    scale = q.block_scales.float().repeat_interleave(32, dim=-1)
    bound = torch.maximum(x.abs() * 2**-4, scale * 2**-10)
    assert torch.all((x_hat - x).abs() <= bound)


def test_negative_zero_keeps_its_sign():
    x = torch.tensor([block(1.0, -0.0, -1e-6)])
    x_hat = mxfp8.dequantize(mxfp8.quantize(x))
    assert x_hat[0, 1:3].tolist() == [0.0, 0.0]
    assert torch.signbit(x_hat[0, 1:3]).tolist() == [True, True]


def test_last_dimension_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match=r"\(2, 48\)"):
        mxfp8.quantize(torch.zeros(2, 48))


@pytest.mark.gpu
def test_cuda_matches_cpu_bit_for_bit():
    x = torch.randn(64, 128) * torch.logspace(-20, 20, 128)
    cpu, gpu = mxfp8.quantize(x), mxfp8.quantize(x.cuda())
    assert torch.equal(gpu.values.cpu().float(), cpu.values.float())
    assert torch.equal(gpu.block_scales.cpu().view(torch.uint8), cpu.block_scales.view(torch.uint8))
