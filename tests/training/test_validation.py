"""Validation reports one record per evaluated step, and with train.eval_per_source the loss
of each blend source (their token-weighted mean is the overall loss) and of each curriculum
phase whose sources the validation blend holds (the phase's weighted mix of them)."""

import shutil

import pytest

from nemotron_train.data.cache import resolve_cache_dir
from nemotron_train.data.config import TokenizerConfig
from nemotron_train.data.datasets import ensure_stdlib_dataset
from nemotron_train.data.tokenizer import build_tokenizer
from tests.training.small_model import logged, train_small


def two_sources(tmp_path) -> tuple[str, str]:
    """The stdlib corpus (builtin tokenizer, as the run uses) under two source names."""
    tokenizer = build_tokenizer(TokenizerConfig(), None)
    stdlib = ensure_stdlib_dataset(resolve_cache_dir(None), tokenizer, max_files=None, workers=1)
    prefixes = []
    for name in ("web", "code"):
        prefix = tmp_path / "data" / f"{name}_text_document"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".bin", ".idx"):
            shutil.copyfile(stdlib + suffix, str(prefix) + suffix)
        prefixes.append(str(prefix))
    return prefixes[0], prefixes[1]


def test_per_source_and_per_phase_validation_losses(tmp_path):
    web, code = two_sources(tmp_path)
    phases = (f"data.phases=[{{blend:[[0.7,{web}],[0.3,{code}]],until_fraction:0.5}},"
              f"{{blend:[[1.0,{code}]],until_fraction:1.0}}]")
    train_small(tmp_path / "run", "data.corpus=prefixes", phases, "train.max_steps=4",
                "train.eval_interval=2", "train.eval_iters=4", "train.eval_per_source=true")
    records = logged(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # evaluated steps once, not twice
    for record in (records[1], records[3]):
        web_loss, code_loss = record["valid_loss/web"], record["valid_loss/code"]
        low, high = sorted((web_loss, code_loss))
        assert low <= record["valid_loss"] <= high  # a token-weighted mean of the two
        assert record["valid_loss/phase1"] == pytest.approx(0.7 * web_loss + 0.3 * code_loss, rel=1e-12)
        assert record["valid_loss/phase2"] == code_loss
    assert all("valid_loss" not in r for r in (records[0], records[2]))
