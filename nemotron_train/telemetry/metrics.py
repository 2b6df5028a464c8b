"""Per-step metrics: a progress line, `metrics.jsonl`, and optional TensorBoard / W&B."""

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nemotron_train.config.errors import ConfigError


@dataclass(kw_only=True)
class LoggingConfig:
    """Where and how often metrics go."""

    log_interval: int = 10
    """Optimizer steps between logged steps (the first and last step are always logged)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars under <run_dir>/tensorboard."""
    wandb: bool = False
    """Also log to Weights & Biases (offline unless WANDB_MODE says otherwise)."""
    wandb_project: str = "nemotron-train"

    def __post_init__(self):
        if self.log_interval < 1:
            raise ConfigError("logging.log_interval", self.log_interval, "must be at least 1")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class MetricsLogger:
    """Writes one JSON object per logged step and prints a progress line (rank 0 only)."""

    def __init__(self, run_dir: Path, config: LoggingConfig, *, max_steps: int, enabled: bool,
                 start_step: int = 0):
        self.config, self.max_steps, self.enabled = config, max_steps, enabled
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self._jsonl = self._tensorboard = self._wandb = None
        if not enabled:
            return
        self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if config.wandb:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project=config.wandb_project, dir=str(run_dir))

    def should_log(self, step: int) -> bool:
        return step == 1 or step == self.max_steps or step % self.config.log_interval == 0

    def log_step(self, step: int, metrics: dict) -> None:
        """Record `metrics` for `step` (floats) and print the progress line."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        eta = elapsed / done * (self.max_steps - step) if done else math.nan
        line = (
            f"step {step:>6}/{self.max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e}"
            f" | grad {record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s"
            f" | {format_duration(elapsed)} elapsed, ETA {format_duration(eta) if done else '?'}"
        )
        extras = [f"{k} {record[k]:.4g}" for k in record if k.startswith(("moe_", "mtp_", "seq_"))]
        print(" | ".join([line, *extras]), file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    """The logged steps of a run, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
