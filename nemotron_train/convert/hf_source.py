"""`checkpoint.load=hf:DIR`: train from a Hugging Face NemotronH directory.

Resolved in the entry layer, before `train()`: the recipe's model section is checked
against DIR's config.json (every differing field named, nothing allocated yet), DIR is
imported once into the data cache (or used as is when it is already an import-hf output),
and the run gets an ordinary `checkpoint.load=<import>/checkpoints` with finetune semantics
(weights only; optimizer, schedule and data start at step 0). Under torchrun every rank
resolves it; a file lock lets the first convert and the others reuse its result.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import load_run_config
from nemotron_train.convert.checkpoint_source import CHECKPOINTS_DIR, CONFIG_FILE
from nemotron_train.convert.hf_config import ImportedModel, differing_fields, model_from_hf
from nemotron_train.convert.import_hf import read_hf_config
from nemotron_train.convert.tensor_mapping import mtp_stored_blocks
from nemotron_train.data.cache import exclusive_file_lock, resolve_cache_dir

HF_PREFIX = "hf:"
IMPORTS_DIR = "hf_imports"
# torchrun's variables: the conversion runs as a one-process job of its own.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                       "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                       "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


def is_hf_load(load) -> bool:
    return isinstance(load, str) and load.startswith(HF_PREFIX)


def _is_import_output(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / CHECKPOINTS_DIR / "latest").is_file()


def _checkpoint_model(directory: Path) -> ImportedModel:
    if _is_import_output(directory):
        model = load_run_config(directory).model
        return ImportedModel(model=model, mtp_stored_blocks=mtp_stored_blocks(model))
    return model_from_hf(read_hf_config(directory))


def _import_key(directory: Path) -> str:
    """Names one HF directory's import: its path, config and weight files (size, mtime)."""
    digest = hashlib.sha256(str(directory.resolve()).encode())
    digest.update((directory / "config.json").read_bytes())
    for file in sorted(directory.glob("*.safetensors")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _convert(directory: Path, output: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    command = [sys.executable, "-m", "nemotron_train.convert", "import-hf", "--hf-dir", str(directory),
               "--output", str(output)]
    if subprocess.run(command, env=environment).returncode != 0:
        raise ConfigError("checkpoint.load", HF_PREFIX + str(directory),
                          "importing it failed (the error is printed above)")


def resolve_hf_load(config) -> Path:
    """Check `config` (a RunConfig with checkpoint.load=hf:DIR) against DIR, import DIR if
    needed, and return the checkpoint directory to load. Raises ConfigError first, naming
    every model field where the recipe and DIR's config.json differ."""
    directory = Path(config.checkpoint.load[len(HF_PREFIX):]).expanduser()
    if not directory.is_dir():
        raise ConfigError("checkpoint.load", config.checkpoint.load, "names no directory")
    checkpoint_model = _checkpoint_model(directory)
    recipe = config.model
    if recipe.vocab_size is None:  # the checkpoint's embedding decides the vocabulary
        recipe.vocab_size = checkpoint_model.model.vocab_size
    differences = differing_fields(recipe, checkpoint_model)
    if differences:
        raise ConfigError("checkpoint.load", config.checkpoint.load,
                          "the recipe's model section differs from the checkpoint's config in "
                          f"{len(differences)} field(s): " + "; ".join(differences)
                          + ". Override them to match (e.g. model.hidden_size=...)")
    if _is_import_output(directory):
        return directory / CHECKPOINTS_DIR
    output = Path(resolve_cache_dir(config.data.cache_dir)) / IMPORTS_DIR / _import_key(directory)
    speaks = os.environ.get("RANK", "0") == "0"
    with exclusive_file_lock(str(output) + ".lock"):
        if _is_import_output(output):
            if speaks:
                print(f"[nemotron-train] reusing the import of {directory} in {output}", flush=True)
        else:
            print(f"[nemotron-train] importing {directory} into {output}", flush=True)
            _convert(directory, output)
    return output / CHECKPOINTS_DIR

