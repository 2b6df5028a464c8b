"""The dry run's accounting against oracles: whole-model counts, Megatron's bytes-per-parameter
rules, closed-form FLOPs, LatentMoE's d/l, and layout errors that name the key."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.planning import communication, memory, parameters, training_flops
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.planning.layout import check_layout, require_valid_layout
from nemotron_train.runtime.distributed import ParallelConfig
from nemotron_train.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
VOCAB = 512

SMALL = dict(hidden_size=64, num_attention_heads=4, num_query_groups=2, head_dim=16,
             mamba_num_heads=8, mamba_head_dim=8, mamba_state_dim=16, mamba_num_groups=2,
             ffn_hidden_size=96, num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32,
             moe_shared_expert_intermediate_size=48, seq_length=128, vocab_size=VOCAB)


def small_model(pattern: str, **overrides) -> HybridModelConfig:
    parsed_layers = len(pattern.split("/")[0].replace("|", ""))
    return HybridModelConfig(pattern=pattern, num_layers=parsed_layers, **{**SMALL, **overrides})


def build_whole_model(model: HybridModelConfig):
    """The complete HybridModel, every layer, on the meta device: the oracle for the counts."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemotron_train.runtime.device_redirect import allocate_on
    from nemotron_train.runtime.distributed import initialize_distributed
    from nemotron_train.runtime.setup import prepare_runtime

    prepare_runtime()
    initialize_distributed(ParallelConfig(backend="gloo"))
    model_parallel_cuda_manual_seed(0)
    config = model.transformer_config(perform_initialization=False)
    with allocate_on(torch.device("meta")):
        return model.build(config, VOCAB)


@pytest.fixture
def whole_model():
    from nemotron_train.runtime.distributed import destroy_distributed

    yield build_whole_model
    destroy_distributed()


@pytest.mark.parametrize("pattern, latent", [("MEM*E-ME", None), ("ME*EM/*E/*E", 32)])
def test_counts_from_one_layer_per_type_equal_the_whole_model(pattern, latent, whole_model):
    from megatron.core.transformer.moe.moe_layer import MoELayer

    model = small_model(pattern, moe_latent_size=latent, mtp_shared_weights=False)
    counts = parameters.count_parameters(model, VOCAB)
    summary = parameters.summarize_parameters(model, counts)

    full = whole_model(model)
    assert summary.total == sum(p.numel() for p in full.parameters())
    mtp = sum(p.numel() for p in full.mtp.parameters()) if hasattr(full, "mtp") else 0
    assert summary.total_without_mtp == summary.total - mtp

    def idle_expert_parameters(module) -> int:
        """Parameters of the routed experts a token does not visit, expert by expert."""
        idle = 0
        for layer in module.modules():
            if isinstance(layer, MoELayer):
                experts = list(layer.experts.local_experts)
                per_expert = sum(p.numel() for p in experts[0].parameters())
                idle += (len(experts) - model.moe_router_topk) * per_expert
        return idle

    embedding = sum(p.numel() for p in full.embedding.parameters())
    output = sum(p.numel() for p in full.output_layer.parameters())
    assert summary.active == summary.total_without_mtp - idle_expert_parameters(full.decoder)
    assert summary.active_without_input_embedding == summary.active - embedding
    assert summary.active_without_embeddings == summary.active - embedding - output


def test_shared_mtp_weights_are_stored_once():
    shared = small_model("ME*/*E/*E", mtp_shared_weights=True)
    separate = small_model("ME*/*E/*E", mtp_shared_weights=False)
    shared_counts = parameters.count_parameters(shared, VOCAB)
    separate_counts = parameters.count_parameters(separate, VOCAB)
    assert shared_counts.mtp_stored_depths == 1 and separate_counts.mtp_stored_depths == 2
    assert (parameters.summarize_parameters(separate, separate_counts).mtp
            == 2 * parameters.summarize_parameters(shared, shared_counts).mtp)


