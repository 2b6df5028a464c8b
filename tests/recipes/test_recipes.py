"""The Nemotron 3 recipes: published sizes from the dry run, a layout that fits an 80 GB GPU,
the schedule in tokens, and one real training step of every recipe at reduced width."""

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from nemotron_train.config.schema import register_schema
from nemotron_train.planning.report import build_report
from nemotron_train.training.optimizer import schedule_steps

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = ("nano_30b", "super_120b", "ultra_550b")
TOKENS_PER_STEP = 3072 * 8192


def compose_recipe(name: str, overrides=()):
    """The RunConfig `python train.py recipe=<name> <overrides>` would run."""
    register_schema()
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={name}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves the `recipe: ${hydra:...}` interpolation
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_object(cfg)


@pytest.fixture(scope="module")
def reports() -> dict:
    return {name: build_report(compose_recipe(name)) for name in RECIPES}


# Published sizes (nemotron3_reference.md). Super's 120.6B is its main stack: 40 MoE layers of
# 2.87B each (the pattern's 40 `E`) give 120.67B before the MTP block's 2.94B; the reference
# notes' "117.7B + MTP" hand count has one MoE layer too few. Ultra's targets exclude MTP.
@pytest.mark.parametrize("name, field, target, tolerance", [
    ("nano_30b", "total_params", 31.6e9, 0.01),
    ("nano_30b", "active_params_without_input_embedding", 3.2e9, 0.05),
    ("nano_30b", "active_params", 3.6e9, 0.05),
    ("super_120b", "total_params_without_mtp", 120.6e9, 0.01),
    ("super_120b", "active_params", 12.7e9, 0.05),
    ("ultra_550b", "total_params_without_mtp", 550e9, 0.03),
    ("ultra_550b", "active_params_without_embeddings", 55e9, 0.03),
])
def test_dry_run_matches_the_published_sizes(reports, name, field, target, tolerance):
    assert reports[name][field] == pytest.approx(target, rel=tolerance)


def test_nano_has_no_mtp(reports):
    assert reports["nano_30b"]["total_params"] == reports["nano_30b"]["total_params_without_mtp"]


@pytest.mark.parametrize("name", ["super_120b", "ultra_550b"])
def test_one_shared_mtp_block_serves_both_depths(reports, name):
    report = reports[name]
    d = compose_recipe(name).model.hidden_size
    by_type = report["params"]["by_layer_type"]
    assert report["layers"]["mtp_block"] == "*E" and report["layers"]["mtp_depths"] == 2
    # enorm and hnorm, the 2d -> d projection, the block's attention and MoE layers, its final
    # norm: stored once although applied at two depths.
    expected = 2 * d + 2 * d * d + by_type["attention"]["per_layer"] + by_type["moe"]["per_layer"] + d
    assert report["params"]["mtp"] == expected
    assert report["total_params"] == report["total_params_without_mtp"] + expected


@pytest.mark.parametrize("name, layers", [
    ("nano_30b", (52, 23, 23, 6)), ("super_120b", (88, 40, 40, 8)), ("ultra_550b", (108, 52, 48, 8)),
])
def test_layer_counts(reports, name, layers):
    counted = reports[name]["layers"]
    assert (counted["num_layers"], counted["mamba"], counted["moe"], counted["attention"]) == layers


@pytest.mark.parametrize("name", RECIPES)
def test_default_layout_fits_an_80gb_gpu_on_the_named_nodes(reports, name):
    report = reports[name]
    layout = report["layout"]
    assert layout["num_nodes"] and layout["gpus_per_node"] == 8
    assert layout["world_size"] == layout["num_nodes"] * 8
    assert all(check["ok"] for check in layout["checks"])
    assert report["memory_per_gpu_bytes"] <= 80e9  # the H100 80GB budget, not the report's own flag
    assert report["memory"]["peak_with_distributed_optimizer"] < report["memory"]["peak_without_distributed_optimizer"]


