"""The run's training data: one blend, or a curriculum of blends switched at fixed steps.

Nemotron 3 pretrains in two phases: a diverse blend for the first 94 % of the tokens, then
a blend weighted towards high-quality sources. Every step trains on the same number of
tokens, so a token fraction is a step fraction: phase k covers the steps up to
ceil(until_fraction_k * max_steps), which puts every switch on a global-batch boundary
and gives every phase at least its share.

Each phase has its own Megatron-Core dataset, built at start-up (so a missing file of a
later phase fails now, not at the switch) for exactly its own samples, with its own seed
(seed + phase - 1, so that a blend repeated in a later phase is not replayed in the same
order). The trainer reads the phases back to back as one stream of
max_steps * global_batch_size samples: the sampler's consumed_samples then locates any
resumed step, before, at or after a switch, and continues exactly.

With mixed sequence lengths (sequence_lengths.py) there is one such stream per length:
each phase's dataset at that length holds exactly the samples of that phase's steps at that
length, and the position in each stream follows from the completed steps alone.
"""

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Subset

from nemotron_train.errors import ConfigError
from nemotron_train.data.config import DataConfig
from nemotron_train.data.datasets import PretrainingDataset, build_data_iterator, build_datasets
from nemotron_train.data.sequence_lengths import SequenceLengthSchedule
from nemotron_train.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DataPhase:
    """One phase of the run's data, in steps numbered from 1 as in metrics.jsonl."""

    number: int
    """1 for the first phase."""
    blend: list[list[Any]] | None
    """[[weight, path_prefix], ...]; None for the stdlib corpus."""
    first_step: int
    """The first step that trains on this phase."""
    last_step: int
    """The last step that trains on this phase (inclusive)."""

    @property
    def steps(self) -> int:
        """How many steps train on this phase."""
        return self.last_step - self.first_step + 1


@dataclass(frozen=True, kw_only=True)
class StepBatches:
    """Where one step's micro batches come from and their shape."""

    iterator: Iterator[dict[str, torch.Tensor]]
    seq_length: int
    micro_batch_size: int


@dataclass(frozen=True, kw_only=True)
class TrainData:
    """What the trainer reads: this rank's batches, the validation set and the phase plan."""

    iterators: dict[int, Iterator[dict[str, torch.Tensor]]]
    """Sequence length -> this rank's micro batches at that length, from the resumed
    position to the end of the run."""
    valid_dataset: PretrainingDataset | None
    """The validation set (from the first phase's blend); None if the split gives it 0."""
    phases: tuple[DataPhase, ...]
    """The phases in training order; one for a plain blend or the stdlib corpus."""
    lengths: SequenceLengthSchedule
    """Which sequence length each step trains at."""
    micro_batch_size: int
    """Sequences per micro batch at the long length."""

    @property
    def iterator(self) -> Iterator[dict[str, torch.Tensor]]:
        """The micro batches at the long length (all of them without mixed lengths)."""
        return self.iterators[self.lengths.long_length]

    def batches_for_step(self, step: int) -> StepBatches:
        """The iterator, sequence length and micro batch size of step `step` (from 1)."""
        length = self.lengths.seq_length(step)
        return StepBatches(iterator=self.iterators[length], seq_length=length,
                           micro_batch_size=self.micro_batch_size * self.lengths.sequences_factor(length))

    @property
    def switch_steps(self) -> tuple[int, ...]:
        """The steps after which the data changes phase: ceil(until_fraction * max_steps)."""
        return tuple(phase.last_step for phase in self.phases[:-1])

    def phase_for_step(self, step: int) -> int:
        """The number of the phase that step `step` (1 to max_steps) trains on."""
        for phase in self.phases:
            if phase.first_step <= step <= phase.last_step:
                return phase.number
        raise ValueError(f"step={step} is outside the run's steps 1 to {self.phases[-1].last_step}")


