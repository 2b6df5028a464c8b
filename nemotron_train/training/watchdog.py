"""A per-step watchdog: a step far slower than the recent ones dumps the stacks and exits.

A rank that hangs (a kernel that never returns, a collective a peer never joins, a file
system that stalls a read) holds every other rank in its next collective until the
process-group timeout, which must be long enough for the slowest legitimate collective.
Megatron-Core has no step-level watchdog; NCCL's own watchdog only covers collectives. This
thread compares the running step with the median of the recent ones: past `factor` times
that (and at least `min_seconds`) it writes every thread's Python stack to stderr and to
`<run_dir>/stacks/rank<r>.txt`, and exits with WATCHDOG_EXIT_CODE, which
`launch/slurm/train.sbatch` requeues (the run resumes from its last checkpoint). Every rank
runs its own, so a hang on one rank trips the watchdogs of all (the others wait for it in
their next collective); each waits `exit_delay_s` after dumping before it exits, so that
the launcher, which kills the job's other tasks at the first non-zero exit, does not kill a
peer before its watchdog has dumped its stack too.
"""

import faulthandler
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

WATCHDOG_EXIT_CODE = 75
"""EX_TEMPFAIL: the job may succeed when restarted."""


class StepWatchdog:
    """Arm around each step with `step_started` / `step_finished`; `close` at the end."""

    def __init__(self, *, factor: float, min_seconds: float, history: int, run_dir: Path,
                 rank: int, poll_seconds: float = 0.5, exit_delay_s: float = 10.0):
        self.factor, self.min_seconds = factor, min_seconds
        self.exit_delay_s = exit_delay_s
        self.durations = deque(maxlen=history)
        self.dump_path = Path(run_dir) / "stacks" / f"rank{rank}.txt"
        self.poll_seconds = poll_seconds
        self._step: Optional[int] = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
        self._thread.start()

    def step_started(self, step: int) -> None:
        with self._lock:
            self._step, self._started = step, time.monotonic()

    def step_finished(self) -> None:
        with self._lock:
            if self._step is not None:
                self.durations.append(time.monotonic() - self._started)
            self._step = None

    def limit(self) -> Optional[float]:
        """Seconds a step may take now (None until a few steps have been timed)."""
        if len(self.durations) < min(3, self.durations.maxlen):
            return None
        return max(self.min_seconds, self.factor * statistics.median(self.durations))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                step, elapsed, limit = self._step, time.monotonic() - self._started, self.limit()
            if step is not None and limit is not None and elapsed > limit:
                self._dump_and_exit(step, elapsed, limit)

    def _dump_and_exit(self, step: int, elapsed: float, limit: float) -> None:
        message = (f"[nemotron-train] watchdog: step {step} has run {elapsed:.1f} s, over its "
                   f"limit of {limit:.1f} s (train.watchdog_factor={self.factor} x the median "
                   f"of the last {len(self.durations)} steps, at least "
                   f"train.watchdog_min_seconds={self.min_seconds}); stacks in {self.dump_path}; "
                   f"exiting with {WATCHDOG_EXIT_CODE} for a requeue")
        print(message, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self.dump_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dump_path, "w") as handle:
            handle.write(message + "\n")
            handle.flush()
            faulthandler.dump_traceback(file=handle, all_threads=True)
        time.sleep(self.exit_delay_s)
        # The main thread is the one that hangs: leave without running its cleanup, but end
        # the helper processes (Megatron-Core's checkpoint writers and their results-queue
        # manager), which would otherwise outlive this process.
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(WATCHDOG_EXIT_CODE)
