"""Mixed sequence lengths: whole steps at the long length, whole steps at a short one.

Long-context continued pretraining mixes short sequences into the long ones (Nemotron 3
Nano found 512k-only data hurt short-context scores; Super alternated 1M and 4k). Here a
step trains either entirely at the long length (`model.seq_length`) or entirely at
`train.short_seq_length`, and which one is a function of the step number alone:

    step s (numbered from 1) is short  iff  floor(s * f) > floor((s - 1) * f)

with f = `train.short_step_fraction`, read as the decimal the user wrote. Over any first N
steps exactly floor(N * f) are short, spread as evenly as integers allow (f = 0.5
alternates long, short, long, ...). Nothing about the mix is stored in a checkpoint: a
resumed run recomputes it from the step.

Tokens per step stay constant: a short step's micro-batch holds long / short times as many
sequences, with the same number of micro-batches. So the optimizer sees the same number of
tokens every step (the learning-rate schedule's token counts hold), and a short
micro-batch's activations are no larger than a long one's (smaller in attention).
"""

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional


def decimal_fraction(value: float) -> Fraction:
    """The fraction the user wrote: 0.1 is 1/10, not 0.1000000000000000055 (binary float)."""
    return Fraction(repr(float(value)))


@dataclass(frozen=True)
class SequenceLengthSchedule:
    """Which sequence length each step trains at, and how many sequences it reads."""

    long_length: int
    """The run's main sequence length (`model.seq_length`)."""
    short_length: Optional[int] = None
    """The short length of mixed steps; None when every step is long."""
    short_fraction: Fraction = Fraction(0)
    """Share of steps at the short length, in [0, 1)."""

    @classmethod
    def from_config(cls, seq_length: int, short_seq_length: Optional[int],
                    short_step_fraction: float) -> "SequenceLengthSchedule":
        if not short_seq_length or not short_step_fraction:
            return cls(long_length=seq_length)
        return cls(long_length=seq_length, short_length=short_seq_length,
                   short_fraction=decimal_fraction(short_step_fraction))

    @property
    def mixed(self) -> bool:
        return self.short_length is not None and self.short_fraction > 0

    @property
    def lengths(self) -> tuple[int, ...]:
        """The lengths steps train at, long first."""
        return (self.long_length, self.short_length) if self.mixed else (self.long_length,)

    def short_steps_through(self, step: int) -> int:
        """How many of steps 1..step are short: floor(step * f)."""
        return math.floor(step * self.short_fraction)

    def is_short(self, step: int) -> bool:
        if step < 1:
            raise ValueError(f"step={step} is invalid; steps are numbered from 1")
        return self.short_steps_through(step) > self.short_steps_through(step - 1)

    def seq_length(self, step: int) -> int:
        """The sequence length step `step` (from 1) trains at."""
        return self.short_length if self.mixed and self.is_short(step) else self.long_length

    def steps_at(self, length: int, first_step: int, last_step: int) -> int:
        """How many of the steps first_step..last_step (inclusive) train at `length`."""
        if last_step < first_step:
            return 0
        short = self.short_steps_through(last_step) - self.short_steps_through(first_step - 1)
        if length == self.long_length:
            return last_step - first_step + 1 - short
        if self.mixed and length == self.short_length:
            return short
        raise ValueError(f"length={length} is not one of this schedule's lengths {self.lengths}")

    def sequences_factor(self, length: int) -> int:
        """Sequences per long sequence at `length`: a step at `length` reads this many times
        the global (and micro) batch size, so that every step has the same tokens."""
        return self.long_length // length
