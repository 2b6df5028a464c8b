"""The tiny recipe through the real command: the loss falls, and a resumed run matches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "train.py", "recipe=tiny", f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


PEAK_TFLOPS = 0.05


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny")
    result = train(run_dir, "train.max_steps=40", "optim.warmup_steps=4", "logging.log_interval=1",
                   "train.eval_interval=20", "train.eval_iters=2", f"logging.peak_tflops={PEAK_TFLOPS}",
                   "logging.expert_load_interval=20")
    return run_dir, result


def test_loss_falls_clearly(short_run):
    run_dir, _ = short_run
    losses = [record["loss"] for record in logged(run_dir)]
    assert len(losses) == 40
    # Untrained, the loss is about ln(4096) = 8.3; 40 steps of AdamW bring it down by far more than noise.
    assert losses[0] > 8.0
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5


def test_run_directory_holds_config_metrics_and_checkpoint(short_run):
    run_dir, result = short_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["recipe"] == "tiny" and config["train"]["max_steps"] == 40
    record = logged(run_dir)[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "moe_seq_load_balancing_loss"):
        assert key in record
    assert record["step"] == 40 and record["tokens_per_s"] > 0
    assert (run_dir / "checkpoints" / "latest").read_text() == "iter_0000040"
    assert "step     40/40" in result.stdout and "ETA" in result.stdout


def test_every_step_is_logged_once_with_its_validation_loss(short_run):
    run_dir, _ = short_run
    records = logged(run_dir)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert [r["step"] for r in records if "valid_loss" in r] == [20, 40]


def test_metrics_carry_model_flops_mfu_memory_and_expert_load(short_run):
    from tests.recipes.test_recipes import compose_recipe
    from nemotron_train.planning.report import build_report

    run_dir, _ = short_run
    flops_per_token = build_report(compose_recipe("tiny"))["flops_per_token"]  # the dry run's count
    for record in logged(run_dir):
        # One process: model FLOPs per second = FLOPs per token x tokens per second.
        assert record["tflops_per_s"] * 1e12 == pytest.approx(flops_per_token * record["tokens_per_s"], rel=1e-9)
        assert record["mfu"] == pytest.approx(record["tflops_per_s"] / PEAK_TFLOPS, rel=1e-12)
        assert 0.2 < record["peak_memory_gb"] < 20  # the process's peak RSS
        assert record["skipped_steps"] == 0
    loads = {r["step"]: r["expert_load"] for r in logged(run_dir) if "expert_load" in r}
    assert sorted(loads) == [20, 40]
    tokens = 8 * 256 * 2  # global batch x sequence x top-2
    for layers in loads.values():
        assert sorted(layers) == ["decoder.layers.1", "decoder.layers.5"]  # MEM*ME: the E layers
        for layer in layers.values():
            assert sum(layer["tokens"]) == tokens and len(layer["tokens"]) == 8
            assert layer["min"] == min(layer["tokens"]) and layer["max"] == max(layer["tokens"])
            mean = tokens / 8
            std = (sum((t - mean) ** 2 for t in layer["tokens"]) / 8) ** 0.5
            assert layer["cv"] == pytest.approx(std / mean)


def test_the_run_ends_with_a_one_line_summary(short_run):
    run_dir, result = short_run
    last = result.stdout.strip().splitlines()[-1]
    valid = [r["valid_loss"] for r in logged(run_dir) if "valid_loss" in r]
    assert last.startswith("[nemotron-train] done: steps 1-40 of 40")
    assert f"final valid loss {valid[-1]:.4f}, best {min(valid):.4f}" in last
    assert f"{40 * 8 * 256:,} tokens" in last
    assert f"checkpoint {run_dir / 'checkpoints' / 'iter_0000040'}" in last
    assert f"metrics {run_dir / 'metrics.jsonl'}" in last


@pytest.mark.parametrize("distributed_optimizer", [False, True])
def test_resumed_run_continues_with_the_same_losses(tmp_path, distributed_optimizer):
    common = ["train.max_steps=8", "optim.warmup_steps=2", "logging.log_interval=1",
              f"parallel.distributed_optimizer={str(distributed_optimizer).lower()}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, *common)
    first_job = train(resumed, *common, "train.exit_interval=4")
    assert "train.exit_interval: saved" in first_job.stdout
    second_job = train(resumed, *common)
    assert "resumed from" in second_job.stdout and "at step 4" in second_job.stdout
    expected = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in logged(straight)]
    got = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in logged(resumed)]
    assert got == expected  # bit-identical: same data order, weights, optimizer and schedule
