"""The run's whole configuration: one typed section per owner, registered with Hydra.

Each section's dataclass lives beside the code that owns it; this module only
composes them, registers the schema, and checks the rules that span sections.
"""

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from nemotron_train.errors import ConfigError
from nemotron_train.data.config import DataConfig
from nemotron_train.data.curriculum import plan_data_phases
from nemotron_train.model.config import HybridModelConfig
from nemotron_train.precision.presets import PrecisionConfig
from nemotron_train.runtime.distributed import ParallelConfig
from nemotron_train.telemetry.metrics import LoggingConfig
from nemotron_train.training.checkpoint import CheckpointConfig
from nemotron_train.training.config import TrainConfig
from nemotron_train.training.fault_injection import FaultInjectionConfig
from nemotron_train.training.optimizer import OptimConfig
from nemotron_train.training.throughput import ThroughputConfig


@dataclass(kw_only=True)
class RunConfig:
    """Everything one training run needs."""

    recipe: Optional[str] = None
    """Name of the recipe this run was composed from (informational)."""
    seed: int = 1234
    """Seed for initialisation and data order."""
    dry_run: bool = False
    """Validate the layout and report parameters, FLOPs and memory without allocating weights."""
    model: HybridModelConfig = field(default_factory=HybridModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    faults: FaultInjectionConfig = field(default_factory=FaultInjectionConfig)
    """Faults to inject, to drill the failure handling (all off by default)."""

    def __post_init__(self):
        check_sequence_parallel_with_moe(self)
        check_pipeline_stages_match_pattern(self)
        check_short_seq_length(self)
        # A curriculum phase that would get no steps fails here, before any allocation.
        plan_data_phases(self.data, self.train.max_steps)


def check_sequence_parallel_with_moe(config: RunConfig) -> None:
    """Megatron-Core requires sequence parallelism for MoE layers under tensor parallelism."""
    if config.parallel.tensor > 1 and "E" in config.model.pattern and not config.parallel.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel", False,
                          "MoE with parallel.tensor > 1 requires parallel.sequence_parallel=true")


def check_pipeline_stages_match_pattern(config: RunConfig) -> None:
    """A pattern's '|' stages are the pipeline stages: one per rank, no virtual stages.

    Megatron-Core reads more '|' stages than ranks as interleaved (virtual) pipeline
    chunks; our loop builds one model chunk per rank, so that schedule is not offered.
    """
    stages = len(config.model.parsed_pattern.stages)
    if stages > 1 and stages != config.parallel.pipeline:
        raise ConfigError(
            "parallel.pipeline", config.parallel.pipeline,
            f"model.pattern names {stages} pipeline stages with '|'; set parallel.pipeline="
            f"{stages}, or remove the '|' marks for an even split (interleaved pipeline "
            "schedules are not supported)")
    if config.model.num_layers < config.parallel.pipeline:
        raise ConfigError("parallel.pipeline", config.parallel.pipeline,
                          f"more pipeline stages than model.num_layers={config.model.num_layers}")


def check_short_seq_length(config: RunConfig) -> None:
    """A short step reads seq_length / short_seq_length sequences per long one: it must divide."""
    short, long = config.train.short_seq_length, config.model.seq_length
    if short is None:
        return
    if short >= long or long % short:
        raise ConfigError("train.short_seq_length", short,
                          f"must be shorter than model.seq_length={long} and divide it (a short "
                          "step reads model.seq_length / train.short_seq_length sequences per "
                          "long one, so that every step has the same tokens)")


def register_schema() -> None:
    """Make `RunConfig` the schema Hydra validates every recipe against."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def load_run_config(run_dir) -> RunConfig:
    """The RunConfig a run recorded in `<run_dir>/config.yaml`, validated again."""
    from pathlib import Path

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError("run_dir", str(run_dir), "no config.yaml there: name a run directory train.py wrote")
    return load_run_config_file(path)


def load_run_config_file(path) -> RunConfig:
    """The RunConfig in one YAML file (a run's config.yaml), validated."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path)))
