"""A checkpoint saved under one parallel layout loads under another with the same logits.

The saving run initialises its own weights (seed 11), writes them with the trainer's
save_checkpoint and computes the logits of a fixed batch; the loading run starts from
other weights (seed 22), loads the checkpoint through dist_checkpointing, which reshards
it to its own layout, and computes the logits of the same batch. Only fp32 round-off
(other reduction orders under TP/CP) may separate them.
"""

import os
import subprocess
import sys

import pytest
import torch

from tests.parallel.parity import PARITY_MODEL, REPO

PROBE_MODEL = [*PARITY_MODEL, "model.vocab_size=512"]


def probe(run_dir, out, overrides: list[str], nprocs: int, save_dir=None) -> torch.Tensor:
    launcher = [sys.executable, "-m", "tests.parallel.logits_probe"]
    if nprocs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nprocs}", "-m", "tests.parallel.logits_probe"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PROBE_OUT": str(out)}
    if save_dir is not None:
        env["PROBE_SAVE"] = str(save_dir)
    result = subprocess.run([*launcher, *PROBE_MODEL, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return torch.load(out)


def assert_same_logits_after_resharding(tmp_path, saving, saving_procs, loading, loading_procs):
    checkpoints = tmp_path / "checkpoints"
    saved = probe(tmp_path / "save", tmp_path / "saved.pt", [*saving, "seed=11"], saving_procs,
                  save_dir=checkpoints)
    loaded = probe(tmp_path / "load", tmp_path / "loaded.pt",
                   [*loading, "seed=22", f"checkpoint.load={checkpoints}"], loading_procs)
    assert saved.shape == loaded.shape == (2, 64, 512)
    # Different weights would differ by about the logits' own spread, not by round-off.
    assert saved.std() > 0.1
    torch.testing.assert_close(loaded, saved, rtol=1e-5, atol=1e-5)


def test_tp2_ep2_checkpoint_loads_in_one_process_with_the_same_logits(tmp_path):
    assert_same_logits_after_resharding(
        tmp_path, ["parallel.tensor=2", "parallel.sequence_parallel=true", "parallel.expert=2",
                   "parallel.expert_tensor=1"], 2, [], 1)


@pytest.mark.slow
def test_tp2_pp2_checkpoint_loads_under_cp2_with_the_same_logits(tmp_path):
    assert_same_logits_after_resharding(
        tmp_path, ["parallel.tensor=2", "parallel.sequence_parallel=true", "parallel.pipeline=2"], 4,
        ["parallel.context=2"], 2)
