"""How long to train and with what batch."""

from dataclasses import dataclass
from typing import Optional

from nemotron_train.errors import ConfigError

NONFINITE_POLICIES = ("halt", "skip", "rollback")


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
    short_seq_length: Optional[int] = None
    """Mixed-length training: the short sequence length some whole steps train at instead of
    model.seq_length (e.g. 4096 beside 524288). It must divide model.seq_length: a short step
    reads model.seq_length / short_seq_length times as many sequences, so every step has the
    same tokens. None: every step at model.seq_length."""
    short_step_fraction: float = 0.0
    """Mixed-length training: the share of steps at short_seq_length, in [0, 1). Step s is
    short when floor(s * f) > floor((s - 1) * f), so 0.5 alternates long and short steps
    (nemotron_train/data/sequence_lengths.py)."""
    eval_per_source: bool = False
    """Also report the validation loss of each source of a blend (`valid_loss/<source>`)."""
    on_nonfinite: str = "halt"
    """A NaN or Inf in the loss or the gradients (found on every rank in the same step):
    'halt' exits non-zero naming the step and the first module, saving nothing; 'skip' drops
    the update and logs the step as skipped; 'rollback' reloads the newest intact checkpoint
    and continues with the next batch (training/nonfinite.py)."""
    max_rollbacks: int = 3
    """With on_nonfinite=rollback: halt at the non-finite step after this many rollbacks."""
    loss_spike_factor: float = 3.0
    """Log a `loss_spike` event when a step's loss exceeds this multiple of the mean of the
    last `loss_spike_window` losses (0: off)."""
    loss_spike_window: int = 50
    """Steps in the running mean loss spikes are measured against."""
    watchdog_factor: Optional[float] = None
    """Dump every thread's stack and exit with status 75 (requeued by launch/slurm) when a
    step runs longer than this multiple of the median of the recent steps; None: 10 on
    CUDA, off on CPU; 0: off."""
    watchdog_min_seconds: float = 120.0
    """The watchdog never fires before a step has run this long."""
    watchdog_history: int = 20
    """Recent steps whose median step time the watchdog compares with."""

    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms and Megatron-Core's
    deterministic_mode): reruns and resumes on GPUs give bit-identical losses, at some speed
    cost. CPU runs are deterministic either way."""

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
        self._check_mixed_lengths()
        self._check_failure_handling()

    def _check_failure_handling(self):
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError("train.on_nonfinite", self.on_nonfinite,
                              f"choose one of {NONFINITE_POLICIES}")
        if self.max_rollbacks < 0:
            raise ConfigError("train.max_rollbacks", self.max_rollbacks, "must be >= 0")
        if self.loss_spike_factor < 0:
            raise ConfigError("train.loss_spike_factor", self.loss_spike_factor, "must be >= 0 (0: off)")
        if self.loss_spike_window < 1:
            raise ConfigError("train.loss_spike_window", self.loss_spike_window, "must be at least 1")
        if self.watchdog_factor is not None and not (self.watchdog_factor == 0 or self.watchdog_factor > 1):
            raise ConfigError("train.watchdog_factor", self.watchdog_factor,
                              "must be > 1 (a multiple of the median step), 0 (off) or null (auto)")
        if self.watchdog_min_seconds < 0:
            raise ConfigError("train.watchdog_min_seconds", self.watchdog_min_seconds, "must be >= 0")
        if self.watchdog_history < 1:
            raise ConfigError("train.watchdog_history", self.watchdog_history, "must be at least 1")

    def _check_mixed_lengths(self):
        fraction = self.short_step_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError("train.short_step_fraction", fraction,
                              "choose a share of steps in [0, 1) (0.5 alternates long and short "
                              "steps); to train every step short, set model.seq_length instead")
        if fraction > 0 and self.short_seq_length is None:
            raise ConfigError("train.short_seq_length", None,
                              f"train.short_step_fraction={fraction} needs a short length: set "
                              "train.short_seq_length (e.g. 4096), or short_step_fraction=0")
        if self.short_seq_length is not None and self.short_seq_length < 1:
            raise ConfigError("train.short_seq_length", self.short_seq_length,
                              "must be at least 1, or null for no short steps")
