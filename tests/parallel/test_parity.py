"""Every parallel layout trains like the single process: losses within 1e-4, grad norms 1e-3."""

import os
from pathlib import Path

import pytest

from tests.parallel.parity import (
    GRAD_NORM_RTOL,
    LOSS_RTOL,
    compare,
    record,
    run_training,
)

RESULTS = Path(os.environ.get("PARITY_RESULTS", "/tmp/nemotron_train_parity.jsonl"))


def _baseline(run_dir, model_overrides=()):
    metrics = run_training(run_dir, [*model_overrides, "checkpoint.save_initial=true"])
    initial = run_dir / "checkpoints" / "iter_0000000"
    assert initial.is_dir()
    return metrics, initial


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _baseline(tmp_path_factory.mktemp("baseline"))


# The same model with LatentMoE (l = d/4) in its MoE layers and a shared-weight MTP block
# at 2 depths, so the MTP block's own MoE layer is latent too.
LATENT_MTP_MODEL = ["model.pattern=ME*-ME/*E/*E", "model.moe_latent_size=32"]


LAYOUTS = {
    "DP2": ["parallel.distributed_optimizer=false"],
    "DP2+distopt": ["parallel.distributed_optimizer=true"],
    "TP2+SP": ["parallel.tensor=2", "parallel.sequence_parallel=true"],
    "EP2-alltoall": ["parallel.expert=2", "model.moe_token_dispatcher_type=alltoall"],
    "EP2-allgather": ["parallel.expert=2", "model.moe_token_dispatcher_type=allgather"],
    "PP2": ["parallel.pipeline=2"],
    "CP2": ["parallel.context=2"],
}


def assert_matches_baseline(layout: str, overrides: list[str], nprocs: int, baseline, run_dir):
    reference, initial = baseline
    metrics = run_training(
        run_dir, [*overrides, f"checkpoint.load={initial}", "checkpoint.finetune=true"], nprocs=nprocs
    )
    comparison = compare(reference, metrics)
    record(RESULTS, layout, comparison)
    assert comparison.max_loss_rel < LOSS_RTOL
    assert comparison.max_grad_norm_rel < GRAD_NORM_RTOL
    return reference, metrics


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_process_layout_matches_single_process(layout, baseline, tmp_path):
    assert_matches_baseline(layout, LAYOUTS[layout], 2, baseline, tmp_path / layout)


@pytest.mark.slow
def test_latent_moe_with_mtp_under_ep2_matches_single_process(tmp_path):
    baseline = _baseline(tmp_path / "baseline", LATENT_MTP_MODEL)
    reference, metrics = assert_matches_baseline(
        "EP2-latent-mtp", [*LATENT_MTP_MODEL, "parallel.expert=2"], 2, baseline, tmp_path / "EP2")
    for key in ("mtp_1_loss", "mtp_2_loss"):
        for base, candidate in zip(reference, metrics):
            assert candidate[key] == pytest.approx(base[key], rel=LOSS_RTOL), (key, base["step"])


@pytest.mark.slow
def test_latent_moe_with_mtp_under_pp2_matches_single_process(tmp_path):
    baseline = _baseline(tmp_path / "baseline", LATENT_MTP_MODEL)
    reference, metrics = assert_matches_baseline(
        "PP2-latent-mtp", [*LATENT_MTP_MODEL, "parallel.pipeline=2"], 2, baseline, tmp_path / "PP2")
    for base, candidate in zip(reference, metrics):
        assert candidate["mtp_2_loss"] == pytest.approx(base["mtp_2_loss"], rel=LOSS_RTOL)


COMBINED_LAYOUTS = {
    "TP2xEP2": ["parallel.tensor=2", "parallel.sequence_parallel=true", "parallel.expert=2"],
    "TP2xPP2": ["parallel.tensor=2", "parallel.sequence_parallel=true", "parallel.pipeline=2"],
    "DP2xCP2+distopt": ["parallel.context=2", "parallel.distributed_optimizer=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(COMBINED_LAYOUTS))
def test_four_process_layout_matches_single_process(layout, baseline, tmp_path):
    assert_matches_baseline(layout, COMBINED_LAYOUTS[layout], 4, baseline, tmp_path / layout)
