"""Per-step metrics: a progress line, `metrics.jsonl`, `events.jsonl`, and optional
TensorBoard / W&B.

`metrics.jsonl` holds each logged step once: a resumed run first drops the records of the
steps after its checkpoint (the killed run logged them, the resumed run logs them again) and
a line a kill cut short. `events.jsonl` holds what happened besides steps: skipped steps,
rollbacks, loss spikes, checkpoints passed over as damaged, saves and their stall.
"""

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nemotron_train.errors import ConfigError


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
    """The W&B project runs are logged under."""
    peak_tflops: Optional[float] = None
    """Peak TFLOP/s of one device for `mfu`; None takes the GPU's dense BF16 peak from its
    name (no `mfu` on CPU or an unknown GPU)."""
    expert_load_interval: int = 100
    """Steps between per-expert load records (tokens per expert, min, max, CV) of every MoE
    layer (0: never)."""
    rank_step_time_interval: int = 100
    """Steps between records of the fastest and slowest rank's mean step time (0: never)."""

    def __post_init__(self):
        if self.log_interval < 1:
            raise ConfigError("logging.log_interval", self.log_interval, "must be at least 1")
        for key in ("expert_load_interval", "rank_step_time_interval"):
            if getattr(self, key) < 0:
                raise ConfigError(f"logging.{key}", getattr(self, key), "must be >= 0 (0: never)")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError("logging.peak_tflops", self.peak_tflops, "must be > 0, or null")


METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class MetricsLogger:
    """Writes one JSON object per logged step and prints a progress line (rank 0 only).

    `start_step` is the step the run resumes after: records of later steps are dropped first.
    `device_metrics` adds MFU and memory to the progress line (on GPUs).
    """

    def __init__(self, run_dir: Path, config: LoggingConfig, *, max_steps: int, enabled: bool,
                 start_step: int = 0, device_metrics: bool = False):
        self.config, self.max_steps, self.enabled = config, max_steps, enabled
        self.start_step, self.device_metrics = start_step, device_metrics
        self.start_time = time.perf_counter()
        self._jsonl = self._events = self._tensorboard = self._wandb = None
        if not enabled:
            return
        path = Path(run_dir) / METRICS_FILE
        keep_records_up_to(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        self._events = open(Path(run_dir) / EVENTS_FILE, "a", buffering=1)
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
        if self.device_metrics and "mfu" in record:
            line += f" | MFU {100 * record['mfu']:.1f}%"
        if self.device_metrics and "peak_memory_gb" in record:
            line += f" | mem {record['peak_memory_gb']:.1f} GB"
        if record.get("skipped"):
            line += " | SKIPPED"
        extras = [f"{k} {record[k]:.4g}" for k in record
                  if k.startswith(("moe_", "mtp_", "seq_", "valid_")) and isinstance(record[k], (int, float))]
        print(" | ".join([line, *extras]), file=sys.stdout, flush=True)

    def log_event(self, step: int, kind: str, message: str, *, echo: bool = True, **details) -> None:
        """Record an event of `kind` at `step` in events.jsonl and print `message` (if `echo`)."""
        if not self.enabled:
            return
        record = {"step": step, "event": kind, "message": message,
                  **{k: _plain(v) for k, v in details.items()}, "time": time.time()}
        self._events.write(json.dumps(record) + "\n")
        if echo:
            print(f"[nemotron-train] step {step}: {message}", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._events.close()
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
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_events(run_dir: Path) -> list[dict]:
    """The events of a run, in order (none if it had none)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_records_up_to(path: Path, last_step: int) -> int:
    """Rewrite the JSON-lines file `path` without the records after `last_step` and without a
    line cut short (a killed writer); return how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        staging = path.with_name(path.name + ".tmp")
        staging.write_text("".join(line + "\n" for line in kept))
        os.replace(staging, path)
    return dropped
