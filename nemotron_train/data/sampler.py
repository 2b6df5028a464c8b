"""The pretraining sample order: which dataset indices each data-parallel rank reads.

The order is Megatron-LM's MegatronPretrainingSampler, which the megatron-core wheel ships
in `megatron.training.datasets.data_samplers` (Megatron-LM's training package, installed
beside `megatron.core`): the datasets are already shuffled, so samples are read in index
order; micro step m of the whole job covers the micro_batch_size * data_parallel_size
indices starting at consumed_samples + m * micro_batch_size * data_parallel_size, and rank
r takes the r-th micro_batch_size of them. Resuming with consumed_samples = k (counted over
all ranks) continues exactly where a run that had consumed k samples was.

What this wrapper adds: ValueErrors naming the bad argument (Megatron-LM asserts), a
len() that counts micro batches (Megatron-LM's counts samples), and an import that leaves
the root logger alone (see _megatron_pretraining_sampler).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class PretrainingBatchSampler:
    """Yields one rank's micro batches of dataset indices (a torch batch_sampler)."""

    total_samples: int
    """Length of the dataset; a trailing partial micro step is dropped."""

    consumed_samples: int
    """Samples consumed by all ranks together before this iterator starts."""

    micro_batch_size: int
    """Samples per micro batch on one rank."""

    data_parallel_rank: int
    """This rank's index among the data-parallel ranks."""

    data_parallel_size: int
    """Number of data-parallel ranks."""

    def __post_init__(self) -> None:
        if self.total_samples < 1:
            raise ValueError(f"total_samples={self.total_samples} is invalid; allowed: >= 1")
        if not 0 <= self.consumed_samples < self.total_samples:
            raise ValueError(
                f"consumed_samples={self.consumed_samples} is invalid; allowed: 0 <= "
                f"consumed_samples < total_samples={self.total_samples} (the dataset is exhausted)"
            )
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} is invalid; allowed: >= 1")
        if self.data_parallel_size < 1:
            raise ValueError(
                f"data_parallel_size={self.data_parallel_size} is invalid; allowed: >= 1"
            )
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ValueError(
                f"data_parallel_rank={self.data_parallel_rank} is invalid; allowed: 0 <= "
                f"data_parallel_rank < data_parallel_size={self.data_parallel_size}"
            )

    def __len__(self) -> int:
        samples_per_micro_step = self.micro_batch_size * self.data_parallel_size
        return (self.total_samples - self.consumed_samples) // samples_per_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        sampler = _megatron_pretraining_sampler()(
            total_samples=self.total_samples,
            consumed_samples=self.consumed_samples,
            micro_batch_size=self.micro_batch_size,
            data_parallel_rank=self.data_parallel_rank,
            data_parallel_size=self.data_parallel_size,
            drop_last=True,
        )
        return iter(sampler)


def _megatron_pretraining_sampler() -> type:
    # Importing megatron.training runs logging.basicConfig(handlers=[a stdout handler],
    # level=INFO) on the root logger (megatron/training/training.py), which would print
    # every library's INFO records in our entry points: undo that.
    handlers, level = list(logging.root.handlers), logging.root.level
    from megatron.training.datasets.data_samplers import MegatronPretrainingSampler

    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)
    return MegatronPretrainingSampler
