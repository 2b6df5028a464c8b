"""Timing two implementations side by side on a loaded machine, and recording where.

Runs are interleaved round by round after a warm-up, so that whatever else the
machine is doing hits every implementation alike; the minimum over the rounds is
the best estimate of the unloaded time, the median says how noisy it was. Each
result records the machine, the date and the load average around the measurement.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def interleaved_seconds(runs: dict[Hashable, Callable[[], object]], rounds: int) -> dict:
    """``{key: {"min", "median", "all"}}`` wall seconds of each run over ``rounds`` rounds."""
    for run in runs.values():  # warm-up
        run()
    seconds = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[key].append(time.perf_counter() - start)
    return {key: dict(min=min(values), median=statistics.median(values), all=values)
            for key, values in seconds.items()}


def machine_record(load_average_before: tuple[float, float, float]) -> dict:
    """The command, date, machine, torch and its threads, and the load average before and now."""
    return dict(
        command=" ".join(sys.argv),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
        torch=torch.__version__, torch_threads=torch.get_num_threads(),
        load_average_before=load_average_before, load_average_after=os.getloadavg(),
    )


def write_result(name: str, report: dict) -> Path:
    """Write ``report`` as benchmarks/results/<name>.json; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def describe(report: dict) -> str:
    """One line: date, CPUs, threads and load average of a :func:`machine_record`."""
    return (f"{report['date']}, {report['cpu_count']} CPUs, {report['torch_threads']} torch "
            f"threads, load average before/after {report['load_average_before'][0]:.2f}/"
            f"{report['load_average_after'][0]:.2f}")
