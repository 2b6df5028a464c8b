"""train.sbatch on a real Slurm: the tiny recipe as 2 tasks (gloo), then requeue with resume.

Slow tier: it installs slurm-wlm and munge when missing (root, apt-get) and starts its own
one-node cluster on loopback. `make test-slow`, or `.venv/bin/python -m pytest -m slow tests/launch`.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import ensure_debian_packages

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
# Small enough for a 2-core machine; the interval checkpoints are what a requeue resumes from.
TINY = ["recipe=tiny", "optim.warmup_steps=3", "logging.log_interval=1", "checkpoint.save_interval=5"]


def container_less_environment(cluster, runs_dir: Path) -> dict:
    """train.sbatch's inputs for a venv job: this interpreter's environment and the checkout."""
    return {**cluster.environment, "NEMOTRON_VENV": sys.prefix, "NEMOTRON_CODE_DIR": str(REPO),
            "NEMOTRON_RUNS_DIR": str(runs_dir), "NEMOTRON_CONTAINER_IMAGE": ""}


def metrics(run_dir: Path) -> list:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_shell_scripts_pass_shellcheck():
    ensure_debian_packages({"shellcheck": "shellcheck"})
    skipped = {".git", ".venv", "runs", "outputs", "multirun", "node_modules", "__pycache__"}
    scripts = []
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [name for name in subdirectories if name not in skipped]
        for name in files:
            with open(os.path.join(directory, name), "rb") as file:
                if re.match(rb"#!.*\b(ba)?sh\b", file.readline()):
                    scripts.append(os.path.join(directory, name))
    assert str(SBATCH) in scripts
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_trains_the_tiny_recipe_as_two_tasks(slurm_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--job-name=tiny-2task", "--ntasks-per-node=2", "--gpus-per-node=0",
         f"--output={tmp_path}/%x-%j.out", str(SBATCH), *TINY, "train.max_steps=30"],
        env=container_less_environment(slurm_cluster, runs_dir), cwd=REPO,
        capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip()
    job = slurm_cluster.wait_for_job(job_id, timeout=600)
    log = (tmp_path / f"tiny-2task-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-4000:]

    run_dir = runs_dir / "slurm" / f"tiny-2task-{job_id}"
    assert "world_size=2 backend=gloo" in log and f"run_dir={run_dir}" in log
    assert [record["step"] for record in metrics(run_dir)] == list(range(1, 31))
    assert (run_dir / "checkpoints" / "latest").read_text() == "iter_0000030"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["parallel"]["num_nodes"] == 1 and config["parallel"]["gpus_per_node"] == 2


def test_usr1_checkpoints_requeues_and_the_job_resumes(slurm_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    max_steps = 24
    launched = subprocess.run(
        [sys.executable, "-m", "nemotron_train.launch", "--cpu", "--venv", sys.prefix,
         "--runs-dir", str(runs_dir), "--job-name=requeue", *TINY, f"train.max_steps={max_steps}",
         "parallel.gpus_per_node=2"],
        env={**container_less_environment(slurm_cluster, runs_dir), "PYTHONPATH": str(REPO)},
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+)", launched.stdout).group(1)
    run_dir = runs_dir / "slurm" / f"requeue-{job_id}"
    log_path = runs_dir / "slurm" / f"requeue-{job_id}.out"

    # Mid-run, the warning Slurm sends before the time limit (--signal=B:USR1@300), sent now.
    deadline = time.monotonic() + 400
    while len(metrics(run_dir)) < 6:
        assert time.monotonic() < deadline, log_path.read_text()[-4000:] if log_path.exists() else "no log"
        assert slurm_cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING"), log_path.read_text()[-4000:]
        time.sleep(0.5)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job_id)

    job = slurm_cluster.wait_for_job(
        job_id, timeout=600,
        until=lambda job: job["JobState"] == "COMPLETED" or (job["JobState"] in ("FAILED", "CANCELLED")))
    log = log_path.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log[-6000:]

    saved = re.search(r"SIGTERM: saved (\S+)/iter_(\d+), exiting", log)
    resumed = re.search(r"resumed from (\S+)/iter_(\d+) at step (\d+)", log)
    assert saved and resumed, log[-6000:]
    step = int(saved.group(2))
    assert 6 <= step < max_steps
    assert resumed.group(1) == saved.group(1) == str(run_dir / "checkpoints")
    assert int(resumed.group(2)) == int(resumed.group(3)) == step
    assert log.index("requeueing job") < log.index("attempt 2") < resumed.start()
    # Every step logged once: the first attempt up to the checkpoint, the second after it.
    assert [record["step"] for record in metrics(run_dir)] == list(range(1, max_steps + 1))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"iter_{max_steps:07d}"
