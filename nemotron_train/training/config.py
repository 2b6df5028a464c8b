"""How long to train and with what batch."""

from dataclasses import dataclass

from nemotron_train.config.errors import ConfigError


@dataclass(kw_only=True)
class TrainConfig:
    """The optimisation budget and batch shape."""

    max_steps: int = 300
    """Optimizer steps to train for (a resumed run stops at the same step)."""
    global_batch_size: int = 8
    """Sequences per optimizer step, across all data-parallel ranks and micro-batches."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass on one rank."""
    eval_interval: int = 0
    """Steps between validation-loss evaluations (0: never)."""
    eval_iters: int = 4
    """Micro-batches per validation-loss evaluation."""
    exit_interval: int = 0
    """Save a checkpoint and exit after this many steps of this job (0: run to max_steps);
    the schedule still spans max_steps, so a later job resumes exactly."""
    exit_on_sigterm: bool = True
    """On SIGTERM (preemption, Slurm time limit) save a checkpoint and exit cleanly."""

    def __post_init__(self):
        for key in ("max_steps", "global_batch_size", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}", getattr(self, key), "must be at least 1")
        if self.exit_interval < 0:
            raise ConfigError("train.exit_interval", self.exit_interval, "must be >= 0")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                "train.global_batch_size", self.global_batch_size,
                f"must be a multiple of train.micro_batch_size={self.micro_batch_size}",
            )
