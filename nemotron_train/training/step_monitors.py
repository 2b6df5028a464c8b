"""What watches each step: injected faults, the watchdog, per-rank timing, the bad-step
policy, and the throughput, memory and expert-load figures of the metrics line.

The loop calls `timed_step` around each step, `bad_steps.handle` on its outcome and
`step_report` for the extra metrics; each concern lives in its own module.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from nemotron_train.training.checkpoint import load_checkpoint
from nemotron_train.training.fault_injection import FaultInjector
from nemotron_train.training.nonfinite import BadStepHandler
from nemotron_train.training.resume import load_newest_intact
from nemotron_train.training.rng_state import restore_rng_state
from nemotron_train.training.step_timing import RankStepTimes
from nemotron_train.training.step_performance import (
    ExpertLoadCounter,
    device_peak_tflops,
    peak_memory_gb,
    step_throughput,
)
from nemotron_train.training.watchdog import StepWatchdog

WATCHDOG_FACTOR_ON_CUDA = 10.0


@dataclass
class StepMonitors:
    """The per-step helpers of one job (see the module docstring)."""

    faults: FaultInjector
    bad_steps: BadStepHandler
    timing: RankStepTimes
    watchdog: Optional[StepWatchdog]
    expert_load: Optional[ExpertLoadCounter]
    expert_load_interval: int
    model_flops: object
    peak_tflops: Optional[float]
    world_size: int
    device: torch.device

    @classmethod
    def build(cls, run, run_dir: Path) -> "StepMonitors":
        """The monitors `run` (loop._Run) asks for in its config."""
        config, context = run.config, run.context
        train_cfg, logging_cfg = config.train, config.logging
        factor = train_cfg.watchdog_factor
        if factor is None:
            factor = WATCHDOG_FACTOR_ON_CUDA if context.device.type == "cuda" else 0.0
        watchdog = None
        if factor:
            watchdog = StepWatchdog(factor=factor, min_seconds=train_cfg.watchdog_min_seconds,
                                    history=train_cfg.watchdog_history, run_dir=run_dir,
                                    rank=context.rank)
        has_moe = "E" in config.model.pattern
        return cls(
            faults=FaultInjector(config.faults, run.setup.chunks, context.rank),
            bad_steps=BadStepHandler(train_cfg, rollback=partial(_roll_back, run),
                                     log_event=run.metrics.log_event),
            timing=RankStepTimes(logging_cfg.rank_step_time_interval),
            watchdog=watchdog,
            expert_load=ExpertLoadCounter(run.setup.chunks) if has_moe and logging_cfg.expert_load_interval else None,
            expert_load_interval=logging_cfg.expert_load_interval,
            model_flops=run.model_flops,
            peak_tflops=logging_cfg.peak_tflops or device_peak_tflops(),
            world_size=context.world_size,
            device=context.device,
        )

    def timed_step(self, step: int, run_step):
        """`run_step()` for step `step`, under the watchdog and the timers."""
        if self.expert_load is not None:
            self.expert_load.enabled = step % self.expert_load_interval == 0
        if self.watchdog is not None:
            self.watchdog.step_started(step)
        self.timing.start()
        self.faults.begin_step(step)  # an injected stall happens inside the step
        outcome = run_step()
        self.timing.stop()
        if self.watchdog is not None:
            self.watchdog.step_finished()
        return outcome

    def step_report(self, state, tokens: int, seq_length: int, seconds: float) -> dict:
        """Throughput, peak memory, skipped steps, and on their steps the expert load and the
        per-rank step times (collectives on those steps)."""
        report = step_throughput(self.model_flops, tokens, seq_length, seconds, self.world_size,
                                 self.peak_tflops)
        report["peak_memory_gb"] = peak_memory_gb()
        report["skipped_steps"] = state.skipped_steps
        step_flops = self.model_flops.per_step(tokens, seq_length) if self.model_flops else 0.0
        report.update(self.timing.report(state.step, step_flops))
        if self.expert_load is not None and self.expert_load.enabled:
            self.expert_load.enabled = False
            load = self.expert_load.collect(self.device)
            if load:
                report["expert_load"] = load
                report["expert_load_cv_max"] = max(layer["cv"] for layer in load.values())
        return report

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()


def _roll_back(run) -> Path:
    """Reload the newest intact checkpoint of `run` (weights, optimizer, schedule, random
    streams); the step count and the data position stay where they are."""
    run.saver.finalize()  # a save in flight may be the newest checkpoint
    load = partial(load_checkpoint, model_chunks=run.setup.chunks, optimizer=run.optimizer,
                   scheduler=run.scheduler, fully_parallel=run.config.checkpoint.fully_parallel_load)
    loaded = load_newest_intact(run.checkpoint_dir, load, run.config.checkpoint.verify_integrity,
                                run.context.device)
    if loaded.rng_state is not None:
        restore_rng_state(loaded.rng_state, run.setup.rounding_stream)
    return loaded.path
