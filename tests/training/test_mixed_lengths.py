"""Mixed-length training through the real loop: each step at the length the schedule names,
and a run resumed across a long/short boundary gives the uninterrupted run's losses."""

import json

import pytest

from nemotron_train.data.sequence_lengths import SequenceLengthSchedule
from nemotron_train.training.loop import train
from tests.recipes.test_recipes import compose_recipe

MIXED = ["model.seq_length=128", "train.short_seq_length=32", "train.short_step_fraction=0.5",
         "train.max_steps=5", "train.global_batch_size=4", "train.micro_batch_size=2",
         "optim.warmup_steps=1", "logging.log_interval=1"]


def run(run_dir, *overrides):
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(compose_recipe("tiny", [*MIXED, *overrides]), run_dir)


def logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_across_a_long_short_boundary_matches_the_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight)
    # Step 3 is long, step 4 short: the first job stops on the boundary.
    first = run(resumed, "train.exit_interval=3")
    assert first.interrupted and first.final_step == 3
    second = run(resumed)
    assert second.start_step == 3 and second.final_step == 5

    schedule = SequenceLengthSchedule.from_config(128, 32, 0.5)
    expected_lengths = [schedule.seq_length(step) for step in range(1, 6)]
    assert expected_lengths == [128, 32, 128, 32, 128]
    assert [r["seq_length"] for r in logged(straight)] == expected_lengths
    expected = [(r["step"], r["seq_length"], r["loss"], r["grad_norm"], r["lr"]) for r in logged(straight)]
    got = [(r["step"], r["seq_length"], r["loss"], r["grad_norm"], r["lr"]) for r in logged(resumed)]
    assert got == expected  # bit-identical: both length streams resume where they stopped
