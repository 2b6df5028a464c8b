"""Parity harness: a parallel layout against the single-process baseline, step by step.

Both runs start from the same weights: the baseline saves its freshly initialised
model (`checkpoint.save_initial`), and the parallel run loads it through
dist_checkpointing (`checkpoint.finetune`), which reshards it to the layout. Same
data, same seed, same global batch; only the layout differs.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A small hybrid with every layer type; every size divides by 2 for TP/EP/CP/PP.
PARITY_MODEL = [
    "recipe=tiny",
    "model.pattern=ME*-ME",
    "model.num_layers=6",
    "model.hidden_size=128",
    "model.seq_length=64",
    "model.ffn_hidden_size=256",
    "model.moe_ffn_hidden_size=128",
    "model.moe_shared_expert_intermediate_size=128",
    "model.mamba_chunk_size=16",
    "train.max_steps=10",
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "optim.warmup_steps=2",
    "logging.log_interval=1",
    "checkpoint.save_final=false",
    "checkpoint.keep_last=0",
]
LOSS_RTOL = 1e-4
GRAD_NORM_RTOL = 1e-3


@dataclass(frozen=True)
class Comparison:
    """Largest relative differences between a layout's steps and the baseline's."""

    max_loss_rel: float
    max_grad_norm_rel: float
    steps: int

    def describe(self, layout: str) -> str:
        return (f"{layout}: {self.steps} steps, max |dloss|/loss = {self.max_loss_rel:.2e}, "
                f"max |dgrad_norm|/grad_norm = {self.max_grad_norm_rel:.2e}")


def run_training(run_dir: Path, overrides: list[str], nprocs: int = 1,
                 base: list[str] = PARITY_MODEL) -> list[dict]:
    """Run train.py (under torchrun when nprocs > 1) with `base` then `overrides`; return its
    metrics.jsonl records."""
    launcher = [sys.executable, "train.py"]
    if nprocs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nprocs}", "train.py"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, *base, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"training failed ({overrides}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compare(baseline: list[dict], candidate: list[dict]) -> Comparison:
    assert [r["step"] for r in candidate] == [r["step"] for r in baseline]
    assert [r.get("seq_length") for r in candidate] == [r.get("seq_length") for r in baseline]
    loss_rel = max(abs(c["loss"] - b["loss"]) / abs(b["loss"]) for b, c in zip(baseline, candidate))
    grad_rel = max(abs(c["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"])
                   for b, c in zip(baseline, candidate))
    return Comparison(max_loss_rel=loss_rel, max_grad_norm_rel=grad_rel, steps=len(baseline))


def record(results_file: Path, layout: str, comparison: Comparison) -> None:
    """Append the observed maxima to a JSON-lines file and print them."""
    print(comparison.describe(layout))
    with open(results_file, "a") as handle:
        handle.write(json.dumps({"layout": layout, **comparison.__dict__}) + "\n")
