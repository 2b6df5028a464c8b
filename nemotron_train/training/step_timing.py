"""Per-rank step times: the fastest and the slowest rank every N steps.

Timing is Megatron-Core's `Timers` (one 'train-step' timer per rank, synchronised with the
device at start and stop), and the gather of every rank's total is its
`_get_elapsed_time_all_ranks` (one all-gather of a float per rank; pinned Megatron-Core,
private name). On CUDA, Megatron-Core's `StragglerDetector` additionally times the forward
compute per rank with CUDA events (and reads power, temperature and clocks); it reports to
the `megatron.core.utils` log every N steps.
"""

import logging
from dataclasses import dataclass

import torch.distributed as dist
from megatron.core import utils as megatron_utils
from megatron.core.timers import Timers

from nemotron_train.runtime.backends import cuda_available

STEP_TIMER = "train-step"
# Megatron-Core's singleton: constructing StragglerDetector() again would re-initialise it
# (its __new__ returns the one instance, and __init__ then resets it to disabled).
_STRAGGLER_DETECTOR = getattr(megatron_utils, "__straggler__")


@dataclass
class RankStepTimes:
    """Arm with `start`/`stop` around each step; `report(step)` every step (a collective on
    the reporting steps)."""

    interval: int
    """Report every this many steps (0: never)."""

    def __post_init__(self):
        self.timers = Timers(log_level=0, log_option="minmax")
        self.steps = 0
        self.straggler = None
        if self.interval and cuda_available():
            self.straggler = _STRAGGLER_DETECTOR
            if not self.straggler.configured:  # once per process: it starts a control server
                self.straggler.configure(dist.get_world_size(), dist.get_rank(), enabled=True)
            logging.getLogger("megatron.core.utils").setLevel(logging.INFO)

    def start(self) -> None:
        self.timers(STEP_TIMER, log_level=0).start()

    def stop(self) -> None:
        self.timers(STEP_TIMER, log_level=0).stop()
        self.steps += 1

    def report(self, step: int, step_flops: float = 0.0) -> dict:
        """On every `interval`-th step: mean step time of the fastest and the slowest rank
        since the last report, and the slowest rank."""
        if not self.interval or step % self.interval or not self.steps:
            return {}
        per_rank = self.timers._get_elapsed_time_all_ranks([STEP_TIMER], reset=True, barrier=False)
        seconds = (per_rank[:, 0] / self.steps).tolist()
        if self.straggler is not None:
            self.straggler.report(step_flops * self.steps, self.steps)
        self.steps = 0
        slowest = max(range(len(seconds)), key=seconds.__getitem__)
        return {"step_time_min_s": min(seconds), "step_time_max_s": seconds[slowest],
                "step_time_slowest_rank": slowest}


def straggler_timer():
    """The context the forward step runs in: Megatron-Core's StragglerDetector (a no-op unless
    RankStepTimes configured it)."""
    return _STRAGGLER_DETECTOR
