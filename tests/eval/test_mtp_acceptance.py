"""Draft acceptance: MTP depth k's greedy token at t against the main head's greedy token at t+k."""

import pytest
import torch
from omegaconf import OmegaConf

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.eval.mtp_acceptance import greedy_acceptance, measure


def one_hot_logits(tokens, vocab=5):
    return torch.nn.functional.one_hot(torch.tensor([tokens]), vocab).float()


def test_acceptance_on_a_hand_checked_case():
    main = one_hot_logits([1, 2, 3, 4, 0])  # the main head's greedy tokens for t+1
    depth_1 = one_hot_logits([2, 3, 1, 0, 0])  # drafts for t+2; compared with main at t+1: 2,3,4,0
    depth_2 = one_hot_logits([3, 0, 0, 0, 0])  # drafts for t+3; compared with main at t+2: 3,4,0
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last position's next token is not real
    first, second = greedy_acceptance(main, [depth_1, depth_2], mask)
    assert (first.depth, first.accepted, first.counted) == (1, 2, 3)  # t=0,1 accepted, t=2 not, t=3 masked
    assert (second.depth, second.accepted, second.counted) == (2, 1, 2)  # t=0 accepted, t=1 not
    assert first.rate == pytest.approx(2 / 3)


def test_a_run_without_mtp_is_refused_before_loading(tmp_path):
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(RunConfig())))
    with pytest.raises(ConfigError, match=r"model.pattern='M\*EM-E': this run has no MTP block"):
        measure(tmp_path, batches=1)


def test_the_cli_measures_a_trained_checkpoint(tmp_path):
    """A real run (the MTP arm at reduced width, 2 steps) through train.py, then the CLI:
    depth k is counted at every position whose draft target t+1+k lies in the sequence."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    run_dir, seq, micro_batch, batches = tmp_path / "mtp", 64, 2, 2
    subprocess.run([sys.executable, "train.py", "recipe=ablation_mtp", "arm=mtp", f"hydra.run.dir={run_dir}",
                    "model.hidden_size=64", "model.num_experts=8", "model.moe_router_topk=2",
                    f"model.seq_length={seq}", "train.max_steps=2", "train.global_batch_size=2",
                    f"train.micro_batch_size={micro_batch}", "optim.warmup_steps=1",
                    "train.eval_interval=0"],
                   cwd=repo, env=env, check=True, capture_output=True, timeout=600)
    result = subprocess.run([sys.executable, "-m", "nemotron_train.eval.mtp_acceptance", str(run_dir),
                             "--batches", str(batches)],
                            cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    depths = json.loads((run_dir / "mtp_acceptance.json").read_text())["depths"]
    assert [d["depth"] for d in depths] == [1, 2]
    for d in depths:
        assert d["counted"] == batches * micro_batch * (seq - d["depth"])
        assert 0 <= d["accepted"] <= d["counted"]
    assert "| 1 |" in result.stdout
