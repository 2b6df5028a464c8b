"""The dry run: validate a recipe's layout and report its parameters, FLOPs, memory and MoE traffic.

`python train.py recipe=<name> dry_run=true` lands in `dry_run`, which checks the layout,
counts parameters from Megatron-Core modules built on the meta device (no weights are
allocated), prints a readable report and writes `model_report.json` into the run directory.
"""

import json
from dataclasses import asdict
from pathlib import Path

from nemotron_train.planning import communication, memory, parameters, training_flops
from nemotron_train.model.config import padded_vocab_size
from nemotron_train.planning.layout import check_layout, dry_run_world_size, require_valid_layout
from nemotron_train.precision.execution import precision_policy
from nemotron_train.precision.policy import linear_flops_fractions, pattern_formats
from nemotron_train.precision.presets import precision_settings

REPORT_FILE = "model_report.json"


def precision_map(config, counts) -> dict:
    """The precision policy applied to the model (`precision/policy.py`): the numeric
    format of every weight-matrix module, keyed by module-name pattern (a pattern whose
    layers differ, the last layers in BF16, is split by layer indices), and the fraction
    of the linear-layer training FLOPs computed in each format."""
    policy = precision_policy(config.precision, config.model.num_layers)
    main = config.model.parsed_pattern.main
    return {
        "modules": pattern_formats(policy, main, counts.linear_modules),
        "linear_flops_fraction": linear_flops_fractions(
            policy, main, training_flops.linear_flops_by_module(config.model, counts)),
    }


def dry_run(config, run_dir: Path) -> dict:
    """Validate, count, print and write `model_report.json`; return the report."""
    report = build_report(config)
    print(format_report(report), flush=True)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(f"[nemotron-train] wrote {run_dir / REPORT_FILE}", flush=True)
    return report


def resolve_vocab_size(config) -> int:
    """The vocabulary the run will build: the model's, else the tokenizer's padded (as the run does)."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size
    from nemotron_train.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(config.data.tokenizer, config.data.cache_dir)
    return padded_vocab_size(tokenizer.vocab_size, config.parallel.tensor)


def build_report(config) -> dict:
    """Everything the dry run knows about `config` (a RunConfig), as JSON-ready data."""
    model, parallel = config.model, config.parallel
    world_size = dry_run_world_size(parallel)
    checks = check_layout(config, world_size)
    require_valid_layout(config, checks)
    vocab_size = resolve_vocab_size(config)
    counts = parameters.count_parameters(model, vocab_size)
    params = parameters.summarize_parameters(model, counts)
    flops = training_flops.flops_per_token(model, counts, vocab_size)
    settings = precision_settings(config.precision)
    sizes = memory.dtype_bytes(settings.transformer["params_dtype"], config.precision.grad_reduce_in_fp32)
    layout = memory.Layout(
        tensor=parallel.tensor, pipeline=parallel.pipeline, context=parallel.context,
        expert=parallel.expert, expert_tensor=parallel.expert_tensor or parallel.tensor,
        world_size=world_size, sequence_parallel=parallel.sequence_parallel,
        distributed_optimizer=parallel.distributed_optimizer,
        micro_batch=config.train.micro_batch_size, global_batch=config.train.global_batch_size,
    )
    stages = memory.memory_per_gpu(model, counts, layout, sizes, vocab_size)
    traffic = communication.moe_traffic(model, counts, expert_parallel=parallel.expert,
                                     activation_bytes=sizes.activation, param_bytes=sizes.param)
    parsed = model.parsed_pattern
    tokens_per_step = config.train.global_batch_size * model.seq_length
    peak = max(stages, key=lambda stage: stage.peak)
    return {
        "recipe": config.recipe,
        "precision_recipe": config.precision.recipe,
        "total_params": params.total,
        "total_params_without_mtp": params.total_without_mtp,
        "active_params": params.active,
        "active_params_without_input_embedding": params.active_without_input_embedding,
        "active_params_without_embeddings": params.active_without_embeddings,
        "flops_per_token": flops.total,
        "memory_per_gpu_bytes": peak.peak,
        "layers": {
            "pattern": model.pattern,
            "num_layers": parsed.num_layers,
            **{layer_type: parsed.count(layer_type) for layer_type in ("mamba", "moe", "attention", "mlp")},
            "mtp_block": parsed.mtp_block,
            "mtp_depths": parsed.mtp_depths,
            "mtp_shared_weights": model.mtp_shared_weights,
        },
        "precision": precision_map(config, counts),
        "params": {
            "by_layer_type": params.by_layer_type,
            "embedding": params.embedding,
            "output_layer": params.output_layer,
            "final_norm": params.final_norm,
            "mtp": params.mtp,
            "mtp_active_per_depth": params.mtp_active,
            "vocab_size": vocab_size,
        },
        "flops": {
            "per_token": flops.total,
            "per_token_without_mtp": flops.total_without_mtp,
            "by_layer_type": flops.by_layer_type,
            "output_layer": flops.output_layer,
            "mtp": flops.mtp,
            "attention_core": flops.attention_core,
            "attention_core_per_context_token": flops.attention_core_per_context_token,
            "mamba_scan": flops.mamba_scan,
            "seq_length": flops.seq_length,
            "per_step": flops.total * tokens_per_step,
            "tokens_per_step": tokens_per_step,
            "mamba_shape": asdict(counts.mamba) if counts.mamba else None,
        },
        "memory": {
            "gpu_capacity_bytes": memory.GPU_MEMORY_BYTES,
            "fits": peak.peak <= memory.GPU_MEMORY_BYTES,
            "peak_stage": peak.stage,
            "peak_with_distributed_optimizer": max(s.total(True) for s in stages),
            "peak_without_distributed_optimizer": max(s.total(False) for s in stages),
            "bytes_per_element": asdict(sizes),
            "activation_bytes_per_layer": {
                layer_type: memory.activation_bytes_per_layer(
                    layer_type, model, layout, sizes.activation, tuple(model.recompute))
                for layer_type in counts.layers},
            "recompute": list(model.recompute),
            "recompute_assumption": memory.recompute_assumption(tuple(model.recompute)),
            "activation_split": activation_split(peak),
            "stages": [asdict(stage) | {"peak": stage.peak} for stage in stages],
        },
        "moe_communication": asdict(traffic) if traffic else None,
        "layout": {
            "tensor": layout.tensor, "pipeline": layout.pipeline, "context": layout.context,
            "expert": layout.expert, "expert_tensor": layout.expert_tensor,
            "sequence_parallel": layout.sequence_parallel,
            "distributed_optimizer": layout.distributed_optimizer,
            "num_nodes": parallel.num_nodes, "gpus_per_node": parallel.gpus_per_node,
            "world_size": world_size, "data_parallel": layout.data,
            "expert_data_parallel": layout.expert_data,
            "micro_batch_size": layout.micro_batch, "global_batch_size": layout.global_batch,
            "num_microbatches": layout.num_microbatches,
            "checks": [asdict(check) for check in checks],
        },
    }


def activation_split(stage: memory.StageMemory) -> dict:
    """A stage's activation bytes by where they are kept (all micro-batches in flight)."""
    return activation_split_of(asdict(stage))


