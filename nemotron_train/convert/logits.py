"""Our Megatron-Core model's logits on given token rows, from any checkpoint, in one process.

The model is built through the trainer's own setup (so the spec, kernels and precision are
the training ones) and its weights loaded through dist_checkpointing, which reshards
whatever layout saved them. The vocabulary size comes from the checkpoint, so no tokenizer
is needed.
"""

import copy
import json
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from nemotron_train.errors import ConfigError
from nemotron_train.convert.checkpoint_source import CheckpointSource
from nemotron_train.convert.checkpoint_tensors import EMBEDDING
from nemotron_train.precision.presets import PrecisionConfig
from nemotron_train.runtime.distributed import ParallelConfig
from nemotron_train.training.checkpoint import load_checkpoint
from nemotron_train.runtime.megatron_session import megatron_session
from nemotron_train.training.model_setup import build_model

LOGITS_DTYPES = ("fp32", "bf16")


def read_token_rows(path) -> list[list[int]]:
    """A JSON list of equal-length rows of token ids."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError("--input-ids", str(path), f"is not a readable JSON file ({error})") from None
    valid = (isinstance(rows, list) and rows and all(isinstance(r, list) and r for r in rows)
             and all(isinstance(t, int) and t >= 0 for r in rows for t in r))
    if not valid:
        raise ConfigError("--input-ids", str(path), "give a JSON list of non-empty rows of token ids, "
                                                    "e.g. [[1, 2, 3], [4, 5, 6]]")
    if len({len(r) for r in rows}) != 1:
        raise ConfigError("--input-ids", str(path), "rows must all have the same length")
    return rows


def model_logits(source: CheckpointSource, token_rows: list[list[int]], *, dtype: str = "fp32") -> torch.Tensor:
    """Float32 logits [batch, seq, vocab] of `source`'s model on `token_rows`."""
    if dtype not in LOGITS_DTYPES:
        raise ConfigError("--dtype", dtype, f"choose one of {list(LOGITS_DTYPES)}")
    config = copy.deepcopy(source.config)
    config.parallel = ParallelConfig()
    config.precision = PrecisionConfig(recipe=dtype)
    tokens = torch.tensor(token_rows, dtype=torch.long)
    with megatron_session(config.parallel) as (_, context):
        vocab_size = dist_checkpointing.load_tensors_metadata(str(source.iteration))[EMBEDDING].global_shape[0]
        if int(tokens.max()) >= vocab_size:
            raise ConfigError("--input-ids", int(tokens.max()),
                              f"token ids must be below the checkpoint's vocabulary size {vocab_size}")
        config.model.vocab_size = vocab_size
        torch.manual_seed(config.seed)
        model_parallel_cuda_manual_seed(config.seed)
        setup = build_model(config, vocab_size, context.device)
        load_checkpoint(source.iteration, setup.chunks, None, None, weights_only=True)
        model = setup.chunks[0].module  # inside DDP; Float16Module returns fp32 logits
        model.eval()
        tokens = tokens.to(context.device)
        positions = torch.arange(tokens.shape[1], device=context.device).expand_as(tokens)
        with torch.no_grad():
            logits = model(tokens, positions, None)
        return logits.float().cpu()
