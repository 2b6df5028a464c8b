"""A small hybrid with every layer type for the failure-handling tests: a step takes a fraction
of a second on one CPU core. `train_small` runs it in this process through the real loop."""

import json
from pathlib import Path

from nemotron_train.training.loop import train
from tests.recipes.test_recipes import compose_recipe

SMALL_MODEL = [
    "model.pattern=ME*-ME", "model.num_layers=6", "model.hidden_size=128",
    "model.seq_length=64", "model.ffn_hidden_size=256", "model.moe_ffn_hidden_size=128",
    "model.moe_shared_expert_intermediate_size=128", "model.mamba_chunk_size=16",
    "train.global_batch_size=8", "train.micro_batch_size=2", "optim.warmup_steps=2",
    "logging.log_interval=1",
]
"""Overrides of recipe=tiny (global batch 8 x 64 tokens, 4 micro-batches per step)."""
TOKENS_PER_STEP = 8 * 64


def train_small(run_dir: Path, *overrides: str):
    """Train the small model in this process; returns the loop's TrainResult."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(compose_recipe("tiny", [*SMALL_MODEL, *overrides]), run_dir)


def logged(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict:
    """step -> (loss, grad_norm, lr) of every logged step."""
    return {r["step"]: (r["loss"], r["grad_norm"], r["lr"]) for r in logged(run_dir)}


def checkpoint_tensors(checkpoint: Path) -> dict:
    """Every tensor a checkpoint holds (weights, optimizer moments), read in a world of one."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing import load_plain_tensors

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        return load_plain_tensors(str(checkpoint))
    finally:
        dist.destroy_process_group()
