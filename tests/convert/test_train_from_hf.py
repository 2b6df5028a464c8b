"""`train.py ... checkpoint.load=hf:DIR`: training starts from transformers' weights.

Oracle: the loss our trainer logs at step 1 (the forward before the first update) equals
transformers' NemotronH loss on the same batch, the token-weighted mean cross entropy over
the step's micro-batches with the data pipeline's loss mask.
"""

import dataclasses
import json

import torch
import torch.nn.functional as F

from nemotron_train.config.schema import load_run_config
from nemotron_train.convert.checkpoint_tensors import conversion_session
from nemotron_train.convert.hf_config import ARCHITECTURE_FIELDS, model_from_hf
from nemotron_train.convert.hf_source import resolve_hf_load
from nemotron_train.data.curriculum import build_train_data
from nemotron_train.data.sequence_lengths import SequenceLengthSchedule
from nemotron_train.data.tokenizer import build_tokenizer
from tests.convert.conftest import run_train
from tests.convert.hf_models import read_config, save_hf_checkpoint

TRAIN = ["recipe=tiny", "model.seq_length=64", "train.max_steps=1", "train.global_batch_size=4",
         "train.micro_batch_size=2", "optim.warmup_steps=0", "logging.log_interval=1"]


def recipe_overrides(model) -> list[str]:
    """The model fields a recipe must set to match an HF config (as Hydra overrides)."""
    fields = {field for group in ARCHITECTURE_FIELDS.values() for field in group}
    return [f"model.{field}={'null' if getattr(model, field) is None else getattr(model, field)}"
            for field in sorted(fields)]


def hf_loss_of_first_step(hf_model, run_dir) -> float:
    config = load_run_config(run_dir)
    train = config.train
    with conversion_session():
        tokenizer = build_tokenizer(config.data.tokenizer, config.data.cache_dir)
        data = build_train_data(
            config.data, tokenizer, seq_length=config.model.seq_length, seed=config.seed,
            max_steps=train.max_steps, global_batch_size=train.global_batch_size,
            micro_batch_size=train.micro_batch_size, valid_samples=train.eval_iters * train.micro_batch_size,
            consumed_samples=0, data_parallel_rank=0, data_parallel_size=1,
            lengths=SequenceLengthSchedule.from_config(config.model.seq_length, None, 0.0))
        batches = data.batches_for_step(1)
        total, tokens = 0.0, 0.0
        with torch.no_grad():
            for _ in range(train.global_batch_size // train.micro_batch_size):
                batch = next(batches.iterator)
                logits = hf_model(input_ids=batch["tokens"]).logits.float()
                losses = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
                total += (losses * batch["loss_mask"].flatten()).sum().item()
                tokens += batch["loss_mask"].sum().item()
    return total / tokens


def test_the_first_loss_is_transformers_loss_on_the_same_batch(tmp_path, capsys):
    hf_model = save_hf_checkpoint(tmp_path / "hf", {"vocab_size": 4096})  # the tiny tokenizer's
    model = model_from_hf(read_config(tmp_path / "hf")).model
    run = tmp_path / "run"
    result = run_train(run, [*TRAIN, *recipe_overrides(model), f"checkpoint.load=hf:{tmp_path / 'hf'}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "importing" in result.stdout and "loaded weights from" in result.stdout
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    expected = hf_loss_of_first_step(hf_model, run)
    assert abs(first["loss"] - expected) <= 1e-5 * expected, (first["loss"], expected)
    # A second run reuses the import instead of converting again.
    config = load_run_config(run)
    assert config.checkpoint.load == f"hf:{tmp_path / 'hf'}" and config.checkpoint.finetune
    capsys.readouterr()
    resolve_hf_load(dataclasses.replace(config))
    assert "reusing the import" in capsys.readouterr().out


def test_a_recipe_that_differs_from_the_checkpoint_is_refused_naming_every_field(tmp_path):
    save_hf_checkpoint(tmp_path / "hf", {"vocab_size": 4096})
    model = model_from_hf(read_config(tmp_path / "hf")).model
    overrides = [o for o in recipe_overrides(model)
                 if not o.startswith(("model.hidden_size=", "model.num_experts="))]
    result = run_train(tmp_path / "run", [*TRAIN, *overrides, "model.hidden_size=128", "model.num_experts=4",
                                          "model.moe_router_topk=2", f"checkpoint.load=hf:{tmp_path / 'hf'}"])
    assert result.returncode == 2
    assert "model.hidden_size: recipe 128 != checkpoint 64" in result.stderr
    assert "model.num_experts: recipe 4 != checkpoint 8" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was built