def test_dense_flops_are_six_per_weight_plus_the_causal_attention_sum():
    model = small_model("*-")
    counts = parameters.count_parameters(model, VOCAB)
    flops = training_flops.flops_per_token(model, counts, VOCAB)
    d, s, q, kv = model.hidden_size, model.seq_length, 4 * 16, 2 * 16
    matrices = d * (q + 2 * kv) + q * d + 2 * d * model.ffn_hidden_size + VOCAB * d
    # Causal attention over a sequence: token i scores i keys, sum 1..s = s(s+1)/2, 2 matmuls of
    # 2 FLOPs per multiply-add per channel; training = 3 x forward.
    attention = 3 * 2 * 2 * q * (s * (s + 1) / 2) / s
    assert flops.total == pytest.approx(6 * matrices + attention)
    assert flops.attention_core == pytest.approx(attention)


def test_latent_moe_cuts_traffic_and_expert_bytes_by_d_over_l():
    standard = small_model("ME")
    latent = small_model("ME", moe_latent_size=16)
    kwargs = dict(expert_parallel=4, activation_bytes=2, param_bytes=2)
    t_standard = communication.moe_traffic(standard, parameters.count_parameters(standard, VOCAB), **kwargs)
    t_latent = communication.moe_traffic(latent, parameters.count_parameters(latent, VOCAB), **kwargs)
    ratio = standard.hidden_size / latent.moe_latent_size
    assert t_latent.width_ratio == ratio
    assert t_standard.all_to_all_bytes_forward / t_latent.all_to_all_bytes_forward == ratio
    assert t_standard.expert_weight_bytes / t_latent.expert_weight_bytes == ratio
    # k copies of d (or l) channels out and back, bf16.
    assert t_standard.all_to_all_bytes_forward == 2 * standard.moe_router_topk * standard.hidden_size * 2
    assert t_standard.off_rank_fraction == 3 / 4


def synthetic_counts() -> parameters.ModuleCounts:
    """Round numbers instead of a build: one layer type, known shard classes."""
    layer = parameters.ParamSplit(tensor_parallel=800, expert=6400, replicated=100, matmul=7200)
    return parameters.ModuleCounts(
        layers={"moe": layer}, embedding=parameters.ParamSplit(tensor_parallel=1000),
        final_norm=parameters.ParamSplit(replicated=10),
        output_layer=parameters.ParamSplit(tensor_parallel=1000, matmul=1000),
        mtp_depth=None, mtp_layers=(), mtp_stored_depths=0, mamba=None, linear_weights={})


def test_memory_follows_megatrons_bytes_per_parameter():
    model = small_model("EEEE", vocab_size=VOCAB)
    counts = synthetic_counts()
    layout = memory.Layout(tensor=2, pipeline=2, context=1, expert=4, expert_tensor=1, world_size=32,
                               sequence_parallel=True, distributed_optimizer=True, micro_batch=1,
                               global_batch=64)
    sizes = memory.dtype_bytes(torch.bfloat16, grad_reduce_in_fp32=True)
    first, last = memory.memory_per_gpu(model, counts, layout, sizes, VOCAB)
    # Stage 0: two layers + embedding; TP halves the TP part, EP x ETP = 4 splits the experts.
    dense0 = (2 * 800 + 1000) / 2 + 2 * 100
    experts0 = 2 * 6400 / 4
    assert first.params == dense0 + experts0
    assert last.params == (2 * 800 + 1000) / 2 + 2 * 100 + 10 + 2 * 6400 / 4
    # bf16 weights, fp32 gradients, fp32 main copy + two Adam moments: 2 + 4 + 12 = 18 bytes.
    assert first.weights + first.gradients + first.optimizer_unsharded == 18 * first.params
    # Distributed optimizer: dense state over DP x CP = 8, expert state over 32 / (4 x 2) = 4.
    assert first.optimizer_distributed == 12 * (dense0 / 8 + experts0 / 4)
    assert first.microbatches_in_flight == 2 and last.microbatches_in_flight == 1


