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
from nemotron_train.precision.execution import apply_precision_plan, plan_precision
from nemotron_train.precision.stochastic_rounding import (
    StochasticRoundingStream,
    attach_rounding_stream,
)
from nemotron_train.runtime.distributed import megatron_parallel_fields


@dataclass
class ModelSetup:
    """The DDP-wrapped model chunks of this rank and the config they were built from."""

    chunks: list
    transformer_config: TransformerConfig
    vocab_size: int
    rounding_stream: Optional[StochasticRoundingStream] = None
    """The emulated NVFP4 stochastic rounding's own random stream (None without it)."""


def build_transformer_config(config) -> TransformerConfig:
    """Megatron-Core's TransformerConfig: model fields + parallel sizes + precision plan."""
    fields = plan_precision(config.precision, config.model.num_layers).transformer_fields
    return config.model.transformer_config(
        **megatron_parallel_fields(config.parallel),
        pipeline_dtype=fields["params_dtype"],
        **fields,
    )


def build_model(config, tokenizer_vocab_size: int, device) -> ModelSetup:
    """Build the bare HybridModel for this pipeline stage, move it to `device`, wrap it in DDP."""
    transformer_config = build_transformer_config(config)
    vocab_size = config.model.vocab_size or padded_vocab_size(tokenizer_vocab_size, config.parallel.tensor)
    model = config.model.build(
        transformer_config,
        vocab_size,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
    )
    model.to(device)
    # On the bare model: the policy's rules name HybridModel's modules, not a wrapper's.
    plan = plan_precision(config.precision, config.model.num_layers)
    apply_precision_plan(model, plan)
    rounding_stream = None
    if plan.path == "emulated" and plan.nvfp4_recipe.stochastic_rounding:
        rounding_stream = StochasticRoundingStream(config.seed, dist.get_rank(), device)
        attach_rounding_stream(model, rounding_stream)
    if transformer_config.bf16 or transformer_config.fp16:
        # As Megatron-LM does: one dtype for every parameter (MambaMixer keeps A_log and D
        # in fp32 otherwise), fp32 logits out; the optimizer keeps fp32 main params.
        model = Float16Module(transformer_config, model)
    if dist.get_rank() == 0:
        print(f"[nemotron-train] precision path: {plan.description}", flush=True)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.precision.grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
    )
    chunk = DistributedDataParallel(config=transformer_config, ddp_config=ddp_config, module=model)
    return ModelSetup(chunks=[chunk], transformer_config=transformer_config, vocab_size=vocab_size,
                      rounding_stream=rounding_stream)
