"""The pretraining sample order: which dataset indices each data-parallel rank reads.

Megatron-Core has no sampler (Megatron-LM keeps its MegatronPretrainingSampler in the
training scripts); this is the same order. The datasets are already shuffled, so samples
are read in index order: micro step m of the whole job covers the
micro_batch_size * data_parallel_size indices starting at
consumed_samples + m * micro_batch_size * data_parallel_size, and rank r takes the r-th
micro_batch_size of them. Resuming with consumed_samples = k (counted over all ranks)
continues exactly where a run that had consumed k samples was.
"""

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

    @property
    def _samples_per_micro_step(self) -> int:
        return self.micro_batch_size * self.data_parallel_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self._samples_per_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        for micro_step in range(len(self)):
            first = (
                self.consumed_samples
                + micro_step * self._samples_per_micro_step
                + self.data_parallel_rank * self.micro_batch_size
            )
            yield list(range(first, first + self.micro_batch_size))
