"""Hugging Face NemotronH directory -> our checkpoint and the run configuration it belongs to.

`OUT/` gets `config.yaml` (a RunConfig: the model section derived from DIR's config.json,
the tokenizer pointed at DIR's tokenizer.json when there is one) and `checkpoints/` with a
weights-only `iter_0000000` and `latest`, so OUT reads like a run directory: train from it
with `checkpoint.load=OUT/checkpoints checkpoint.finetune=true` (or `checkpoint.load=hf:DIR`).
Everything is written under a temporary name and renamed when complete.
"""

import json
import time
from pathlib import Path

import tokenizers
import torch
from omegaconf import OmegaConf

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.convert.checkpoint_tensors import (
    build_meta_model,
    conversion_session,
    parameter_shapes,
    save_model_checkpoint,
)
from nemotron_train.convert.hf_config import ImportedModel, model_from_hf
from nemotron_train.convert.output_dir import atomic_output_dir, check_new_output
from nemotron_train.convert.safetensors_io import SafetensorsReader
from nemotron_train.convert.tensor_mapping import HF_NAME_ALIASES, conversion_units, from_hf, to_hf
from nemotron_train.data.config import DataConfig, TokenizerConfig
from nemotron_train.training.checkpoint import LATEST_FILE, iteration_dir

HF_CONFIG = "config.json"
HF_TOKENIZER = "tokenizer.json"


def read_hf_config(hf_dir: Path) -> dict:
    """DIR/config.json as a dict, or a ConfigError naming the file."""
    path = hf_dir / HF_CONFIG
    if not path.is_file():
        raise ConfigError("--hf-dir", str(hf_dir), f"has no {HF_CONFIG}: name a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError("file", str(path), f"is not valid JSON ({error})") from None


def stored_name(reader: SafetensorsReader, name: str) -> str:
    """The name `name` is stored under: itself, or an alias some writers use for it."""
    alias = HF_NAME_ALIASES.get(name)
    return alias if name not in reader and alias in reader else name


def _check_tensor_names(reader: SafetensorsReader, units, hf_dir: Path) -> None:
    wanted = {stored_name(reader, name) for unit in units for mapping in unit.tensors for name in mapping.hf}
    missing = sorted(wanted - set(reader.infos))
    if missing:
        raise ConfigError("--hf-dir", str(hf_dir),
                          f"lacks {len(missing)} tensors config.json implies (first: {missing[0]!r}); "
                          "do the layer pattern and the expert count match the weights?")
    unexpected = sorted(set(reader.infos) - wanted)
    if unexpected:
        raise ConfigError("--hf-dir", str(hf_dir),
                          f"holds {len(unexpected)} tensors config.json does not account for (first: "
                          f"{unexpected[0]!r} in {reader.infos[unexpected[0]].file.name}); do the "
                          "layer pattern and num_nextn_predict_layers match the weights?")


def _tensor_source(reader: SafetensorsReader, units, model, shapes: dict):
    """`tensor_for(name)` for save_model_checkpoint, shape-checking every HF tensor first."""
    mappings = {mapping.ours: mapping for unit in units for mapping in unit.tensors}
    if set(mappings) != set(shapes):
        raise RuntimeError(f"tensor mapping and model disagree: {sorted(set(mappings) ^ set(shapes))}")
    for mapping in mappings.values():
        expected = to_hf(mapping, torch.empty(shapes[mapping.ours], device="meta"), model)
        for name, tensor in zip(mapping.hf, expected):
            name = stored_name(reader, name)
            found = reader.infos[name].shape
            if tuple(found) != tuple(tensor.shape):
                raise ConfigError("file", str(reader.infos[name].file),
                                  f"tensor {name!r} has shape {list(found)}, config.json implies "
                                  f"{list(tensor.shape)}")

    def tensor_for(name: str):
        mapping = mappings[name]
        return from_hf(mapping, [reader.tensor(stored_name(reader, n)) for n in mapping.hf], model)

    return tensor_for


def run_config_for(imported: ImportedModel, hf_dir: Path, hf_config: dict) -> RunConfig:
    """The run configuration an imported checkpoint belongs to."""
    data = DataConfig()
    tokenizer_file = hf_dir / HF_TOKENIZER
    if tokenizer_file.is_file():
        eos = hf_config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        token = tokenizers.Tokenizer.from_file(str(tokenizer_file)).id_to_token(eos) if eos is not None else None
        tokenizer = TokenizerConfig(type="huggingface", path=str(tokenizer_file.resolve()),
                                    **({"eod_token": token} if token else {}))
        data = DataConfig(tokenizer=tokenizer)
    return RunConfig(model=imported.model, data=data)


def import_hf(hf_dir, output, *, mtp_depths: int | None = None, log=print) -> Path:
    """Convert `hf_dir` into `output` (see the module docstring); return `output`."""
    hf_dir, output = Path(hf_dir), Path(output)
    hf_config = read_hf_config(hf_dir)
    imported = model_from_hf(hf_config, mtp_depths=mtp_depths)
    check_new_output(output)
    reader = SafetensorsReader(hf_dir)
    units = conversion_units(imported.model)
    _check_tensor_names(reader, units, hf_dir)
    started = time.perf_counter()
    try:
        with atomic_output_dir(output) as partial:
            _write_import(partial, imported, reader, units, hf_dir, hf_config, log)
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    total = sum(info.nbytes for info in reader.infos.values())
    log(f"[import-hf] wrote {output} in {seconds:.1f} s ({total / 1e9 / seconds:.2f} GB/s)")
    return output


def _write_import(partial: Path, imported: ImportedModel, reader: SafetensorsReader, units,
                  hf_dir: Path, hf_config: dict, log) -> None:
    """The checkpoint, its `latest` and config.yaml, into the temporary output directory."""
    checkpoint = iteration_dir(partial / "checkpoints", 0)
    checkpoint.mkdir(parents=True)
    with conversion_session():
        meta_model = build_meta_model(imported.model, imported.model.vocab_size)
        tensor_for = _tensor_source(reader, units, imported.model, parameter_shapes(meta_model))
        total = sum(info.nbytes for info in reader.infos.values())
        log(f"[import-hf] {len(reader.infos)} tensors, {total / 1e9:.2f} GB from {hf_dir}: writing "
            f"{checkpoint.relative_to(partial)}")
        save_model_checkpoint(meta_model, tensor_for, checkpoint)
    (checkpoint.parent / LATEST_FILE).write_text(checkpoint.name)
    (partial / "config.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.structured(run_config_for(imported, hf_dir, hf_config))))