def plan_data_phases(config: DataConfig, max_steps: int) -> tuple[DataPhase, ...]:
    """The steps of each phase of `config` in a run of `max_steps` steps.

    Raises ConfigError when a phase would get no step (max_steps too small for the
    fractions), naming the until_fraction to change.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} is invalid; allowed: >= 1")
    if config.phases:
        ends = [(phase.blend, phase.until_fraction) for phase in config.phases]
    else:
        ends = [(config.blend or None, 1.0)]
    phases = []
    first_step = 1
    for index, (blend, until_fraction) in enumerate(ends):
        last_step = steps_until(until_fraction, max_steps)
        if last_step < first_step:
            raise ConfigError(
                f"data.phases.{index - 1}.until_fraction",
                ends[index - 1][1],
                f"leaves data.phases.{index} no step of train.max_steps={max_steps} (a phase "
                "ends after ceil(until_fraction * max_steps) steps); lower it or raise "
                "train.max_steps",
            )
        phases.append(
            DataPhase(number=index + 1, blend=blend, first_step=first_step, last_step=last_step)
        )
        first_step = last_step + 1
    return tuple(phases)


def steps_until(fraction: float, max_steps: int) -> int:
    """ceil(fraction * max_steps), computed on the decimal the user wrote.

    In binary floating point 0.1 * 10 is 1.0000000000000000555 and 0.7 * 10 is
    7.000000000000001, whose ceilings would move the switch one step late.
    """
    return math.ceil(Fraction(repr(float(fraction))) * max_steps)


def build_train_data(
    config: DataConfig,
    tokenizer: Tokenizer,
    *,
    seq_length: int,
    seed: int,
    max_steps: int,
    global_batch_size: int,
    micro_batch_size: int,
    valid_samples: int,
    consumed_samples: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    lengths: SequenceLengthSchedule | None = None,
) -> TrainData:
    """Build every phase's datasets and this rank's iterators resumed at `consumed_samples`.

    `consumed_samples` counts samples over all ranks (the checkpoint's value, counted in
    long sequences: completed steps x global_batch_size); `valid_samples` sizes the
    validation set. `lengths` mixes short steps in (None: every step at seq_length). With
    torch.distributed initialized, every rank must call this (see build_datasets). The
    sample order depends on `seed`, `max_steps`, `global_batch_size` and the length mix: a
    resumed run must keep all of them.
    """
    lengths = lengths or SequenceLengthSchedule(long_length=seq_length)
    if lengths.long_length != seq_length:
        raise ValueError(f"lengths.long_length={lengths.long_length} must equal seq_length={seq_length}")
    if consumed_samples % global_batch_size:
        raise ValueError(f"consumed_samples={consumed_samples} is not a whole number of steps of "
                         f"global_batch_size={global_batch_size}")
    completed_steps = consumed_samples // global_batch_size
    phases = plan_data_phases(config, max_steps)
    iterators = {}
    valid_dataset = None
    for length in lengths.lengths:
        factor = lengths.sequences_factor(length)
        phase_datasets = []
        for phase in phases:
            samples = lengths.steps_at(length, phase.first_step, phase.last_step) * global_batch_size * factor
            if samples == 0:
                continue
            is_first = phase.number == 1 and length == seq_length
            datasets = build_datasets(
                _phase_config(config, phase),
                tokenizer,
                seq_length=length,
                seed=seed + phase.number - 1,
                train_samples=samples,
                # Only the first phase's validation set (at the long length) is used.
                valid_samples=valid_samples if is_first else 0,
            )
            if len(datasets.train) < samples:
                raise RuntimeError(
                    f"data phase {phase.number} at sequence length {length} has "
                    f"{len(datasets.train)} samples, fewer than the {samples} requested from "
                    "Megatron-Core"
                )
            if is_first:
                valid_dataset = datasets.valid
            phase_datasets.append(Subset(datasets.train, range(samples)))
        consumed = lengths.steps_at(length, 1, completed_steps) * global_batch_size * factor
        iterators[length] = _stream_iterator(
            phase_datasets, consumed, micro_batch_size=micro_batch_size * factor,
            data_parallel_rank=data_parallel_rank, data_parallel_size=data_parallel_size,
            num_workers=config.dataloader_workers)
    if len(phases) > 1:
        logger.info(
            "data curriculum: %s",
            "; ".join(
                f"phase {phase.number} steps {phase.first_step}-{phase.last_step}"
                for phase in phases
            ),
        )
    return TrainData(iterators=iterators, valid_dataset=valid_dataset, phases=phases,
                     lengths=lengths, micro_batch_size=micro_batch_size)


def _stream_iterator(phase_datasets: list, consumed_samples: int, **iterator_args) -> Iterator:
    """The phases' samples back to back, resumed after `consumed_samples`."""
    stream = ConcatDataset(phase_datasets) if phase_datasets else []
    if consumed_samples >= len(stream):
        return iter(())  # a finished run resumed (or no step at this length): nothing to read
    return build_data_iterator(stream, consumed_samples=consumed_samples, **iterator_args)


def _phase_config(config: DataConfig, phase: DataPhase) -> DataConfig:
    if phase.blend is None:
        return config
    return dataclasses.replace(config, blend=phase.blend, phases=[])
