"""Bad input fails before any allocation, naming the key, the value and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_train(*overrides, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["recipe=no_such_recipe"], ["Could not find 'recipe/no_such_recipe'", "Available options", "tiny"]),
        (["train.no_such_key=1"], ["Key 'no_such_key' not in 'TrainConfig'", "full_key: train.no_such_key"]),
        (["train.max_steps=many"], ["train.max_steps", "many"]),
        (["model.pattern=MEX*ME"], ["model.pattern='MEX*ME'", "character 'X' at position 2", "M (Mamba-2)"]),
        (["model.pattern=MEM*M"], ["model.num_layers=6", "has 5 main-stack layers", "set model.num_layers=5"]),
        (["model.num_query_groups=3"], ["model.num_query_groups=3", "divide model.num_attention_heads=4"]),
        (["optim.decay_style=step"], ["optim.decay_style='step'", "choose one of"]),
        (["parallel.tensor=2", "parallel.sequence_parallel=true"],
         ["world_size=1", "needs a multiple of 2 processes", "torchrun --nproc-per-node 2", "dry_run=true"]),
        (["parallel.tensor=2"], ["parallel.sequence_parallel=False", "requires parallel.sequence_parallel=true"]),
        (["model.pattern='ME|M*|ME'", "parallel.pipeline=2"],
         ["parallel.pipeline=2", "names 3 pipeline stages", "interleaved pipeline schedules are not supported"]),
    ],
    ids=["unknown-recipe", "unknown-key", "bad-type", "bad-pattern-char", "pattern-length",
         "heads-not-dividing", "bad-choice", "too-few-devices", "moe-tp-needs-sp",
         "pipeline-stages"],
)
def test_bad_input_fails_early_with_a_clear_message(overrides, expected, tmp_path):
    result = run_train(*overrides, tmp_path=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for fragment in expected:
        assert fragment in output, output
    # Failed before training: no metrics, no checkpoint.
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
