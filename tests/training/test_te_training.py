"""Where TransformerEngine imports on a GPU: its spec builds and trains, resumes under TE's
FusedAdam bit for bit, and `precision=nvfp4` takes the plan chosen before allocation (native on
Blackwell, the local spec's emulation elsewhere)."""

import pytest
import torch

from tests.training.test_cuda_training import STEPS, losses, train

pytestmark = [pytest.mark.gpu, pytest.mark.imports("transformer_engine")]


def test_te_spec_trains_and_resumes_under_fused_adam_bit_for_bit(tmp_path):
    deterministic = ["precision=bf16", "model.spec=te", "train.deterministic=true"]
    straight = train(tmp_path / "straight", *STEPS, *deterministic)
    assert "layer spec: te" in straight.stdout
    assert straight.records[-1]["loss"] < straight.records[0]["loss"]
    resumed = train(tmp_path / "resumed", *STEPS, *deterministic,
                    f"checkpoint.load={tmp_path / 'straight' / 'checkpoints' / 'iter_0000004'}")
    assert "resumed from" in resumed.stdout
    assert losses(resumed.records) == losses(straight.records, first_step=5)


def test_nvfp4_takes_the_planned_path(tmp_path):
    run = train(tmp_path, "precision=nvfp4", "train.max_steps=2", "optim.warmup_steps=0",
                "logging.log_interval=1")
    blackwell = torch.cuda.get_device_capability()[0] >= 10
    expected = ("native (TE NVFP4); layer spec: te" if blackwell
                else "emulated (nemotron_train.precision); layer spec: local")
    assert expected in run.stdout
    assert all(record["loss"] == record["loss"] for record in run.records)  # no NaN
