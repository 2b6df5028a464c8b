"""The 16-point random Hadamard transform (RHT) of the NVFP4 recipe.

The recipe rotates both wgrad operands along the token (reduction) dimension,
16 elements at a time: ``chunk @ (diag(s) · H16 / 4)`` with H16 the Sylvester
Hadamard matrix and a fixed sign vector ``s``. The matrix is orthogonal, so
rotating both operands of a GEMM along its reduction dimension leaves the
product unchanged in exact arithmetic, while spreading outliers across the
16 elements that share an NVFP4 block scale.
"""

import torch

RHT_SIZE = 16

# The reference implementation's fixed sign vector: the "random" in RHT is
# drawn once and frozen, so every rank and every step uses the same rotation.
RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def sylvester_hadamard(size: int) -> torch.Tensor:
    """The ``size`` x ``size`` Sylvester Hadamard matrix (entries ±1, float32).

    Built by doubling: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]].
    """
    if size < 1 or size & (size - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {size}")
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def rht_matrix(device: torch.device | str | None = None) -> torch.Tensor:
    """The recipe's rotation ``diag(s) · H16 / 4`` (float32, orthogonal: M Mᵀ = I)."""
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32)
    return (torch.diag(signs) @ sylvester_hadamard(RHT_SIZE) / 4).to(device)


def random_hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Rotate each 16-element chunk of the last dimension of ``x``; returns BF16.

    The product is computed in float32 and rounded to BF16, because the
    reference stores the rotated tensor in BF16 before it takes the amax and
    quantizes. A transposed view (the wgrad operands, ``tokens.T``) is rotated
    where it lies in memory and comes back as a transposed view. Raises
    ``ValueError`` if the last dimension is not a multiple of 16.
    """
    if x.shape[-1] % RHT_SIZE:
        raise ValueError(
            f"random_hadamard_transform: last dimension of shape {tuple(x.shape)} "
            f"must be a multiple of {RHT_SIZE}"
        )
    if x.dim() == 2 and not x.is_contiguous() and x.T.is_contiguous():
        return _rotate_column_chunks(x.T).T
    # One (n/16 x 16) @ (16 x 16) GEMM: a broadcast batched matmul is several times slower on CPU.
    chunks = x.float().reshape(-1, RHT_SIZE)
    rotated = chunks @ rht_matrix(x.device)
    return rotated.reshape(x.shape).to(torch.bfloat16)


def _rotate_column_chunks(data: torch.Tensor) -> torch.Tensor:
    """``random_hadamard_transform(data.T).T`` for a contiguous (m, n) ``data``: each group of
    16 rows ``G`` becomes ``Mᵀ G``, a 16 x 16 by 16 x n GEMM per group, a few groups at a time
    (about 2^20 elements: in cache, and no whole-tensor float32 buffers on the CPU)."""
    rows, cols = data.shape
    matrix_t = rht_matrix(data.device).T
    out = torch.empty(data.shape, dtype=torch.bfloat16, device=data.device)
    step = rows if data.device.type == "cuda" else max(
        RHT_SIZE, (1 << 20) // max(cols, 1) // RHT_SIZE * RHT_SIZE)
    for start in range(0, rows, step):
        groups = data[start : start + step].float().view(-1, RHT_SIZE, cols)
        out[start : start + step].copy_((matrix_t @ groups).view(-1, cols))
    return out
