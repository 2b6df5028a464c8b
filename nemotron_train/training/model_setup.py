"""Build this rank's model chunk from the run config and wrap it in Megatron-Core's DDP."""

from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import Float16Module

from nemotron_train.model.config import padded_vocab_size
from nemotron_train.precision.execution import apply_precision_plan
from nemotron_train.precision.presets import precision_settings
from nemotron_train.precision.stochastic_rounding import (
    StochasticRoundingStream,
    attach_rounding_stream,
)
from nemotron_train.runtime.distributed import megatron_parallel_fields
from nemotron_train.training.run_plan import RunPlan, plan_run
from nemotron_train.training.throughput import initialize_userbuffers


@dataclass
class ModelSetup:
    """The DDP-wrapped model chunks of this rank, the config they were built from, and the plan."""

    chunks: list
    transformer_config: TransformerConfig
    vocab_size: int
    plan: RunPlan
    rounding_stream: Optional[StochasticRoundingStream] = None
    """The emulated NVFP4 stochastic rounding's own random stream (None without it)."""


def build_transformer_config(config, plan: Optional[RunPlan] = None) -> TransformerConfig:
    """Megatron-Core's TransformerConfig: model fields + parallel sizes + the plan's precision
    and throughput fields. Without a plan (the dry run, which checks a layout for other
    machines), the precision preset's dtypes alone."""
    if plan is None:
        fields, extra = precision_settings(config.precision).transformer, {}
    else:
        fields = plan.precision.transformer_fields
        extra = dict(plan.throughput.transformer, deterministic_mode=config.train.deterministic)
    return config.model.transformer_config(
        **megatron_parallel_fields(config.parallel),
        pipeline_dtype=fields["params_dtype"],
        **fields,
        **extra,
    )


def build_model(config, tokenizer_vocab_size: int, device, plan: Optional[RunPlan] = None) -> ModelSetup:
    """Plan the run (unless `plan` is given) and print the plan, then build the bare
    HybridModel for this pipeline stage, move it to `device` and wrap it in DDP."""
    plan = plan or plan_run(config)
    if dist.get_rank() == 0:
        for line in plan.describe():
            print(f"[nemotron-train] {line}", flush=True)
    if plan.throughput.settings["tp_comm_overlap"]:
        initialize_userbuffers(config)
    transformer_config = build_transformer_config(config, plan)
    vocab_size = config.model.vocab_size or padded_vocab_size(tokenizer_vocab_size, config.parallel.tensor)
    model = config.model.build(
        transformer_config,
        vocab_size,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        spec=plan.precision.spec,
    )
    model.to(device)
    # On the bare model: the policy's rules name HybridModel's modules, not a wrapper's.
    apply_precision_plan(model, plan.precision)
    rounding_stream = None
    if plan.precision.path == "emulated" and plan.precision.nvfp4_techniques.stochastic_rounding:
        rounding_stream = StochasticRoundingStream(config.seed, dist.get_rank(), device)
        attach_rounding_stream(model, rounding_stream)
    if transformer_config.bf16 or transformer_config.fp16:
        # As Megatron-LM does: one dtype for every parameter (MambaMixer keeps A_log and D
        # in fp32 otherwise), fp32 logits out; the optimizer keeps fp32 main params.
        model = Float16Module(transformer_config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.precision.grad_reduce_in_fp32,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
        **plan.throughput.ddp,
    )
    chunk = DistributedDataParallel(config=transformer_config, ddp_config=ddp_config, module=model)
    return ModelSetup(chunks=[chunk], transformer_config=transformer_config, vocab_size=vocab_size,
                      plan=plan, rounding_stream=rounding_stream)
