"""Training stall per checkpoint save: synchronous against asynchronous, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/checkpoint_stall.py --rounds 2

Trains a 196M-parameter hybrid (the tiny recipe's layer types at width 1536, 12 layers, 8
experts; fp32 with Adam: a 2.4 GB checkpoint, about 5 GB resident) for 8 steps with a save
every 2 steps, once with `checkpoint.async_save=false` and once with `true`, alternating the
order each round, in fresh processes. The stall of a save is how long `CheckpointSaver.save`
keeps the loop from the next step (events.jsonl `checkpoint_saved.stall_s`); the write time is
from the start of the save to its publication as `latest` (`checkpoint_published.write_s`). The
steps that follow a save show what the background write costs the training it overlaps.
Writes benchmarks/results/checkpoint_stall_cpu.json (every save and step of every run).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS, SAVE_INTERVAL = 8, 2
MODEL = [
    "recipe=tiny", "model.hidden_size=1536", "model.num_layers=12", "model.pattern=MEM*MEMEM*ME",
    "model.ffn_hidden_size=6144", "model.moe_ffn_hidden_size=1536",
    "model.moe_shared_expert_intermediate_size=1536", "model.num_attention_heads=12",
    "model.seq_length=128", "train.global_batch_size=2", "train.micro_batch_size=2",
    f"train.max_steps={MAX_STEPS}", "optim.warmup_steps=1", "logging.log_interval=1",
    f"checkpoint.save_interval={SAVE_INTERVAL}", "checkpoint.keep_last=1",
]
TOKENS_PER_STEP = 2 * 128


def run(asynchronous: bool, run_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "train.py", *MODEL, f"checkpoint.async_save={str(asynchronous).lower()}",
         f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checkpoint = max((run_dir / "checkpoints").glob("iter_*"))
    return {
        "asynchronous": asynchronous,
        "wall_s": time.perf_counter() - started,
        "stall_s": {e["step"]: e["stall_s"] for e in events if e["event"] == "checkpoint_saved"},
        # By the step saved (a background save is published a step or more later).
        "write_s": {int(Path(e["checkpoint"]).name.split("_")[1]): e["write_s"]
                    for e in events if e["event"] == "checkpoint_published"},
        "step_s": {r["step"]: TOKENS_PER_STEP / r["tokens_per_s"] for r in records},
        "peak_memory_gb": max(r["peak_memory_gb"] for r in records),
        "checkpoint_gb": sum(f.stat().st_size for f in checkpoint.iterdir()) / 1e9,
    }


def summarize(runs: list[dict]) -> dict:
    """Per mode: medians over every run, leaving out each run's first save and first step."""
    after_save = set(range(SAVE_INTERVAL + 1, MAX_STEPS, SAVE_INTERVAL))  # steps 3, 5, 7
    summary = {}
    for mode in ("sync", "async"):
        mine = [r for r in runs if r["asynchronous"] == (mode == "async")]
        stalls = [s for r in mine for step, s in sorted(r["stall_s"].items())[1:]]
        writes = [s for r in mine for step, s in sorted(r["write_s"].items())[1:]]
        summary[mode] = {
            "median_stall_s": statistics.median(stalls),
            "first_save_stall_s": [r["stall_s"][min(r["stall_s"])] for r in mine],
            "median_write_s": statistics.median(writes),
            "median_step_s_after_a_save": statistics.median(
                s for r in mine for step, s in r["step_s"].items() if step in after_save),
            "median_step_s_other": statistics.median(
                s for r in mine for step, s in r["step_s"].items() if step not in after_save and step > 1),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in mine),
            "checkpoint_gb": mine[0]["checkpoint_gb"],
        }
    summary["stall_ratio_sync_over_async"] = (summary["sync"]["median_stall_s"]
                                              / summary["async"]["median_stall_s"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/checkpoint_stall_cpu.json"))
    args = parser.parse_args()
    machine = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
               "load_average_before": os.getloadavg(), "platform": platform.platform()}
    runs = []
    for index in range(args.rounds):
        for asynchronous in ((False, True) if index % 2 == 0 else (True, False)):
            run_dir = Path(tempfile.mkdtemp(prefix="checkpoint_stall_"))
            try:
                runs.append(run(asynchronous, run_dir))
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "step_s"}), flush=True)
    machine["load_average_after"] = os.getloadavg()
    record = {"command": "PYTHONPATH=. .venv/bin/python benchmarks/checkpoint_stall.py "
                         f"--rounds {args.rounds}",
              "machine": machine, "model": MODEL, "summary": summarize(runs), "runs": runs}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
