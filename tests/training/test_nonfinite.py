"""train.on_nonfinite with an injected fault (a tensor hook that turns one micro-batch's
gradient of one parameter into NaN or Inf at chosen steps): skip drops exactly that update,
halt exits non-zero naming the step and module and saves nothing, rollback goes back to the
checkpoint and on with the next batch, and gives up after train.max_rollbacks. Across a
pipeline split, the stage that did not see the NaN skips too."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from megatron.core.dist_checkpointing.serialization import load_common_state_dict

from nemotron_train.training.nonfinite import (
    BadStepHandler,
    LossSpikeDetector,
    NonFiniteStep,
    StepVerdict,
)
from nemotron_train.telemetry.metrics import read_events
from nemotron_train.training.checkpoint import TrainState
from nemotron_train.training.config import TrainConfig
from tests.training.small_model import SMALL_MODEL, checkpoint_tensors, logged, losses, train_small

REPO = Path(__file__).resolve().parents[2]
POISONED = "decoder.layers.3.mlp.linear_fc1.weight"
FAULT = [f"faults.parameter={POISONED}", "faults.micro_batch=2"]


def weights(checkpoint: Path) -> dict:
    """Model weights, buffers (the routers' expert bias) and optimizer moments, by key."""
    return checkpoint_tensors(checkpoint)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key


def test_skip_drops_exactly_the_poisoned_update(tmp_path):
    result = train_small(tmp_path, "train.max_steps=4", "train.on_nonfinite=skip",
                         "faults.nonfinite_grad_steps=[3]", "faults.value=inf", *FAULT,
                         "checkpoint.save_interval=1", "checkpoint.keep_last=0")
    records = {r["step"]: r for r in logged(tmp_path)}
    assert records[3]["skipped"] is True and records[3]["skipped_steps"] == 1
    assert records[3]["grad_norm"] != records[3]["grad_norm"]  # NaN: no optimizer step ran
    assert all("skipped" not in records[s] for s in (1, 2, 4))
    assert result.skipped_steps == 1
    (event,) = [e for e in read_events(tmp_path) if e["event"] == "skipped_step"]
    assert event["step"] == 3 and event["bad_parameters"] == [POISONED]
    checkpoints = tmp_path / "checkpoints"
    # Step 3 changed nothing (weights, Adam moments, schedule); steps 2 and 4 did change them.
    assert_same_tensors(weights(checkpoints / "iter_0000002"), weights(checkpoints / "iter_0000003"))
    after_4 = weights(checkpoints / "iter_0000004")
    assert not torch.equal(after_4["embedding.word_embeddings.weight"],
                           weights(checkpoints / "iter_0000003")["embedding.word_embeddings.weight"])
    schedule = [load_common_state_dict(str(checkpoints / f"iter_000000{s}"))["scheduler"]["num_steps"]
                for s in (2, 3, 4)]
    assert schedule[0] == schedule[1] < schedule[2]  # the scheduler did not advance on the skip


def test_halt_exits_non_zero_naming_step_and_module_and_saves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "train.py", "recipe=tiny", *SMALL_MODEL, "train.max_steps=5",
         "faults.nonfinite_grad_steps=[3]", *FAULT, "checkpoint.save_interval=1",
         "checkpoint.keep_last=0", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 3, process.stdout[-2000:] + process.stderr[-3000:]
    assert f"step 3: non-finite gradients in 1 parameter(s) (first non-finite gradient in " \
           f"{POISONED.rsplit('.', 1)[0]})" in process.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*")) == [
        "iter_0000001", "iter_0000002"]
    assert [r["step"] for r in logged(tmp_path)] == [1, 2]


def test_rollback_reloads_the_checkpoint_and_continues_with_the_next_batch(tmp_path):
    common = ["train.max_steps=8", "checkpoint.save_interval=4", *FAULT]
    # Rollback at step 6 returns to step 4's state and trains step 7 on batch 7. Skipping
    # steps 5 and 6 reaches the same state the same way: the oracle.
    rolled = train_small(tmp_path / "rollback", *common, "train.on_nonfinite=rollback",
                         "faults.nonfinite_grad_steps=[6]")
    train_small(tmp_path / "skip", *common, "train.on_nonfinite=skip",
                "faults.nonfinite_grad_steps=[5,6]", "faults.value=inf")
    assert rolled.rollbacks == 1
    with_rollback, with_skips = losses(tmp_path / "rollback"), losses(tmp_path / "skip")
    assert sorted(with_rollback) == list(range(1, 9))
    for step in (1, 2, 3, 4, 7, 8):
        assert with_rollback[step][:1] == with_skips[step][:1], step  # the same losses, bit for bit
    assert with_rollback[6][0] != with_skips[6][0]  # step 5's update counted until the rollback
    record = {r["step"]: r for r in logged(tmp_path / "rollback")}[6]
    assert record["rolled_back_to"] == "iter_0000004"
    (event,) = [e for e in read_events(tmp_path / "rollback") if e["event"] == "rollback"]
    assert event["step"] == 6 and event["bad_parameters"] == [POISONED]


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    with pytest.raises(NonFiniteStep, match="step 5: .*gave up after train.max_rollbacks=2"):
        train_small(tmp_path, "train.max_steps=8", "checkpoint.save_interval=2", *FAULT,
                    "train.on_nonfinite=rollback", "train.max_rollbacks=2",
                    "faults.nonfinite_grad_steps=[3,4,5]")
    assert [e["step"] for e in read_events(tmp_path) if e["event"] == "rollback"] == [3, 4]


def test_pipeline_stage_that_saw_no_nan_skips_too(tmp_path):
    # The poisoned parameter lives on stage 0 (rank 0) only; stage 1 must skip the same step.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "train.py", "recipe=tiny", *SMALL_MODEL, "parallel.pipeline=2", "train.max_steps=3",
         "train.on_nonfinite=skip", "faults.nonfinite_grad_steps=[2]",
         "faults.parameter=decoder.layers.0.mixer.in_proj.weight", "faults.rank=0",
         "checkpoint.save_interval=1", "checkpoint.keep_last=0", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    assert {r["step"]: r for r in logged(tmp_path)}[2]["skipped"] is True
    checkpoints = tmp_path / "checkpoints"
    before, after = weights(checkpoints / "iter_0000001"), weights(checkpoints / "iter_0000002")
    assert any(key.startswith("decoder.layers.5.") for key in before)  # stage 1's layers are saved
    assert_same_tensors(before, after)


def test_loss_spike_detector_flags_multiples_of_the_running_mean():
    detector = LossSpikeDetector(factor=2.0, window=4)
    assert [detector.observe(x) for x in (4.0, 4.0)] == [None, None]
    assert detector.observe(8.5) == 4.0  # 8.5 > 2 x mean(4, 4)
    assert detector.observe(float("nan")) is None  # non-finite losses are the policy's business
    assert detector.observe(9.0) is None  # 9.0 < 2 x mean(4, 4, 8.5)
    events = []
    handler = BadStepHandler(TrainConfig(on_nonfinite="skip", loss_spike_factor=2.0, loss_spike_window=2),
                             rollback=None,
                             log_event=lambda step, kind, message, **details: events.append((step, kind, details)))
    state = TrainState(step=7)
    finite = StepVerdict(loss_finite=True, grads_finite=True)
    for loss in (1.0, 1.0, 3.0):
        assert handler.handle(state, loss, finite) == {}
    assert events == [(7, "loss_spike", {"loss": 3.0, "running_mean": 1.0})]