@pytest.mark.parametrize("name, tokens, warmup_tokens, lr", [
    ("nano_30b", 25e12, 8.4e9, 1e-3), ("super_120b", 25e12, 200e9, 4.5e-4), ("ultra_550b", 20e12, 200e9, 2.5e-4),
])
def test_schedule_is_the_published_token_budget_in_steps(name, tokens, warmup_tokens, lr):
    config = compose_recipe(name)
    tokens_per_step = config.train.global_batch_size * config.model.seq_length
    assert tokens_per_step == TOKENS_PER_STEP
    assert config.train.max_steps == math.ceil(tokens / TOKENS_PER_STEP)
    steps = schedule_steps(config.optim, config.train.max_steps, tokens_per_step)
    assert steps.warmup == math.ceil(warmup_tokens / TOKENS_PER_STEP)
    # WSD: stable until 80%, then decay over the final 20% (5T of Nano's and Super's 25T).
    assert steps.wsd_decay * tokens_per_step == pytest.approx(0.2 * tokens, rel=1e-5)
    assert config.optim.decay_style == "WSD"
    assert config.optim.lr == lr and config.optim.min_lr == pytest.approx(lr / 100)
    assert (config.optim.adam_beta1, config.optim.adam_beta2, config.optim.weight_decay) == (0.9, 0.95, 0.1)


REDUCED_WIDTH = [
    "model.hidden_size=64", "model.num_attention_heads=4", "model.head_dim=16",
    "model.mamba_num_heads=8", "model.mamba_head_dim=8", "model.mamba_state_dim=16",
    "model.moe_ffn_hidden_size=16", "model.moe_shared_expert_intermediate_size=32",
    "model.seq_length=64", "model.vocab_size=null",
    # One process: the model options stay, the parallel sizes go to 1.
    "parallel.tensor=1", "parallel.pipeline=1", "parallel.expert=1", "parallel.sequence_parallel=false",
    "parallel.num_nodes=null",
    "train.global_batch_size=2", "train.micro_batch_size=2", "train.max_steps=1",
    "optim.warmup_tokens=null", "checkpoint.save_final=false",
    # The embedded corpus instead of the recipe's (user-provided) pretraining prefixes.
    "data=stdlib", "data.stdlib_max_files=100",
    # bf16 matmuls are ~25x slower than fp32 on CPUs without bf16 units; presets have their own tests.
    "precision=fp32",
]
# Experts shrink, top-k stays: Super and Ultra route 22 of 24, Nano 6 of 8; the latent stays < d.
EXPERTS = {"nano_30b": ["model.num_experts=8"],
           "super_120b": ["model.num_experts=24", "model.moe_latent_size=32"],
           "ultra_550b": ["model.num_experts=24", "model.moe_latent_size=32"]}


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("nemotron_train_cache"))


@pytest.mark.parametrize("name", RECIPES)
def test_one_training_step_at_reduced_width(name, data_cache, tmp_path):
    from nemotron_train.training.loop import train

    config = compose_recipe(name, [*REDUCED_WIDTH, *EXPERTS[name], f"data.cache_dir={data_cache}"])
    full = compose_recipe(name)
    assert config.model.pattern == full.model.pattern
    assert config.model.mtp_shared_weights == full.model.mtp_shared_weights
    assert config.model.moe_router_topk == full.model.moe_router_topk
    assert (config.model.moe_latent_size is None) == (full.model.moe_latent_size is None)

    result = train(config, tmp_path)
    assert result.final_step == 1
    (step, loss), = result.losses
    # An untrained model predicts close to uniformly over the (builtin, 4096-token) vocabulary.
    assert math.isfinite(loss) and abs(loss - math.log(4096)) < 1.0


def test_nano_cpt_512k_is_the_reports_layout_and_budget_and_fits():
    config = compose_recipe("nano_30b_cpt_512k")
    report = build_report(config)
    layout = report["layout"]
    assert (layout["tensor"], layout["pipeline"], layout["context"], layout["expert"]) == (8, 4, 8, 8)
    assert all(check["ok"] for check in layout["checks"]), [c for c in layout["checks"] if not c["ok"]]
    assert report["memory_per_gpu_bytes"] < 80e9
    assert 48 % layout["data_parallel"] == 0
    # 121B tokens at 48 x 512k per step; a 4k step reads 128 x 48 sequences: the same tokens.
    lengths, train = config.model.seq_length, config.train
    assert lengths == 524288 and train.global_batch_size == 48
    assert train.max_steps == math.ceil(121e9 / (48 * 524288))
    assert train.global_batch_size * (lengths // train.short_seq_length) * train.short_seq_length == 48 * 524288
    assert (config.optim.decay_style, config.optim.lr) == ("constant", 1e-5)
    split = report["memory"]["activation_split"]
    peak = report["memory"]["stages"][report["memory"]["peak_stage"]]
    parts = ("mamba", "attention", "moe", "mlp", "loss_and_mtp", "recompute_peak")
    assert sum(split[part] for part in parts) == pytest.approx(split["total"]) == peak["activations"]
    assert split["mamba"] > 0 and split["attention"] > 0 and split["moe"] > 0
    assert report["memory"]["recompute_assumption"].startswith("no recompute")
