"""The mixed-length schedule: exact shares, a pure function of the step, errors that name the key."""

import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.data.sequence_lengths import SequenceLengthSchedule
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.training.config import TrainConfig


def schedule(fraction: float, long: int = 4096, short: int = 256) -> SequenceLengthSchedule:
    return SequenceLengthSchedule.from_config(long, short, fraction)


@pytest.mark.parametrize("fraction, steps, short_steps", [
    (0.5, 10, 5), (0.5, 11, 5), (0.25, 100, 25), (0.1, 30, 3), (0.7, 10, 7), (0.2, 7, 1), (0.01, 99, 0),
])
def test_exactly_floor_n_times_f_of_the_first_n_steps_are_short(fraction, steps, short_steps):
    lengths = [schedule(fraction).seq_length(step) for step in range(1, steps + 1)]
    assert lengths.count(256) == short_steps
    assert lengths.count(4096) == steps - short_steps
    assert schedule(fraction).steps_at(256, 1, steps) == short_steps


def test_half_alternates_long_and_short_and_a_quarter_spreads_evenly():
    assert [schedule(0.5).seq_length(s) for s in range(1, 7)] == [4096, 256] * 3
    assert [schedule(0.25).seq_length(s) for s in range(1, 9)] == [4096, 4096, 4096, 256] * 2


def test_the_length_of_a_step_does_not_depend_on_what_came_before():
    # What a resumed run recomputes for steps 40..60 equals the uninterrupted run's choice.
    straight = [schedule(0.3).seq_length(s) for s in range(1, 61)]
    resumed = [schedule(0.3).seq_length(s) for s in range(40, 61)]
    assert resumed == straight[39:]
    # Steps counted over any window add up: the data streams' positions follow from the step.
    lengths = schedule(0.3)
    for first, last in [(1, 60), (17, 33), (40, 60)]:
        window = straight[first - 1:last]
        assert lengths.steps_at(256, first, last) == window.count(256)
        assert lengths.steps_at(4096, first, last) == window.count(4096)


def test_short_steps_read_more_sequences_for_the_same_tokens():
    lengths = schedule(0.5, long=4096, short=256)
    assert lengths.sequences_factor(256) == 16 and lengths.sequences_factor(4096) == 1
    assert lengths.lengths == (4096, 256)


def test_no_fraction_means_every_step_long():
    lengths = SequenceLengthSchedule.from_config(4096, None, 0.0)
    assert not lengths.mixed and lengths.lengths == (4096,)
    assert {lengths.seq_length(s) for s in range(1, 20)} == {4096}


@pytest.mark.parametrize("fields, key", [
    (dict(short_seq_length=256, short_step_fraction=1.0), "train.short_step_fraction"),
    (dict(short_seq_length=256, short_step_fraction=-0.1), "train.short_step_fraction"),
    (dict(short_seq_length=256, short_step_fraction=True), "train.short_step_fraction"),
    (dict(short_step_fraction=0.5), "train.short_seq_length"),
    (dict(short_seq_length=0, short_step_fraction=0.5), "train.short_seq_length"),
])
def test_bad_mix_values_name_the_key_and_the_fix(fields, key):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**fields)
    assert raised.value.key == key


@pytest.mark.parametrize("short", [100, 512, 1024])
def test_the_short_length_must_divide_the_long_one(short):
    model = HybridModelConfig(pattern="ME", num_layers=2, seq_length=512)
    with pytest.raises(ConfigError) as raised:
        RunConfig(model=model, train=TrainConfig(short_seq_length=short, short_step_fraction=0.5))
    assert raised.value.key == "train.short_seq_length" and "divide" in raised.value.fix
