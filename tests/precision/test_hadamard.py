"""The 16-point random Hadamard transform, checked against its definition."""

import pytest
import torch

from nemotron_train.precision.hadamard import (
    RHT_SIGNS,
    random_hadamard_transform,
    rht_matrix,
    sylvester_hadamard,
)

REFERENCE_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def test_sign_vector_is_the_reference_one():
    assert RHT_SIGNS == REFERENCE_SIGNS


def test_sylvester_matrix_entries():
    # Sylvester's construction gives H[i, j] = (-1)^popcount(i & j).
    h = sylvester_hadamard(16)
    expected = torch.tensor(
        [[(-1.0) ** bin(i & j).count("1") for j in range(16)] for i in range(16)]
    )
    assert torch.equal(h, expected)


def test_rht_matrix_is_signed_scaled_hadamard():
    h = sylvester_hadamard(16)
    expected = torch.tensor(
        [[REFERENCE_SIGNS[i] * h[i, j].item() / 4 for j in range(16)] for i in range(16)]
    )
    assert torch.equal(rht_matrix(), expected)


def test_rht_matrix_is_orthogonal():
    # Entries are ±1/4, so M Mᵀ is a sum of ±1/16 terms: exact in float32.
    m = rht_matrix()
    assert torch.equal(m @ m.T, torch.eye(16))
    assert torch.equal(m.T @ m, torch.eye(16))


def test_transform_rotates_each_chunk_and_rounds_to_bf16():
    x = torch.randn(3, 64)
    expected = torch.cat([x[:, i : i + 16] @ rht_matrix() for i in range(0, 64, 16)], dim=1)
    out = random_hadamard_transform(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))


@pytest.mark.parametrize("tokens", [48, 3 * 65536 + 32])  # one chunk; several, the last short
def test_a_transposed_view_is_rotated_in_place_as_its_copy(tokens):
    # The wgrad operands are tokens.T: rotated where they lie, in chunks of 16-row
    # groups, and returned as transposed views.
    x = torch.randn(tokens, 16).bfloat16()
    out = random_hadamard_transform(x.T)
    assert out.shape == (16, tokens) and out.T.is_contiguous()
    assert torch.equal(out, random_hadamard_transform(x.T.contiguous()))


def test_rotating_both_operands_leaves_the_product_unchanged():
    # Integer entries in [-8, 8]: rotated values are multiples of 1/4 below 64
    # in magnitude, exact in BF16, and both products are exact in float32.
    a = torch.randint(-8, 9, (5, 48)).float()
    b = torch.randint(-8, 9, (7, 48)).float()
    rotated = random_hadamard_transform(a).float() @ random_hadamard_transform(b).float().T
    assert torch.equal(rotated, a @ b.T)


def test_non_multiple_of_16_raises_with_shape():
    with pytest.raises(ValueError, match=r"\(2, 24\)"):
        random_hadamard_transform(torch.zeros(2, 24))


def test_sylvester_size_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        sylvester_hadamard(12)
