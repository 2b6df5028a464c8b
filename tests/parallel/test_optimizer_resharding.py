"""The full training state (optimizer included) moves across a change of layout: resumed under
another layout, the run continues as the uninterrupted one did (parity limits). The regular
optimizer's state and the distributed optimizer's `fully_reshardable` format reshard across
TP/PP/EP/DP; `dp_reshardable` across DP only, and any other change is refused up front."""

import shutil
from pathlib import Path

import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.training.checkpoint import check_optimizer_reshardable
from nemotron_train.training.rng_state import RngLayout
from tests.parallel.parity import GRAD_NORM_RTOL, LOSS_RTOL, run_training
from tests.training.small_model import SMALL_MODEL

BASE = ["recipe=tiny", *SMALL_MODEL, "train.max_steps=6", "checkpoint.save_interval=3",
        "checkpoint.keep_last=0", "checkpoint.save_final=false"]


def resume_elsewhere(tmp_path: Path, saving: list[str], saving_procs: int, loading: list[str],
                     loading_procs: int):
    """Train 6 steps under `saving`; resume from its step-3 checkpoint under `loading`; return
    both runs' records of steps 4-6 and the resumed run's first record."""
    straight = run_training(tmp_path / "straight", saving, saving_procs, base=BASE)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "iter_0000006")
    (resumed_dir / "checkpoints" / "latest").write_text("iter_0000003")
    resumed = run_training(resumed_dir, loading, loading_procs, base=BASE)
    return straight[3:], resumed[3:]


def assert_continues_alike(expected: list[dict], got: list[dict]):
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [4, 5, 6]
    for base, candidate in zip(expected, got):
        assert candidate["loss"] == pytest.approx(base["loss"], rel=LOSS_RTOL)
        assert candidate["grad_norm"] == pytest.approx(base["grad_norm"], rel=GRAD_NORM_RTOL)


FULLY = ["parallel.distributed_optimizer=true", "checkpoint.optimizer_format=fully_reshardable"]


def test_fully_reshardable_distributed_optimizer_moves_from_dp2_to_one_process(tmp_path):
    assert_continues_alike(*resume_elsewhere(tmp_path, FULLY, 2, FULLY, 1))


LAYOUT_CHANGES = {
    "TP2+SP -> one process (regular optimizer)": (["parallel.tensor=2", "parallel.sequence_parallel=true"], 2, [], 1),
    "PP2 -> EP2 (regular optimizer)": (["parallel.pipeline=2"], 2, ["parallel.expert=2"], 2),
    "DP2 -> TP2+SP (distributed optimizer, fully_reshardable)": (
        FULLY, 2, [*FULLY, "parallel.tensor=2", "parallel.sequence_parallel=true"], 2),
    "PP2 -> EP2 (distributed optimizer, fully_reshardable)": (
        [*FULLY, "parallel.pipeline=2"], 2, [*FULLY, "parallel.expert=2"], 2),
    "DP2 -> one process (distributed optimizer, dp_reshardable)": (
        ["parallel.distributed_optimizer=true"], 2, ["parallel.distributed_optimizer=true"], 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(LAYOUT_CHANGES))
def test_training_state_moves_across_layouts(tmp_path, change):
    saving, saving_procs, loading, loading_procs = LAYOUT_CHANGES[change]
    assert_continues_alike(*resume_elsewhere(tmp_path, saving, saving_procs, loading, loading_procs))


SAVED = RngLayout(world_size=2, tensor=1, pipeline=1, context=1, expert=1)
DP_RESHARDABLE = {"optimizer": {"param_state_sharding_type": "dp_reshardable"}, "rng_layout": SAVED.as_dict()}


def test_layout_changes_the_saved_optimizer_state_cannot_follow_are_refused_before_loading():
    one_process = RngLayout(world_size=1, tensor=1, pipeline=1, context=1, expert=1)
    check_optimizer_reshardable(DP_RESHARDABLE, True, one_process)  # DP changes are fine
    tp2 = RngLayout(world_size=2, tensor=2, pipeline=1, context=1, expert=1)
    with pytest.raises(ConfigError, match="parallel.tensor=1.*checkpoint.optimizer_format=fully_reshardable"):
        check_optimizer_reshardable(DP_RESHARDABLE, True, tp2)
    fully = {"optimizer": {"param_state_sharding_type": "fully_reshardable"}, "rng_layout": SAVED.as_dict()}
    check_optimizer_reshardable(fully, True, tp2)
    with pytest.raises(ConfigError, match="saved with the distributed optimizer.*checkpoint.finetune=true"):
        check_optimizer_reshardable(DP_RESHARDABLE, False, SAVED)
    with pytest.raises(ConfigError, match="saved without the distributed optimizer"):
        check_optimizer_reshardable({"optimizer": {"param_groups": []}}, True, SAVED)
