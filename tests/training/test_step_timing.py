"""Per-rank step times through Megatron-Core's Timers: two gloo ranks with known step
durations report the fastest and the slowest rank and their mean step times."""

import json
import os
import socket
import time

import torch.distributed as dist
import torch.multiprocessing as mp

STEP_SECONDS = {0: 0.1, 1: 0.3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, out_dir: str) -> None:
    from nemotron_train.runtime.setup import prepare_runtime
    from nemotron_train.training.step_timing import RankStepTimes

    prepare_runtime()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    timing = RankStepTimes(interval=2)
    reports = []
    for step in (1, 2, 3):
        timing.start()
        time.sleep(STEP_SECONDS[rank])
        timing.stop()
        reports.append(timing.report(step))
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(reports, handle)


def test_fastest_and_slowest_rank_over_the_interval(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        first, second, third = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert first == {} and third == {}  # only every 2nd step reports
        assert second["step_time_slowest_rank"] == 1
        assert 0.1 <= second["step_time_min_s"] < 0.2  # mean over the 2 steps of rank 0
        assert 0.3 <= second["step_time_max_s"] < 0.4
