"""The ablation report on two hand-written run directories: every number in its table."""

import json

import pytest
from omegaconf import OmegaConf

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.report.ablation import write_report


def write_run(run_dir, arm, latent_size, records, acceptance=None):
    """A run directory as train.py leaves it: config.yaml, metrics.jsonl, Hydra's overrides."""
    model = HybridModelConfig(pattern="ME", num_layers=2, hidden_size=64, head_dim=16, vocab_size=256,
                              num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32,
                              moe_shared_expert_intermediate_size=32, moe_latent_size=latent_size)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(RunConfig(model=model))))
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- recipe=ablation_latentmoe\n- arm={arm}\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if acceptance is not None:
        (run_dir / "mtp_acceptance.json").write_text(json.dumps({"depths": acceptance}))


def record(step, loss, tokens_per_s, **extra):
    return {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": tokens_per_s, **extra}


def test_report_holds_the_exact_numbers(tmp_path):
    sweep = tmp_path / "multirun"
    write_run(sweep / "0", "standard", None, [
        record(1, 8.0, 100.0), record(10, 6.0, 1000.0), record(20, 5.0, 1200.0),
        record(30, 4.0, 1100.0, valid_loss=4.5)])
    write_run(sweep / "1", "latent", 16, [
        record(1, 8.0, 50.0, mtp_1_loss=9.0), record(10, 6.5, 900.0, mtp_1_loss=7.0),
        record(20, 5.5, 700.0, mtp_1_loss=6.0), record(30, 3.5, 800.0, mtp_1_loss=5.25)],
        acceptance=[{"depth": 1, "accepted": 3, "counted": 4, "rate": 0.75}])
    arms = write_report([sweep], tmp_path / "out", window=2)
    standard, latent = arms
    assert (standard.label, latent.label) == ("standard", "latent")
    assert (standard.final_loss, latent.final_loss) == (4.0, 3.5)
    assert (standard.smoothed_loss, latent.smoothed_loss) == (4.5, 4.5)  # mean of the last 2
    assert (standard.valid_loss, latent.valid_loss) == (4.5, None)
    assert (standard.median_tokens_per_s, latent.median_tokens_per_s) == (1100.0, 800.0)  # step 1 left out
    # bf16 (RunConfig's default preset): a routed copy goes out and back at 2 x width x 2 bytes.
    assert (standard.all_to_all_bytes_per_routed_copy, latent.all_to_all_bytes_per_routed_copy) == (256, 64)
    # top-2 on the one MoE layer: 2 copies x (dispatch + combine) x width x 2 bytes.
    assert (standard.all_to_all_bytes_per_token, latent.all_to_all_bytes_per_token) == (512, 128)
    # top-2 experts of fc1 (32 x width) + fc2 (width x 32) bf16 weights.
    assert (standard.expert_weight_bytes_per_token, latent.expert_weight_bytes_per_token) == (16384, 4096)
    # Latent adds its two projections (2 x 64 x 16) and shrinks 8 experts by 2 x (64 - 16) x 32.
    assert latent.total_params - standard.total_params == 2 * 64 * 16 - 8 * 2 * (64 - 16) * 32
    assert latent.mtp_losses == {"mtp_1": 5.25} and latent.mtp_acceptance == {"mtp_1": 0.75}
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| | standard | latent |" in table
    assert "| smoothed loss (mean of last 2 logged steps) | 4.5000 | 4.5000 |" in table
    assert "| mtp_1 draft acceptance (held out) | — | 75.00% |" in table
    assert "| median tokens/s | 1,100 | 800 |" in table
    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [arm["label"] for arm in saved["arms"]] == ["standard", "latent"]
    assert (tmp_path / "out" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_directory_without_runs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="run_dir=.*neither a run directory"):
        write_report([tmp_path], tmp_path / "out")