def activation_split_of(stage: dict) -> dict:
    split = {layer_type: stage["activations_by_layer_type"].get(layer_type, 0.0)
             for layer_type in ("mamba", "attention", "moe", "mlp")}
    return {**split, "loss_and_mtp": stage["loss_and_mtp"], "recompute_peak": stage["recompute_peak"],
            "total": stage["activations"], "microbatches_in_flight": stage["microbatches_in_flight"]}


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _flops(n: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}FLOP"
    return f"{n:.0f} FLOP"


def format_report(report: dict) -> str:
    """The report as a few aligned tables."""
    lines = []
    add = lines.append
    layers, params, flops = report["layers"], report["params"], report["flops"]
    memory, layout = report["memory"], report["layout"]
    add(f"== {report['recipe']}: {layers['num_layers']} layers "
        f"({layers['mamba']} Mamba, {layers['moe']} MoE, {layers['attention']} attention, "
        f"{layers['mlp']} MLP)" + (f", MTP '{layers['mtp_block']}' x {layers['mtp_depths']}"
                                   f"{' (shared weights)' if layers['mtp_shared_weights'] else ''}"
                                   if layers["mtp_depths"] else ""))
    add("")
    add(f"{'parameters':<24}{'layers':>7}{'per layer':>12}{'total':>12}{'active/layer':>14}")
    for layer_type, row in params["by_layer_type"].items():
        add(f"{layer_type:<24}{row['layers']:>7}{_count(row['per_layer']):>12}{_count(row['total']):>12}"
            f"{_count(row['active_per_layer']):>14}")
    for name in ("embedding", "output_layer", "final_norm", "mtp"):
        if params[name]:
            add(f"{name:<24}{'':>7}{'':>12}{_count(params[name]):>12}")
    add(f"{'total':<24}{'':>7}{'':>12}{_count(report['total_params']):>12}"
        f"   (without MTP {_count(report['total_params_without_mtp'])})")
    add(f"active per token: {_count(report['active_params'])} with both embeddings, "
        f"{_count(report['active_params_without_input_embedding'])} without the input embedding, "
        f"{_count(report['active_params_without_embeddings'])} without either")
    add("")
    add(f"{'FLOPs / token (fwd+bwd)':<24}{'':>7}{'':>12}{'total':>12}")
    for layer_type, value in flops["by_layer_type"].items():
        add(f"{layer_type:<24}{'':>7}{'':>12}{_flops(value):>12}")
    add(f"{'output_layer':<24}{'':>7}{'':>12}{_flops(flops['output_layer']):>12}")
    if flops["mtp"]:
        add(f"{'mtp':<24}{'':>7}{'':>12}{_flops(flops['mtp']):>12}")
    add(f"{'total':<24}{'':>7}{'':>12}{_flops(flops['per_token']):>12}"
        f"   ({_flops(flops['per_step'])} per step of {_count(flops['tokens_per_step'])} tokens)")
    seq, slope = flops["seq_length"], flops["attention_core_per_context_token"]
    add(f"attention core (QK^T, AV) at seq {seq}: {_flops(flops['attention_core'])} per token, linear in "
        f"seq: +{_flops(slope)} per token per extra token of context "
        f"({_flops(flops['attention_core'] + slope * seq)} at seq {2 * seq}); Mamba conv + scan "
        f"{_flops(flops['mamba_scan'])}, independent of seq")
    add("")
    world = (f"{layout['num_nodes']} nodes x {layout['gpus_per_node']} GPUs = {layout['world_size']} GPUs"
             if layout["num_nodes"] else
             f"{layout['world_size']} GPUs (no parallel.num_nodes: the smallest world the layout allows)")
    add(f"layout: TP {layout['tensor']} PP {layout['pipeline']} CP {layout['context']} EP {layout['expert']} "
        f"ETP {layout['expert_tensor']} SP {layout['sequence_parallel']} | {world}, "
        f"DP {layout['data_parallel']}, expert DP {layout['expert_data_parallel']}, "
        f"micro-batch {layout['micro_batch_size']} x {layout['num_microbatches']} micro-batches")
    failed = [check for check in layout["checks"] if not check["ok"]]
    add(f"layout checks: {len(layout['checks']) - len(failed)}/{len(layout['checks'])} pass" +
        "".join(f"\n  FAIL {check['rule']}: {check['detail']}" for check in failed))
    add("")
    add(f"{'memory per GPU':<16}{'params':>10}{'weights':>11}{'grads':>11}{'optim dist':>11}"
        f"{'optim full':>11}{'activ.':>11}{'reserve':>10}{'total':>11}")
    for stage in memory["stages"]:
        add(f"{'stage ' + str(stage['stage']):<16}{_count(stage['params']):>10}{_gb(stage['weights']):>11}"
            f"{_gb(stage['gradients']):>11}{_gb(stage['optimizer_distributed']):>11}"
            f"{_gb(stage['optimizer_unsharded']):>11}{_gb(stage['activations']):>11}"
            f"{_gb(stage['reserve']):>10}{_gb(stage['peak']):>11}")
    add(f"peak {_gb(report['memory_per_gpu_bytes'])} of {_gb(memory['gpu_capacity_bytes'])} "
        f"({'fits' if memory['fits'] else 'DOES NOT FIT'}; total uses optim "
        f"{'dist' if layout['distributed_optimizer'] else 'full'}); with the distributed optimizer "
        f"{_gb(memory['peak_with_distributed_optimizer'])}, without "
        f"{_gb(memory['peak_without_distributed_optimizer'])}")
    per_layer = ", ".join(f"{t} {_gb(b)}" for t, b in memory["activation_bytes_per_layer"].items())
    add(f"activations per layer and micro-batch at seq {flops['seq_length']}: {per_layer}")
    add("")
    columns = ("mamba", "attention", "moe", "mlp", "loss_and_mtp", "recompute_peak")
    add(f"{'activations / GPU':<18}{'in flight':>10}" + "".join(f"{c:>15}" for c in columns) + f"{'total':>11}")
    for stage in memory["stages"]:
        split = activation_split_of(stage)
        add(f"{'stage ' + str(stage['stage']):<18}{stage['microbatches_in_flight']:>10}"
            + "".join(f"{_gb(split[c]):>15}" for c in columns) + f"{_gb(stage['activations']):>11}")
    add(f"recompute assumed: {memory['recompute_assumption']}")
    precision = report["precision"]
    add("")
    fractions = ", ".join(f"{fmt} {share:.1%}" for fmt, share in precision["linear_flops_fraction"].items())
    add(f"precision ({report['precision_recipe']}): linear-layer FLOPs {fractions}")
    width = max(map(len, precision["modules"]))
    for module, fmt in precision["modules"].items():
        add(f"  {module:<{width}}  {fmt}")
    traffic = report["moe_communication"]
    if traffic:
        add("")
        latent = (f"; LatentMoE dispatches at l = {traffic['dispatch_width']}, d/l = "
                  f"{traffic['width_ratio']:.0f}x less traffic and expert weight per routed copy than at d"
                  if traffic["width_ratio"] > 1 else "")
        add(f"MoE per token and layer: all-to-all {traffic['all_to_all_bytes_forward'] / 1e3:.1f} KB forward "
            f"(dispatch + combine), {traffic['all_to_all_bytes_training'] / 1e3:.1f} KB with backward, "
            f"{traffic['off_rank_fraction']:.0%} of it leaving the GPU; routed-expert weights read "
            f"{traffic['expert_weight_bytes'] / 1e6:.1f} MB{latent}")
    return "\n".join(lines)
