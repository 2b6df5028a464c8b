"""The step watchdog: a step far slower than the recent median dumps every thread's stack and
exits with status 75 (requeued by launch/slurm), alone and through train.py with an injected
stall; under DP2 (slow tier) both ranks dump their stacks."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nemotron_train.training.watchdog import WATCHDOG_EXIT_CODE
from tests.training.small_model import SMALL_MODEL

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_a_step_over_its_limit_dumps_the_stack_and_exits_75(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from nemotron_train.training.watchdog import StepWatchdog
        dog = StepWatchdog(factor=4, min_seconds=0.5, history=5, run_dir={str(tmp_path)!r},
                           rank=3, poll_seconds=0.05, exit_delay_s=0)
        for step in range(1, 6):
            dog.step_started(step)
            time.sleep(0.05)
            dog.step_finished()
        def a_hung_collective():
            time.sleep(60)
        dog.step_started(6)
        started = time.monotonic()
        a_hung_collective()
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == WATCHDOG_EXIT_CODE, result.stderr
    assert "watchdog: step 6 has run" in result.stderr and "limit of 0.5 s" in result.stderr
    stacks = (tmp_path / "stacks" / "rank3.txt").read_text()
    assert "a_hung_collective" in stacks  # the main thread's frame, where it hangs


def test_an_injected_stall_in_training_trips_the_watchdog(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "recipe=tiny", *SMALL_MODEL, "train.max_steps=8",
         "faults.stall_step=6", "faults.stall_seconds=300", "train.watchdog_factor=5",
         "train.watchdog_min_seconds=5", "checkpoint.save_final=false", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == WATCHDOG_EXIT_CODE, result.stdout[-2000:] + result.stderr[-3000:]
    assert "watchdog: step 6 has run" in result.stderr
    assert "begin_step" in (tmp_path / "stacks" / "rank0.txt").read_text()


@pytest.mark.slow
def test_under_dp2_every_rank_dumps_its_stack(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "train.py", "recipe=tiny", *SMALL_MODEL, "train.max_steps=8", "faults.rank=1",
         "faults.stall_step=6", "faults.stall_seconds=300", "train.watchdog_factor=5",
         "train.watchdog_min_seconds=5", "checkpoint.save_final=false", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    assert "begin_step" in (tmp_path / "stacks" / "rank1.txt").read_text()  # the stalled rank
    waiting = (tmp_path / "stacks" / "rank0.txt").read_text()  # and the one waiting for it
    assert "watchdog: step 6 has run" in waiting
