"""Quantized linear layers against the recipe's GEMM table, written out with quantize/dequantize."""

import dataclasses
import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nemotron_train.precision import mxfp8, nvfp4
from nemotron_train.precision.hadamard import rht_matrix
from nemotron_train.precision.quantized_linear import (
    FlushCounter,
    NVFP4Techniques,
    mxfp8_linear,
    nvfp4_linear,
)

ALL_RECIPES = [
    NVFP4Techniques(rht=rht, stochastic_rounding=sr, weight_2d=w2d)
    for rht, sr, w2d in itertools.product([True, False], repeat=3)
]


def nvfp4_hat(t, **kwargs):
    return nvfp4.dequantize(nvfp4.quantize(t, **kwargs))


def mxfp8_hat(t):
    return mxfp8.dequantize(mxfp8.quantize(t))


def example(seq=4, batch=8, d_in=32, d_out=48, dtype=torch.bfloat16):
    """(x, weight, grad_output) with 3-D activations, in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(seq, batch, d_in, generator=g).to(dtype)
    w = (torch.randn(d_out, d_in, generator=g) * 0.1).to(dtype)
    dy = (torch.randn(seq, batch, d_out, generator=g) * 1e-3).to(dtype)
    return x, w, dy


def run_nvfp4(recipe, x, w, dy, seed=0, flush_counter=None):
    """(y, grad_x, grad_w) of nvfp4_linear."""
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    generator = torch.Generator().manual_seed(seed)
    y = nvfp4_linear(x, w, recipe, generator=generator, flush_counter=flush_counter)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def nvfp4_by_hand(recipe, x, w, dy, seed=0):
    """The recipe's three GEMMs on dequantized operands, each quantized along its reduction dim."""
    generator = torch.Generator().manual_seed(seed)
    rounding = "stochastic" if recipe.stochastic_rounding else "rne"
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    w_tile = (16, 16) if recipe.weight_2d else (1, 16)

    x_hat, w_hat = nvfp4_hat(x2), nvfp4_hat(w, tile=w_tile)
    y = (x_hat @ w_hat.T).to(x.dtype).reshape(dy.shape)

    dy_hat = nvfp4_hat(dy2, rounding=rounding, generator=generator)
    w_t_hat = nvfp4_hat(w.T, tile=w_tile)  # with 2D tiles: w_hat.T, the same numbers
    grad_x = (dy_hat @ w_t_hat.T).to(x.dtype).reshape(x.shape)

    dy_t_hat = nvfp4_hat(dy2.T, rounding=rounding, rht=recipe.rht, generator=generator)
    x_t_hat = nvfp4_hat(x2.T, rht=recipe.rht)
    grad_w = (dy_t_hat @ x_t_hat.T).to(w.dtype)
    return y, grad_x, grad_w


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=repr)
def test_nvfp4_gemms_match_the_recipe_table(recipe):
    x, w, dy = example()
    for got, expected in zip(run_nvfp4(recipe, x, w, dy), nvfp4_by_hand(recipe, x, w, dy)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_each_switch_changes_only_its_operands():
    x, w, dy = example()
    base = NVFP4Techniques()
    y, grad_x, grad_w = run_nvfp4(base, x, w, dy)

    # RHT touches only the wgrad operands.
    y2, grad_x2, grad_w2 = run_nvfp4(dataclasses.replace(base, rht=False), x, w, dy)
    assert torch.equal(y2, y) and torch.equal(grad_x2, grad_x)
    assert not torch.equal(grad_w2, grad_w)

    # Stochastic rounding touches only dY, which feeds dgrad and wgrad.
    y2, grad_x2, grad_w2 = run_nvfp4(dataclasses.replace(base, stochastic_rounding=False), x, w, dy)
    assert torch.equal(y2, y)
    assert not torch.equal(grad_x2, grad_x) and not torch.equal(grad_w2, grad_w)

    # 2D weight blocks touch only W, which feeds fprop and dgrad.
    y2, grad_x2, grad_w2 = run_nvfp4(dataclasses.replace(base, weight_2d=False), x, w, dy)
    assert torch.equal(grad_w2, grad_w)
    assert not torch.equal(y2, y) and not torch.equal(grad_x2, grad_x)


def test_rht_wgrad_equals_plain_wgrad_when_quantization_is_exact():
    # Every 16-token chunk of Xᵀ and dYᵀ is a · M[:, k] for the rotation M:
    # sixteen entries of magnitude |a|/4 (one block amax, so each quantizes to
    # ±6 · dec_b · S_dec = the entry, up to float32 rounding), rotating to
    # a · e_k (one non-zero per block, again exact). With powers of two for a,
    # every block scale is exact in E4M3, so both recipes compute dYᵀ X up to
    # float32 rounding. Stochastic rounding is off: it can round 6 - 1 ulp down to 4.
    g = torch.Generator().manual_seed(0)
    m = rht_matrix()

    def chunked_operand(rows, tokens):
        k = torch.randint(16, (rows, tokens // 16), generator=g)
        a = 2.0 ** torch.randint(-2, 3, (rows, tokens // 16), generator=g).float()
        a = a * torch.where(torch.rand(rows, tokens // 16, generator=g) < 0.5, -1.0, 1.0)
        return (a[..., None] * m.T[k]).flatten(1)  # m.T[k] is column k of M

    x_t, dy_t = chunked_operand(16, 32), chunked_operand(32, 32)
    x, dy = x_t.T.contiguous(), dy_t.T.contiguous()
    w = torch.randn(32, 16, generator=g)
    exact = (dy.double().T @ x.double()).float()
    for rht in (True, False):
        recipe = NVFP4Techniques(rht=rht, stochastic_rounding=False)
        _, _, grad_w = run_nvfp4(recipe, x, w, dy)
        torch.testing.assert_close(grad_w, exact, rtol=1e-6, atol=1e-6)


def test_shapes_and_dtypes_of_outputs_and_gradients():
    x, w, dy = example(seq=2, batch=8, d_in=64, d_out=32)
    w = w.float()
    y, grad_x, grad_w = run_nvfp4(NVFP4Techniques(), x, w, dy)
    assert y.shape == (2, 8, 32) and y.dtype == torch.bfloat16
    assert grad_x.shape == x.shape and grad_x.dtype == torch.bfloat16
    assert grad_w.shape == w.shape and grad_w.dtype == torch.float32
    assert torch.isfinite(grad_x.float()).all() and torch.isfinite(grad_w).all()


def test_input_without_grad_gives_weight_grad_only():
    x, w, dy = example()
    w = w.clone().requires_grad_()
    nvfp4_linear(x, w).backward(dy)
    assert w.grad is not None and w.grad.shape == w.shape


def test_token_count_must_be_a_multiple_of_16_for_wgrad():
    x, w, dy = example(seq=3, batch=3)
    w = w.clone().requires_grad_()
    y = nvfp4_linear(x, w)
    with pytest.raises(ValueError, match=r"\(48, 9\)"):
        y.backward(dy)


def test_flush_counter_counts_nonzero_inputs_decoded_as_zero():
    # amax 6·448 gives unit scales, and a row led by 6 keeps v = x:
    # row 1: 0.25, 0.2 and -0.25 round to zero, 0.3 to 0.5 (3 of 5 flushed);
    # row 2: block amax 6 · 2^-10 makes dec_b round to 0 (16 of 16 flushed);
    # row 0: the amax itself (0 of 1).  Total 19 of 22.
    x = torch.zeros(16, 16)
    x[0, 0] = 6 * 448.0
    x[1, :5] = torch.tensor([6.0, 0.25, 0.2, 0.3, -0.25])
    x[2] = 6 * 2.0**-10
    w = torch.eye(16)  # every non-zero is its tile's amax: nothing flushed
    dy = torch.randn(16, 16)
    counter = FlushCounter()
    y = nvfp4_linear(x.requires_grad_(), w.requires_grad_(), flush_counter=counter)
    assert counter.fractions() == {"x": 19 / 22, "weight": 0.0}
    y.backward(dy)
    assert set(counter.fractions()) == {"x", "weight", "grad_output", "grad_output_t", "x_t"}

    counter_1d = FlushCounter()
    run_nvfp4(NVFP4Techniques(weight_2d=False), *example(), flush_counter=counter_1d)
    assert "weight_t" in counter_1d.fractions()


def test_mxfp8_gemms_quantize_every_copy_separately():
    x, w, dy = example(seq=4, batch=8, d_in=64, d_out=32)
    x_leaf, w_leaf = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = mxfp8_linear(x_leaf, w_leaf)
    y.backward(dy)

    x2, dy2 = x.reshape(-1, 64), dy.reshape(-1, 32)
    assert torch.equal(y, (mxfp8_hat(x2) @ mxfp8_hat(w).T).to(x.dtype).reshape(4, 8, 32))
    grad_x = (mxfp8_hat(dy2) @ mxfp8_hat(w.T).T).to(x.dtype).reshape(x.shape)
    assert torch.equal(x_leaf.grad, grad_x)
    assert torch.equal(w_leaf.grad, (mxfp8_hat(dy2.T) @ mxfp8_hat(x2.T).T).to(w.dtype))


def _column_parallel_worker(rank: int, world_size: int, init_file: str) -> None:
    # One intra-op thread: OpenMP's pool is not safe to use in a forked child.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 32, generator=g)
        # Different scales per shard, so each shard's own amax would differ.
        w = torch.randn(64, 32, generator=g) * torch.linspace(0.1, 10, 64)[:, None]
        dy = torch.randn(32, 64, generator=g)
        recipe = NVFP4Techniques(stochastic_rounding=False)
        y_full, grad_x_full, grad_w_full = run_nvfp4(recipe, x, w, dy)

        shard = slice(32 * rank, 32 * (rank + 1))
        x_local, w_local = x.clone().requires_grad_(), w[shard].clone().requires_grad_()
        y = nvfp4_linear(x_local, w_local, recipe, tp_group=dist.group.WORLD)
        y.backward(dy[:, shard])
        grad_x = x_local.grad.clone()
        dist.all_reduce(grad_x)

        torch.testing.assert_close(y.detach(), y_full[:, shard], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(w_local.grad, grad_w_full[shard], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_x, grad_x_full, rtol=1e-5, atol=1e-5)
        if rank == 0:
            # Rank 1 holds the largest rows; without the reduction rank 0's
            # shard would be scaled by its own, smaller amax.
            y_unreduced = nvfp4_linear(x, w[shard], recipe)
            assert (y_unreduced - y_full[:, shard]).abs().max() > 1e-3
    finally:
        dist.destroy_process_group()


# Forked, as torch's DataLoader workers are, rather than spawned: a spawned
# child spends seconds re-importing torch.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_tp_group_reduces_amax_so_shards_quantize_like_the_full_tensor(tmp_path):
    mp.start_processes(
        _column_parallel_worker,
        args=(2, str(tmp_path / "init")),
        nprocs=2,
        start_method="fork",
    )


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, w, dy = example()
    recipe = NVFP4Techniques(stochastic_rounding=False)
    cpu = run_nvfp4(recipe, x, w, dy)
    x_gpu, w_gpu = x.cuda().requires_grad_(), w.cuda().requires_grad_()
    y = nvfp4_linear(x_gpu, w_gpu, recipe)
    y.backward(dy.cuda())
    for got, expected in zip((y.detach(), x_gpu.grad, w_gpu.grad), cpu):
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-2, atol=1e-5)
