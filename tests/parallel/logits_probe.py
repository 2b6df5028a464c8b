"""The logits of one fixed batch under a parallel layout, for the resharding test.

Run like train.py (same recipes, same overrides, torchrun for several processes):

    PROBE_OUT=logits.pt [PROBE_SAVE=ckpt_dir] python -m tests.parallel.logits_probe recipe=tiny ...

It builds the model through the trainer's own setup, loads `checkpoint.load` (weights
only, through dist_checkpointing, resharded to this layout) when given, saves a checkpoint
with the trainer's save_checkpoint into PROBE_SAVE when given, runs one forward pass over a
fixed batch through Megatron-Core's schedule, gathers the full [batch, seq, vocab] logits
across tensor-, context- and pipeline-parallel ranks, and writes them from one rank.
"""

import os
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region
from megatron.core.utils import get_batch_on_this_cp_rank
from omegaconf import OmegaConf

from nemotron_train.config.schema import register_schema
from nemotron_train.model.context_parallel_attention import load_balanced_positions
from nemotron_train.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from nemotron_train.runtime.megatron_session import megatron_session
from nemotron_train.training.model_setup import build_model
from nemotron_train.training.optimizer import build_optimizer, build_scheduler, schedule_steps
from nemotron_train.precision.presets import precision_settings

REPO = Path(__file__).resolve().parents[2]
BATCH = 2

register_schema()


def fixed_batch(vocab_size: int, seq_length: int) -> dict:
    """The same tokens on every rank and in every run."""
    tokens = torch.randint(0, vocab_size, (BATCH, seq_length), generator=torch.Generator().manual_seed(7))
    positions = torch.arange(seq_length).expand(BATCH, -1).contiguous()
    return {"tokens": tokens, "position_ids": positions}


def full_logits(local: torch.Tensor) -> torch.Tensor:
    """[b, s_local, V/TP] on one rank -> [b, s, V]: vocabulary over TP, sequence over CP."""
    logits = gather_from_tensor_model_parallel_region(local.contiguous())
    cp_group = parallel_state.get_context_parallel_group()
    cp_size = cp_group.size()
    if cp_size == 1:
        return logits
    pieces = [torch.empty_like(logits) for _ in range(cp_size)]
    dist.all_gather(pieces, logits, group=cp_group)
    positions = torch.cat([load_balanced_positions(logits.size(1), rank, cp_size, logits.device)
                           for rank in range(cp_size)])
    gathered = torch.cat(pieces, dim=1)
    return gathered[:, torch.argsort(positions)]


def probe_forward_step(data_iterator, model):
    batch = next(data_iterator)
    if parallel_state.get_context_parallel_world_size() > 1:
        batch = get_batch_on_this_cp_rank(batch, is_hybrid_cp=False,
                                          cp_group=parallel_state.get_context_parallel_group())
    output = model(batch["tokens"], batch["position_ids"], None)

    def keep_logits(output_tensor, non_loss_data=False):
        return full_logits(output_tensor)

    return output, keep_logits


@hydra.main(config_path=str(REPO / "recipes"), config_name="config", version_base="1.3")
def main(cfg) -> None:
    config = OmegaConf.to_object(cfg)
    with megatron_session(config.parallel) as (_, context):
        torch.manual_seed(config.seed)
        model_parallel_cuda_manual_seed(config.seed)
        init_num_microbatches_calculator(context.rank, None, BATCH, BATCH, 1)
        setup = build_model(config, config.model.vocab_size, context.device)
        if config.checkpoint.load:
            load_checkpoint(config.checkpoint.load, setup.chunks, None, None, weights_only=True)
        if os.environ.get("PROBE_SAVE"):
            optimizer = build_optimizer(setup.chunks, config.optim,
                                        precision_fields=precision_settings(config.precision).optimizer,
                                        distributed_optimizer=config.parallel.distributed_optimizer)
            scheduler = build_scheduler(optimizer, config.optim, schedule_steps(
                config.optim, config.train.max_steps, config.train.global_batch_size))
            save_checkpoint(os.environ["PROBE_SAVE"], TrainState(), setup.chunks, optimizer, scheduler)
        batch = fixed_batch(setup.vocab_size, config.model.seq_length)
        for chunk in setup.chunks:
            chunk.eval()
        with torch.no_grad():
            outputs = get_forward_backward_func()(
                forward_step_func=probe_forward_step, data_iterator=iter([batch]), model=setup.chunks,
                num_microbatches=1, seq_length=config.model.seq_length, micro_batch_size=BATCH,
                forward_only=True, collect_non_loss_data=True)
        writer = (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
                  and parallel_state.get_context_parallel_rank() == 0
                  and parallel_state.get_data_parallel_rank() == 0)
        if writer:
            torch.save(outputs[0].cpu(), os.environ["PROBE_OUT"])


if __name__ == "__main__":
    main()
