"""Our checkpoint -> a Hugging Face NemotronH directory transformers loads natively.

`DIR/` gets `config.json` (model_type nemotron_h, no remote code), the weights in the layout
of the released checkpoints as bounded `model-0000k-of-0000n.safetensors` shards with
`model.safetensors.index.json`, MTP weights under `mtp.*`, and the tokenizer files when the
run's tokenizer is a Hugging Face one. Tensors are read one conversion unit (a layer) at a
time and written as they come; DIR is written under a temporary name and renamed at the end.
"""

import json
import shutil
import time
from pathlib import Path

import tokenizers
import torch
from megatron.core import dist_checkpointing

from nemotron_train.errors import ConfigError
from nemotron_train.convert.checkpoint_source import resolve_source
from nemotron_train.convert.checkpoint_tensors import (
    EMBEDDING,
    CheckpointTensorReader,
    build_meta_model,
    conversion_session,
    parameter_shapes,
)
from nemotron_train.convert.hf_config import hf_from_model
from nemotron_train.convert.output_dir import atomic_output_dir, check_new_output
from nemotron_train.convert.safetensors_io import PlannedTensor, SafetensorsWriter
from nemotron_train.convert.tensor_mapping import conversion_units, to_hf

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' own default shard size
# Kept in fp32 whatever --dtype says, as transformers keeps them and the released files store it.
FP32_TENSORS = ("e_score_correction_bias",)
# Tokenizer files transformers' AutoTokenizer reads, copied when they sit beside tokenizer.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tensor_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if name.endswith(FP32_TENSORS) else dtype


def _token_ids(config) -> dict:
    """bos/eos/pad ids for config.json, from the run's Hugging Face tokenizer if it has one."""
    tokenizer = config.data.tokenizer
    if tokenizer.type != "huggingface":
        return {}
    eod = tokenizers.Tokenizer.from_file(tokenizer.path).token_to_id(tokenizer.eod_token)
    return {} if eod is None else {"eos_token_id": eod}


def _copy_tokenizer(config, directory: Path) -> list[str]:
    tokenizer = config.data.tokenizer
    if tokenizer.type != "huggingface":
        return []
    source = Path(tokenizer.path).parent
    copied = []
    for name in TOKENIZER_FILES:
        file = Path(tokenizer.path) if name == "tokenizer.json" else source / name
        if file.is_file():
            shutil.copyfile(file, directory / name)
            copied.append(name)
    return copied


def export_hf(checkpoint, output, *, config_file=None, dtype: str = "bf16",
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, log=print) -> Path:
    """Convert the checkpoint `checkpoint` names into the HF directory `output`; return it."""
    if dtype not in DTYPES:
        raise ConfigError("--dtype", dtype, f"choose one of {sorted(DTYPES)}")
    output = Path(output)
    check_new_output(output)
    source = resolve_source(checkpoint, config_file)
    model = source.config.model
    target = DTYPES[dtype]
    started = time.perf_counter()
    with atomic_output_dir(output) as partial:
        with conversion_session():
            vocab_size = dist_checkpointing.load_tensors_metadata(str(source.iteration))[EMBEDDING].global_shape[0]
            # Refuses what transformers cannot express before any tensor is read.
            hf_config = hf_from_model(model, vocab_size, token_ids=_token_ids(source.config),
                                      dtype="bfloat16" if dtype == "bf16" else "float32")
            meta_model = build_meta_model(model, vocab_size)
            shapes = parameter_shapes(meta_model)
            reader = CheckpointTensorReader(source.iteration, meta_model)
            units = conversion_units(model)
            plan = [PlannedTensor(name, _tensor_dtype(name, target), tuple(meta.shape))
                    for unit in units for mapping in unit.tensors
                    for name, meta in zip(mapping.hf, to_hf(mapping, torch.empty(shapes[mapping.ours],
                                                                                  device="meta"), model))]
            writer = SafetensorsWriter(partial, plan, max_shard_bytes)
            log(f"[export-hf] {source.iteration} -> {output}: {len(plan)} tensors, "
                f"{sum(p.nbytes for p in plan) / 1e9:.2f} GB as {dtype}")
            for number, unit in enumerate(units, start=1):
                loaded = reader.read([mapping.ours for mapping in unit.tensors])
                for mapping in unit.tensors:
                    for name, tensor in zip(mapping.hf, to_hf(mapping, loaded[mapping.ours], model)):
                        writer.write(name, tensor.to(_tensor_dtype(name, target)))
                del loaded
                if number % max(1, len(units) // 10) == 0 or number == len(units):
                    seconds = time.perf_counter() - started
                    log(f"[export-hf] {number}/{len(units)} units ({unit.name}), "
                        f"{writer.bytes_written / 1e9:.2f} GB, {writer.bytes_written / 1e9 / seconds:.2f} GB/s")
            files = writer.finish()
        (partial / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        copied = _copy_tokenizer(source.config, partial)
    log(f"[export-hf] wrote {len(files)} weight file(s), config.json"
        f"{', ' + ', '.join(copied) if copied else ''} in {time.perf_counter() - started:.1f} s")
    return output

