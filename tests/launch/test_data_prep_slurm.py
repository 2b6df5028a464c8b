"""data_prep.sbatch on a real Slurm: a corpus prepared as a 2-task job array, merged, equal
to one unsharded run; resubmitted, the finished shards are not redone.

Slow tier, on the one-node loopback cluster of conftest.py (installs slurm-wlm and munge
when missing). `.venv/bin/python -m pytest -m slow tests/launch/test_data_prep_slurm.py`.
"""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def write_corpus(root: Path) -> list:
    """A plain JSONL file large enough to be cut between the shards, and compressed ones."""
    root.mkdir()
    lines = [json.dumps({"text": f"document {index}: " + "lorem ipsum " * (index % 50)}) + "\n"
             for index in range(3000)]
    (root / "a.jsonl").write_text("".join(lines[:2000]))
    (root / "b.jsonl.gz").write_bytes(gzip.compress("".join(lines[2000:2500]).encode()))
    zstd = zstandard.ZstdCompressor(write_checksum=True)
    (root / "c.jsonl.zst").write_bytes(zstd.compress("".join(lines[2500:]).encode()))
    return [str(root / "*.json*")]


def launch(cluster, arguments: list, tmp_path: Path) -> str:
    environment = {**cluster.environment, "PYTHONPATH": str(REPO), "NEMOTRON_CONTAINER_IMAGE": ""}
    launched = subprocess.run(
        [sys.executable, "-m", "nemotron_train.launch", "data-prep", "--num-shards", "2",
         "--cpus-per-task", "1", "--venv", sys.prefix, "--logs-dir", str(tmp_path / "logs"),
         "--", *arguments],
        env=environment, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return re.search(r"submitted array job (\d+)", launched.stdout).group(1)


def wait_for_array(cluster, job_id: str, tmp_path: Path) -> list:
    logs = []
    for task in (0, 1):
        job = cluster.wait_for_job(f"{job_id}_{task}", timeout=600)
        log = (tmp_path / "logs" / f"data-prep-{job_id}_{task}.out").read_text()
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-4000:]
        logs.append(log)
    return logs


def test_a_two_task_array_prepares_the_shards_and_a_rerun_skips_them(slurm_cluster, tmp_path,
                                                                     tokenizer_json):
    inputs = write_corpus(tmp_path / "corpus")
    tokenizer = ["--tokenizer-type", "huggingface", "--tokenizer-path", tokenizer_json, "--eod-token", "</s>"]
    single = tmp_path / "single" / "corpus"
    subprocess.run([sys.executable, "-m", "data_prep", "--input", *inputs, "--output-prefix", str(single),
                    "--workers", "1", *tokenizer], cwd=REPO, check=True, capture_output=True)
    prefix = tmp_path / "sharded" / "corpus"
    arguments = ["--input", *inputs, "--output-prefix", str(prefix), *tokenizer]

    logs = wait_for_array(slurm_cluster, launch(slurm_cluster, arguments, tmp_path), tmp_path)
    for task, log in enumerate(logs):
        assert f"task {task} (attempt 1)" in log
        assert re.search(rf"shard {task}/2: wrote [\d,]+ documents", log), log[-3000:]
        assert "all shards: " in log
    assert any("all shards: 2/2 finished" in log for log in logs)
    merged = subprocess.run([sys.executable, "-m", "data_prep", "merge", "--output-prefix", str(prefix)],
                            cwd=REPO, capture_output=True, text=True)
    assert merged.returncode == 0 and "merged 2 shards: 3,000 documents" in merged.stderr, merged.stderr
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{single}{suffix}").read_bytes()

    shard_files = sorted(prefix.parent.glob("corpus.shard-*"))
    written = {path: path.stat().st_mtime_ns for path in shard_files}
    rerun = wait_for_array(slurm_cluster, launch(slurm_cluster, arguments, tmp_path), tmp_path)
    for task, log in enumerate(rerun):
        assert f"shard {task}/2: finished earlier" in log and "wrote" not in log
    assert {path: path.stat().st_mtime_ns for path in shard_files} == written
