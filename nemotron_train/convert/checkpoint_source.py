"""Find a checkpoint and the run configuration it belongs to, from whatever path names it.

A path may be a run directory (`config.yaml` beside `checkpoints/`, also what import-hf
writes), its checkpoint directory (with `latest`), or one `iter_*` directory in it. The
run's `config.yaml` is looked up beside each of those, or given explicitly.
"""

from dataclasses import dataclass
from pathlib import Path

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig, load_run_config_file
from nemotron_train.training.checkpoint import resolve_checkpoint

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class CheckpointSource:
    """One iteration directory and the run configuration that trained it."""

    iteration: Path
    config: RunConfig
    run_dir: Path
    """The directory config.yaml came from."""


def _checkpoint_dir_of_run(run_dir: Path, config: RunConfig) -> Path:
    return Path(config.checkpoint.dir) if config.checkpoint.dir else run_dir / CHECKPOINTS_DIR


def resolve_source(path, config_file=None) -> CheckpointSource:
    """The iteration `path` names and its RunConfig; ConfigError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("--checkpoint", str(path), "does not exist")
    candidates = [path, path.parent, path.parent.parent]
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise ConfigError("--config", str(config_file), "no such file")
        run_dir = config_file.parent
    else:
        run_dir = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
        if run_dir is None:
            raise ConfigError("--checkpoint", str(path),
                              f"no {CONFIG_FILE} found in {', '.join(str(c) for c in candidates)}; "
                              "the model it belongs to is unknown: pass --config <run>/config.yaml")
        config_file = run_dir / CONFIG_FILE
    config = load_run_config_file(config_file)
    iteration = resolve_checkpoint(path)
    if iteration is None and (path / CONFIG_FILE).is_file():
        iteration = resolve_checkpoint(_checkpoint_dir_of_run(path, config))
    if iteration is None or not iteration.is_dir():
        raise ConfigError("--checkpoint", str(path),
                          "no checkpoint there: name a run directory, its checkpoints/ directory "
                          "(with a `latest` file) or one iter_* directory")
    return CheckpointSource(iteration=iteration, config=config, run_dir=run_dir)

