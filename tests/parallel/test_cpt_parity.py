"""recipe=tiny_cpt (long sequences with whole short steps mixed in) under CP2 trains like CP1.

Same harness as test_parity.py: the CP1 baseline saves its initial weights, the CP2 run
loads them through dist_checkpointing; losses within 1e-4 and grad norms within 1e-3 at
every step, long and short.
"""

import pytest

from tests.parallel.parity import GRAD_NORM_RTOL, LOSS_RTOL, compare, record, run_training
from tests.parallel.test_parity import RESULTS

CPT = ["recipe=tiny_cpt", "logging.log_interval=1", "checkpoint.save_final=false",
       "checkpoint.keep_last=0"]


def assert_cp2_matches_cp1(tmp_path, long_length: int, max_steps: int):
    overrides = [f"model.seq_length={long_length}", f"train.max_steps={max_steps}"]
    baseline = run_training(tmp_path / "cp1", [*overrides, "parallel.context=1",
                                               "checkpoint.save_initial=true"], base=CPT)
    initial = tmp_path / "cp1" / "checkpoints" / "iter_0000000"
    candidate = run_training(tmp_path / "cp2", [*overrides, f"checkpoint.load={initial}"],
                             nprocs=2, base=CPT)
    assert {r["seq_length"] for r in baseline} == {long_length, 256}  # both kinds of step compared
    comparison = compare(baseline, candidate)
    record(RESULTS, f"tiny_cpt CP2 {' '.join(overrides)}", comparison)
    assert comparison.max_loss_rel < LOSS_RTOL
    assert comparison.max_grad_norm_rel < GRAD_NORM_RTOL


def test_tiny_cpt_cp2_matches_cp1_at_a_reduced_length(tmp_path):
    # One long (1024) and one short (256) step: the default tier's budget.
    assert_cp2_matches_cp1(tmp_path, long_length=1024, max_steps=2)


@pytest.mark.slow
def test_tiny_cpt_cp2_matches_cp1_at_its_recipe_length(tmp_path):
    assert_cp2_matches_cp1(tmp_path, long_length=4096, max_steps=4)