def test_moe_recompute_keeps_only_the_layer_input():
    model = small_model("ME")
    layout = memory.Layout(tensor=1, pipeline=1, context=1, expert=1, expert_tensor=1, world_size=1,
                               sequence_parallel=False, distributed_optimizer=False, micro_batch=2,
                               global_batch=2)
    kept = memory.activation_bytes_per_layer("moe", model, layout, 2, ("moe",))
    full = memory.activation_bytes_per_layer("moe", model, layout, 2)
    residual = 2 * model.seq_length * model.hidden_size * 2
    assert kept == 2 * residual
    assert full > model.moe_router_topk * kept


def test_activation_split_by_layer_type_is_the_hand_computed_bytes():
    """One micro-batch of 128 tokens over CP 2 (64 per rank), bf16 activations (2 bytes), TP 1.

    Residual R = 64 tokens x d 64 x 2 = 8192 bytes; every layer keeps its norm and mixer inputs, 2R.
    """
    from nemotron_train.planning.report import activation_split

    model = small_model("M*EM")
    layout = memory.Layout(tensor=1, pipeline=1, context=2, expert=1, expert_tensor=1, world_size=2,
                               sequence_parallel=False, distributed_optimizer=False, micro_batch=1,
                               global_batch=2)
    sizes = memory.dtype_bytes(torch.bfloat16, grad_reduce_in_fp32=True)
    counts = synthetic_counts()
    counts = parameters.ModuleCounts(**{**counts.__dict__, "layers": {
        "mamba": parameters.ParamSplit(), "attention": parameters.ParamSplit(), "moe": parameters.ParamSplit()}})
    two_r = 2 * 8192
    # Mamba: in_proj out z,x (2 x 64) + B,C (2 x 2 groups x 16) + dt (8 heads) = 200, plus y and
    # the gated-norm output (2 x 64): 328 channels x 64 tokens x 2 bytes.
    mamba = two_r + 64 * 2 * 328
    # Attention: Q (4 x 16) and output (64), K and V (2 x 2 groups x 16): 192 channels; fp32
    # softmax statistics for 4 heads.
    attention = two_r + 64 * 2 * 192 + 64 * 4 * 4
    # MoE: fp32 logits and scores over 8 experts; 2 routed copies of input, output (2 x 64),
    # fc1 and activation (2 x 32); shared expert fc1 and activation (2 x 48).
    moe = two_r + 64 * 8 * 2 * 4 + 2 * 64 * 2 * (2 * 64 + 2 * 32) + 64 * 2 * 48 * 2
    # Loss: final-norm and output-layer inputs, then bf16 logits and fp32 softmax over 512.
    loss = two_r + 64 * 512 * (4 + 2)
    (stage,) = memory.memory_per_gpu(model, counts, layout, sizes, VOCAB)
    split = activation_split(stage)
    assert (split["mamba"], split["attention"], split["moe"], split["loss_and_mtp"]) == (
        2 * mamba, attention, moe, loss)
    assert split["total"] == 453632 and split["recompute_peak"] == 0
    assert "no recompute" in memory.recompute_assumption(())

    # MoE recompute: the MoE layer keeps 2R, and one full MoE layer is alive during its backward.
    recomputed = dataclasses.replace(model, recompute=["moe"])
    (stage,) = memory.memory_per_gpu(recomputed, counts, layout, sizes, VOCAB)
    split = activation_split(stage)
    assert (split["moe"], split["recompute_peak"]) == (two_r, moe)
    assert "MoE layers keep only their input" in memory.recompute_assumption(("moe",))


def test_a_short_step_length_must_split_over_context_parallel_ranks():
    config = RunConfig(model=small_model("MEM*E-ME"), parallel=ParallelConfig(context=2),
                       train=TrainConfig(global_batch_size=32, micro_batch_size=1,
                                         short_seq_length=2, short_step_fraction=0.5))
    failed = [check for check in check_layout(config, 2) if not check.ok]
    assert [check.rule for check in failed] == ["sequence / 2CP (load-balanced CP)"]
    assert "train.short_seq_length=2" in failed[0].detail


def run_config(**parallel) -> RunConfig:
    return RunConfig(model=small_model("MEM*E-ME"), parallel=ParallelConfig(**parallel),
                     train=TrainConfig(global_batch_size=32, micro_batch_size=1))


