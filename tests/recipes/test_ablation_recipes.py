"""The ablation recipes: the paper arms' sizes from the dry run, the reinvestment rule, the arm names."""

import pytest
from hydra.errors import MissingConfigException

from nemotron_train.model.latent_moe import reinvested_latent_moe
from nemotron_train.planning.report import build_report
from tests.recipes.test_recipes import compose_recipe


@pytest.mark.parametrize("arm", ["standard", "latent"])
def test_paper_arms_have_about_8b_active_and_73b_total(arm):
    # LatentMoE paper, Table 1: both arms ~8B active / ~73B total.
    report = build_report(compose_recipe("ablation_latentmoe", [f"arm={arm}", "scale=paper"]))
    assert report["active_params"] == pytest.approx(8e9, rel=0.03)
    assert report["total_params"] == pytest.approx(73e9, rel=0.01)
    assert all(check["ok"] for check in report["layout"]["checks"])


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_latent_arm_reinvests_the_standard_arm(scale):
    standard = compose_recipe("ablation_latentmoe", ["arm=standard", f"scale={scale}"]).model
    latent = compose_recipe("ablation_latentmoe", ["arm=latent", f"scale={scale}"]).model
    rule = reinvested_latent_moe(standard.num_experts, standard.moe_router_topk,
                                 standard.hidden_size, latent.moe_latent_size)
    assert rule.width_ratio == 4 and latent.num_experts == rule.num_experts
    # The paper trains top-22 where the rule says 24; the small scale keeps 22/6 of top-3.
    assert latent.moe_router_topk == round(standard.moe_router_topk * 22 / 6)
    assert latent.hidden_size == standard.hidden_size and latent.pattern == standard.pattern


def test_mtp_arm_adds_supers_shared_block_to_the_same_model():
    baseline = compose_recipe("ablation_mtp", ["arm=baseline"]).model
    mtp = compose_recipe("ablation_mtp", ["arm=mtp"]).model
    assert mtp.pattern == baseline.pattern + "/*E/*E" and mtp.mtp_shared_weights
    assert baseline.parsed_pattern.mtp_depths == 0


@pytest.mark.parametrize("recipe, arm", [("ablation_latentmoe", "mtp"), ("ablation_mtp", "bogus")])
def test_an_arm_the_recipe_lacks_fails_naming_it(recipe, arm):
    with pytest.raises(MissingConfigException, match=arm):
        compose_recipe(recipe, [f"arm={arm}"])


@pytest.mark.slow
def test_the_mtp_ablation_chain_multirun_acceptance_report(tmp_path):
    """What the README runs, at 6 steps: both arms through Hydra's multirun, the MTP arm's
    draft acceptance, then one report holding both arms, the acceptance and the plot."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    sweep, out = tmp_path / "sweep", tmp_path / "report"

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True,
                                text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result

    run("train.py", "-m", "recipe=ablation_mtp", "arm=baseline,mtp", "train.max_steps=6",
        "optim.warmup_steps=2", "logging.log_interval=1", "train.eval_interval=6",
        f"hydra.sweep.dir={sweep}")
    run("-m", "nemotron_train.eval.mtp_acceptance", str(sweep / "1"), "--batches", "2")
    run("-m", "nemotron_train.report.ablation", str(sweep), "--out", str(out))
    report = json.loads((out / "ablation.json").read_text())
    arms = report["arms"]
    assert [arm["label"] for arm in arms] == ["baseline", "mtp"]
    assert all(arm["steps"] == 6 for arm in arms)
    assert not arms[0]["mtp_acceptance"] and set(arms[1]["mtp_acceptance"]) == {"mtp_1", "mtp_2"}
    assert all(0 <= rate <= 1 for rate in arms[1]["mtp_acceptance"].values())
    assert (out / "loss_curves.png").stat().st_size > 0
