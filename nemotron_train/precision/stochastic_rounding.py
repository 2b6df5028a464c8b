"""The random bits of NVFP4 stochastic rounding: one seeded stream per process, its own.

Drawing them from torch's default generator would tie the rounding to every other draw in
the process (and to whatever re-seeds it); a generator of its own gives the rounding a
stream that a checkpoint can carry and a resumed run can continue bit for bit
(training/rng_state.py saves it). Each rank seeds its stream from the run's seed and its
global rank, so ranks that quantize different shards or data draw different bits.
"""

import torch

from nemotron_train.precision.parallel_linear import QuantizedGemmMixin

# Keeps the stream's seeds apart from the seeds Megatron-Core derives from the run's seed
# for its tracker (seed + 2718 + TP rank, + 100 x PP rank, ...).
_SEED_OFFSET = 7_500_000
_RANK_STRIDE = 10_007


class StochasticRoundingStream:
    """A seeded generator on the model's device, handed to every emulated NVFP4 linear."""

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(_SEED_OFFSET + seed + _RANK_STRIDE * rank)

    def get_state(self) -> torch.Tensor:
        """The generator's state (a CPU byte tensor, also for a CUDA generator)."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def attach_rounding_stream(model, stream: StochasticRoundingStream) -> int:
    """Give every quantized linear of `model` the stream's generator; return how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, QuantizedGemmMixin):
            module.rounding_generator = stream.generator
            count += 1
    return count