@pytest.mark.parametrize("parallel, world, rule, key", [
    (dict(tensor=3, sequence_parallel=True), 3, "attention heads / TP", "parallel.tensor"),
    (dict(expert=3), 3, "experts / EP", "parallel.expert"),
    (dict(pipeline=3), 3, "layers / PP", "parallel.pipeline"),
    (dict(tensor=2, sequence_parallel=True), 3, "world size", "parallel.num_nodes"),
    (dict(context=3), 3, "sequence / 2CP (load-balanced CP)", "parallel.context"),
])
def test_layout_errors_name_the_rule_and_the_key(parallel, world, rule, key):
    config = run_config(**parallel)
    checks = check_layout(config, world)
    assert any(check.rule == rule and not check.ok for check in checks)
    with pytest.raises(ConfigError) as raised:
        require_valid_layout(config, checks)
    assert f"[{rule}]" in str(raised.value)
    assert any(check.key == key for check in checks if not check.ok)


def test_a_valid_layout_passes_every_rule():
    checks = check_layout(run_config(tensor=2, expert=4, expert_tensor=1, sequence_parallel=True), 8)
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]


def test_nvfp4_linear_flops_fractions_follow_the_policy_by_hand():
    """'MEM*ME' at d=64 under the NVFP4 policy: the last layer (5, MoE) is BF16 (15% of 6,
    rounded up), Mamba out_proj MXFP8, attention and output layer BF16, router fp32."""
    from nemotron_train.planning.report import precision_map
    from nemotron_train.precision.presets import PrecisionConfig

    model = small_model("MEM*ME")
    config = RunConfig(model=model, precision=PrecisionConfig(recipe="nvfp4"),
                       train=TrainConfig(global_batch_size=2, micro_batch_size=1))
    d, inner = 64, 8 * 8
    in_proj = d * (2 * inner + 2 * 2 * 16 + 8)  # z, x, B, C (2 groups x state 16), dt per head
    out_proj = inner * d
    experts = 2 * 2 * 32 * d                    # top-2 experts, fc1 + fc2 of width 32
    shared = 2 * 48 * d
    router = 8 * d
    attention = d * (4 * 16 + 2 * 2 * 16) + 4 * 16 * d
    output = VOCAB * d
    by_format = {"nvfp4": 3 * in_proj + experts + shared, "mxfp8": 3 * out_proj,
                 "bf16": experts + shared + attention + output, "fp32": 2 * router}
    total = sum(by_format.values())
    fractions = precision_map(config, parameters.count_parameters(model, VOCAB))["linear_flops_fraction"]
    assert fractions == pytest.approx({fmt: n / total for fmt, n in by_format.items()}, rel=1e-12)


def run_train(*overrides, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_dry_run_prints_the_report_and_writes_model_report_json(tmp_path):
    result = run_train("recipe=nano_30b", "dry_run=true", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "model_report.json").read_text())
    for key in ("total_params", "active_params", "flops_per_token", "memory_per_gpu_bytes", "layers",
                "precision"):
        assert key in report
    assert report["layers"]["mamba"] == 23 and report["layers"]["moe"] == 23
    modules = report["precision"]["modules"]
    assert set(modules.values()) == {"bf16", "fp32"}
    assert modules["decoder.layers.*.mlp.router"] == "fp32"  # Megatron-Core's fp32 router
    assert "decoder.layers.*.mixer.in_proj" in modules
    for heading in ("parameters", "FLOPs / token", "memory per GPU", "all-to-all", "layout checks",
                    "precision (bf16): linear-layer FLOPs"):
        assert heading in result.stdout
    assert (tmp_path / "run" / "config.yaml").exists()


def test_dry_run_rejects_a_layout_that_does_not_divide_the_model(tmp_path):
    result = run_train("recipe=nano_30b", "dry_run=true", "parallel.tensor=3", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "error: parallel.tensor=3" in result.stderr
    assert "[attention heads / TP]" in result.stderr and "[Mamba heads / TP]" in result.stderr
    assert not (tmp_path / "run" / "model_report.json").exists()
