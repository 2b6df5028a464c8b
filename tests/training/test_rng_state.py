"""Every random stream a step uses comes back from a capture exactly, and NVFP4 stochastic
rounding draws from a stream of its own (so re-seeding torch cannot move it)."""

import random

import numpy as np
import torch
from megatron.core import tensor_parallel

from nemotron_train.precision.quantized_linear import NVFP4Techniques, nvfp4_linear
from nemotron_train.precision.stochastic_rounding import StochasticRoundingStream
from nemotron_train.training.rng_state import (
    RngLayout,
    capture_rng_state,
    restorable,
    restore_rng_state,
)


def draw_everything(stream: StochasticRoundingStream) -> list:
    """One draw from each stream, the tracker's through its fork as dropout draws."""
    with tensor_parallel.get_cuda_rng_tracker().fork():
        tracker = torch.rand(3)
    return [random.random(), float(np.random.rand()), torch.rand(3), tracker,
            torch.randint(256, (4,), generator=stream.generator)]


def assert_draws_equal(a: list, b: list):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y) if torch.is_tensor(x) else x == y


def test_restored_streams_repeat_the_same_draws(single_process):
    stream = StochasticRoundingStream(seed=1234, rank=0, device=torch.device("cpu"))
    draw_everything(stream)  # move every stream off its seed
    saved = capture_rng_state(stream)
    first = draw_everything(stream)
    torch.manual_seed(99)  # and scramble them all
    random.seed(99)
    np.random.seed(99)
    tensor_parallel.model_parallel_cuda_manual_seed(99)
    stream.generator.manual_seed(99)
    restore_rng_state(saved, stream)
    assert_draws_equal(draw_everything(stream), first)


def quantized_backward(stream: StochasticRoundingStream) -> torch.Tensor:
    """dW of an NVFP4 linear: its gradient operands are stochastically rounded."""
    x = torch.linspace(-2, 2, 32 * 16).reshape(32, 16).requires_grad_()
    weight = torch.linspace(-1, 1, 16 * 16).reshape(16, 16).requires_grad_()
    y = nvfp4_linear(x, weight, NVFP4Techniques(stochastic_rounding=True),
                     generator=None if stream is None else stream.generator)
    y.backward(torch.linspace(-3, 3, 32 * 16).reshape(32, 16))
    return weight.grad


def test_stochastic_rounding_draws_from_its_own_stream():
    torch.manual_seed(1)
    first = quantized_backward(StochasticRoundingStream(seed=7, rank=0, device=torch.device("cpu")))
    torch.manual_seed(2)  # torch's default generator moves; the rounding stream does not
    second = quantized_backward(StochasticRoundingStream(seed=7, rank=0, device=torch.device("cpu")))
    assert torch.equal(first, second)
    other_rank = quantized_backward(StochasticRoundingStream(seed=7, rank=1, device=torch.device("cpu")))
    assert not torch.equal(first, other_rank)  # each rank draws its own bits


def test_streams_are_restored_only_into_the_layout_that_saved_them():
    layout = RngLayout(world_size=4, tensor=2, pipeline=1, context=1, expert=2)
    assert restorable(layout.as_dict(), layout)
    assert not restorable({**layout.as_dict(), "tensor": 1}, layout)
    assert not restorable(None, layout)  # a checkpoint from before the streams were saved
