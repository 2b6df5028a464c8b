"""Does a parallel layout divide this model? Every rule Megatron-Core would otherwise assert on.

`check_layout` returns one named check per rule so a dry run can show all of them;
`require_valid_layout` turns the failures into one ConfigError naming every key to fix.
"""

import math
from dataclasses import dataclass

from nemotron_train.errors import ConfigError


@dataclass(frozen=True)
class LayoutCheck:
    """One divisibility or consistency rule, checked."""

    rule: str
    key: str
    """The config key to change when the rule fails."""
    ok: bool
    detail: str


def dry_run_world_size(parallel) -> int:
    """The recipe's planned world size, else the smallest one its layout allows."""
    if parallel.planned_world_size is not None:
        return parallel.planned_world_size
    expert_span = parallel.expert * (parallel.expert_tensor or parallel.tensor)
    # DP x CP x TP must be a multiple of EP x ETP (Megatron-Core's expert groups tile the world).
    data = expert_span // math.gcd(expert_span, parallel.context * parallel.tensor)
    return parallel.model_parallel_size * data


def check_layout(config, world_size: int) -> list[LayoutCheck]:
    """Every rule the run's layout must satisfy at `world_size` GPUs, the model's rules first."""
    model, parallel, train = config.model, config.parallel, config.train
    tp, pp, cp, ep = parallel.tensor, parallel.pipeline, parallel.context, parallel.expert
    etp = parallel.expert_tensor or tp
    parsed = model.parsed_pattern
    symbols = set(parsed.main) | set(parsed.mtp_block or "")
    checks = []

    def rule(name: str, key: str, ok: bool, detail: str):
        checks.append(LayoutCheck(rule=name, key=key, ok=bool(ok), detail=detail))

    def divides(name: str, key: str, divisor: int, value: int, what: str):
        rule(name, key, value % divisor == 0, f"{what}={value} is {'' if value % divisor == 0 else 'not '}"
             f"a multiple of {key}={divisor}")

    if "*" in symbols:
        divides("attention heads / TP", "parallel.tensor", tp, model.num_attention_heads,
                "model.num_attention_heads")
        groups = model.num_query_groups
        # Fewer KV heads than TP ranks is allowed: each rank gathers QKV and keeps its group.
        rule("KV heads / TP", "parallel.tensor", groups % tp == 0 or tp % groups == 0,
             f"model.num_query_groups={groups} must be a multiple or a divisor of parallel.tensor={tp}")
    if "M" in symbols:
        divides("Mamba heads / TP", "parallel.tensor", tp, model.mamba_num_heads, "model.mamba_num_heads")
        divides("Mamba groups / TP", "parallel.tensor", tp, model.mamba_num_groups, "model.mamba_num_groups")
    if "-" in symbols:
        divides("dense MLP width / TP", "parallel.tensor", tp, model.ffn_hidden_size, "model.ffn_hidden_size")
    if "E" in symbols:
        divides("experts / EP", "parallel.expert", ep, model.num_experts, "model.num_experts")
        divides("expert width / ETP", "parallel.expert_tensor", etp, model.moe_ffn_hidden_size,
                "model.moe_ffn_hidden_size")
        if model.moe_shared_expert_intermediate_size:
            divides("shared expert width / TP", "parallel.tensor", tp,
                    model.moe_shared_expert_intermediate_size, "model.moe_shared_expert_intermediate_size")
        rule("MoE with TP needs sequence parallelism", "parallel.sequence_parallel",
             tp == 1 or parallel.sequence_parallel, f"TP {tp}, sequence_parallel={parallel.sequence_parallel}")
    if model.vocab_size is not None:
        divides("vocabulary / TP", "parallel.tensor", tp, model.vocab_size, "model.vocab_size")
    if len(parsed.stages) > 1:
        rule("pipeline stages", "parallel.pipeline", len(parsed.stages) == pp,
             f"model.pattern names {len(parsed.stages)} '|' stages for PP {pp}")
    else:
        divides("layers / PP", "parallel.pipeline", pp, parsed.num_layers, "model.num_layers")
    lengths = [("model.seq_length", model.seq_length)]
    if train.short_seq_length and train.short_step_fraction:
        lengths.append(("train.short_seq_length", train.short_seq_length))
    for length_key, length in lengths:
        if parallel.sequence_parallel:
            divides("sequence / TP (sequence parallel)", "parallel.tensor", tp, length, length_key)
        if cp > 1:
            divides("sequence / 2CP (load-balanced CP)", "parallel.context", 2 * cp, length, length_key)
    # The world: checked after the model rules so the first error names the size to change.
    model_parallel = tp * pp * cp
    rule("world size", "parallel.num_nodes", world_size % model_parallel == 0,
         f"{world_size} GPUs (parallel.num_nodes x parallel.gpus_per_node) must be a multiple of "
         f"TP {tp} x PP {pp} x CP {cp} = {model_parallel}")
    data = world_size // model_parallel if world_size % model_parallel == 0 else 0
    rule("expert groups tile the world", "parallel.expert", data and (data * cp * tp) % (ep * etp) == 0,
         f"EP {ep} x ETP {etp} must divide DP {data} x CP {cp} x TP {tp}")
    samples_per_step = train.micro_batch_size * max(data, 1)
    rule("global batch / (micro batch x DP)", "train.global_batch_size",
         data and train.global_batch_size % samples_per_step == 0,
         f"train.global_batch_size={train.global_batch_size} must be a multiple of "
         f"train.micro_batch_size={train.micro_batch_size} x DP {data}")
    rule("Megatron-Core accepts the layout", "parallel", *_megatron_accepts(config))
    return checks


def _megatron_accepts(config) -> tuple[bool, str]:
    """Build the run's TransformerConfig: Megatron-Core's own cross-field checks run there."""
    from nemotron_train.training.model_setup import build_transformer_config

    try:
        build_transformer_config(config)
    except (ValueError, AssertionError, TypeError) as error:
        return False, f"TransformerConfig rejects it: {error}"
    return True, "TransformerConfig built with the run's parallel, recompute and MoE settings"


def require_valid_layout(config, checks: list[LayoutCheck]) -> None:
    """Raise one ConfigError naming every failed rule, or return."""
    failed = [check for check in checks if not check.ok]
    if failed:
        listing = "; ".join(f"[{check.rule}] {check.detail}" for check in failed)
        value = config
        for part in failed[0].key.split("."):
            value = getattr(value, part)
        raise ConfigError(failed[0].key, value, f"the parallel layout does not fit the model: {listing}")
