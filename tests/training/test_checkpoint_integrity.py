"""Checkpoints that never lie: a truncated shard, a missing metadata file or (with
checkpoint.verify_integrity) a changed byte is named at resume, the run continues from the
newest intact checkpoint with the uninterrupted run's losses, and background (async) saves
resume bit for bit like synchronous ones."""

import shutil
from pathlib import Path

import pytest

from nemotron_train.training.checkpoint_integrity import find_damage, resume_candidates
from nemotron_train.training.resume import NoIntactCheckpoint
from nemotron_train.telemetry.metrics import read_events
from tests.training.small_model import logged, losses, train_small

SAVES = ["train.max_steps=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0"]
SHARD = "__0_0.distcp"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run that saved steps 2, 4 and 6 with integrity manifests."""
    run_dir = tmp_path_factory.mktemp("reference")
    train_small(run_dir, *SAVES, "checkpoint.verify_integrity=true")
    return run_dir


def copy_run(reference: Path, destination: Path, newest: int) -> Path:
    """`reference` as a run killed after saving step `newest` (later checkpoints removed)."""
    shutil.copytree(reference, destination)
    checkpoints = destination / "checkpoints"
    for later in checkpoints.glob("iter_*"):
        if int(later.name.split("_")[1]) > newest:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"iter_{newest:07d}")
    return destination


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_an_intact_checkpoint_passes_every_check(reference):
    assert find_damage(reference / "checkpoints" / "iter_0000006", verify_hashes=True) is None


@pytest.mark.parametrize("damage, file, reason", [
    ("truncate_shard", SHARD, "truncated"),
    ("delete_shard", SHARD, "shard file missing"),
    ("delete_config", "metadata.json", "unreadable or missing"),
    ("delete_index", ".metadata", "unreadable or missing"),
])
def test_structural_damage_is_found_without_reading_the_shards(reference, tmp_path, damage, file, reason):
    checkpoint = tmp_path / "iter_0000004"
    shutil.copytree(reference / "checkpoints" / "iter_0000004", checkpoint)
    target = checkpoint / file
    if damage == "truncate_shard":
        truncate(target)
    else:
        target.unlink()
    found = find_damage(checkpoint)
    assert found is not None and found.file == file and reason in found.reason


def test_a_changed_byte_is_found_by_the_hashes_only(reference, tmp_path):
    checkpoint = tmp_path / "iter_0000004"
    shutil.copytree(reference / "checkpoints" / "iter_0000004", checkpoint)
    data = bytearray((checkpoint / SHARD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (checkpoint / SHARD).write_bytes(bytes(data))
    assert find_damage(checkpoint) is None  # the sizes are right: only hashing can tell
    found = find_damage(checkpoint, verify_hashes=True)
    assert found is not None and found.file == SHARD and "hash" in found.reason


def test_resume_passes_over_a_damaged_newest_checkpoint(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / "run", newest=4)
    truncate(run_dir / "checkpoints" / "iter_0000004" / SHARD)
    result = train_small(run_dir, *SAVES, "checkpoint.verify_integrity=true")
    assert result.start_step == 2  # from iter_0000002, the newest intact one
    assert losses(run_dir) == losses(reference)  # and on exactly as the uninterrupted run
    (event,) = [e for e in read_events(run_dir) if e["event"] == "checkpoint_damaged"]
    assert event["file"] == SHARD and event["checkpoint"].endswith("iter_0000004")


def test_staging_directories_are_never_resume_candidates(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / "run", newest=4)
    shutil.copytree(run_dir / "checkpoints" / "iter_0000004", run_dir / "checkpoints" / "iter_0000006.partial")
    assert [p.name for p in resume_candidates(run_dir / "checkpoints")] == ["iter_0000004", "iter_0000002"]


def test_no_intact_checkpoint_is_an_error_naming_each_damage(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / "run", newest=4)
    for step in (2, 4):
        (run_dir / "checkpoints" / f"iter_000000{step}" / "metadata.json").unlink()
    with pytest.raises(NoIntactCheckpoint, match="iter_0000004/metadata.json.*iter_0000002/metadata.json"):
        train_small(run_dir, *SAVES)


def test_loading_a_named_damaged_checkpoint_is_an_error(reference, tmp_path):
    checkpoint = tmp_path / "iter_0000004"
    shutil.copytree(reference / "checkpoints" / "iter_0000004", checkpoint)
    truncate(checkpoint / SHARD)
    with pytest.raises(NoIntactCheckpoint, match=f"iter_0000004/{SHARD}: truncated"):
        train_small(tmp_path / "run", *SAVES, f"checkpoint.load={checkpoint}")


def test_async_saves_resume_bit_identically(reference, tmp_path):
    run_dir = tmp_path / "async"
    first = train_small(run_dir, *SAVES, "checkpoint.async_save=true", "train.exit_interval=4")
    assert first.interrupted and (run_dir / "checkpoints" / "latest").read_text() == "iter_0000004"
    assert find_damage(run_dir / "checkpoints" / "iter_0000004") is None  # published complete
    train_small(run_dir, *SAVES, "checkpoint.async_save=true")
    assert losses(run_dir) == losses(reference)
    saves = [e for e in read_events(run_dir) if e["event"] == "checkpoint_saved"]
    assert [e["step"] for e in saves] == [2, 4, 6] and all(e["asynchronous"] for e in saves)
    assert [r["step"] for r in logged(run_dir)] == list(range(1, 7))


@pytest.mark.gpu
def test_on_cuda_saves_run_in_the_background_by_default_and_resume(tmp_path):
    straight = train_small(tmp_path / "straight", *SAVES)
    run_dir = tmp_path / "resumed"
    train_small(run_dir, *SAVES, "train.exit_interval=4")
    train_small(run_dir, *SAVES)
    saves = [e for e in read_events(run_dir) if e["event"] == "checkpoint_saved"]
    assert saves and all(e["asynchronous"] for e in saves)
    published = [e["checkpoint"] for e in read_events(run_dir) if e["event"] == "checkpoint_published"]
    assert [Path(p).name for p in published] == ["iter_0000002", "iter_0000004", "iter_0000006"]
    # GPU kernels (atomics in the MoE dispatch) need not be bitwise deterministic.
    expected, got = losses(tmp_path / "straight"), losses(run_dir)
    assert sorted(got) == sorted(expected) == list(range(1, straight.final_step + 1))
    for step in expected:
        assert got[step][0] == pytest.approx(expected[step][0], rel=1e-5)
