"""kill -9 at random moments (between steps, in the middle of a checkpoint write), restart, and
every logged step equals the uninterrupted run's, bit for bit: fp32 and NVFP4 (stochastic
rounding on, its stream restored from the checkpoint) in one process, and in the slow tier
ten trials under DP2 with the distributed optimizer."""

import json
import os
import platform
import random
import time
from pathlib import Path

import pytest

from tests.training.kill_harness import kill_trial, run_to_completion, summary

MAX_STEPS = 6
RESULTS_COMMAND = ("KILL_RESUME_RESULTS=benchmarks/results/kill_resume_dp2.json .venv/bin/python -m pytest "
                   "tests/training/test_kill_resume.py -m slow -k ten_kills -s")


def trials(tmp_path: Path, overrides: list[str], nprocs: int, moments: list[str], seed: int):
    overrides = [f"train.max_steps={MAX_STEPS}", *overrides]
    reference = run_to_completion(tmp_path / "reference", overrides, nprocs, "reference")
    assert [r["step"] for r in reference] == list(range(1, MAX_STEPS + 1))
    rng = random.Random(seed)
    return [kill_trial(tmp_path / f"trial{index}", overrides, nprocs, moment, rng, reference, MAX_STEPS)
            for index, moment in enumerate(moments)]


def test_fp32_killed_during_a_checkpoint_write_resumes_bit_identically(tmp_path):
    (result,) = trials(tmp_path, [], 1, ["during_save"], seed=15)
    assert result.killed_during_save and " at step " in result.resumed_from
    assert result.bit_identical, result


@pytest.mark.slow
def test_fp32_killed_between_steps_and_in_a_background_save_resumes_bit_identically(tmp_path):
    results = trials(tmp_path, ["checkpoint.async_save=true"], 1, ["between_steps", "during_save"], seed=5)
    assert results[1].killed_during_save
    for result in results:
        assert result.bit_identical, result


def test_nvfp4_with_stochastic_rounding_killed_at_random_resumes_bit_identically(tmp_path):
    results = trials(tmp_path, ["precision=nvfp4"], 1, ["random"], seed=4)
    assert results[0].bit_identical, results[0]
    assert results[0].resumed_from != "start (no checkpoint)"  # the streams came from a checkpoint


@pytest.mark.slow
def test_ten_kills_under_dp2_with_the_distributed_optimizer(tmp_path):
    moments = ["between_steps", "during_save", "random"] * 3 + ["during_save"]  # 10 trials
    machine = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "nproc": os.cpu_count(),
               "load_average_before": os.getloadavg(), "platform": platform.platform()}
    results = trials(tmp_path, ["parallel.distributed_optimizer=true"], 2, moments, seed=10)
    machine["load_average_after"] = os.getloadavg()
    record = {"command": RESULTS_COMMAND, "machine": machine,
              "layout": "DP2 + distributed optimizer, 2 gloo processes", "max_steps": MAX_STEPS,
              **summary(results)}
    destination = os.environ.get("KILL_RESUME_RESULTS")
    if destination:
        Path(destination).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    assert record["bit_identical"] == "10/10", record
