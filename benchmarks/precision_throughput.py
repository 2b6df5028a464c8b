"""Training throughput of the tiny recipe under precision=bf16 and precision=nvfp4, side by side.

Runs the real command (`train.py recipe=tiny precision=<arm> ...`, the emulated NVFP4
path on a CPU) for each arm in turn, bf16 then nvfp4, `--pairs` times, and reads each
run's metrics.jsonl: a run's figure is its median tokens/s over the logged steps after
the first `--skip` (start-up and the first steps' one-off costs). Pairing the runs keeps
the nvfp4 / bf16 ratio meaningful when the machine's load drifts; the table gives each
arm's median over its runs and the median of the pairwise ratios.

    PYTHONPATH=. .venv/bin/python benchmarks/precision_throughput.py [--steps 40] [--pairs 3] [override ...]

Overrides after the options go to every run. Writes
benchmarks/results/precision_throughput_cpu.json and prints a Markdown table.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.side_by_side import describe, machine_record, write_result

REPO = Path(__file__).resolve().parents[1]
ARMS = ("bf16", "nvfp4")


def run(arm: str, index: int, args) -> dict:
    run_dir = args.run_root / f"{arm}_{index}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a left-over checkpoint would make train.py resume
    command = [sys.executable, "train.py", f"recipe={args.recipe}", f"precision={arm}",
               f"train.max_steps={args.steps}", f"optim.warmup_steps={max(1, args.steps // 10)}",
               "logging.log_interval=1",
               "checkpoint.save_final=false", f"hydra.run.dir={run_dir}", *args.overrides]
    print(f"[precision_throughput] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][args.skip:]
    return dict(arm=arm, command=" ".join(command[1:]), steps=len(records),
                median_tokens_per_s=statistics.median(rates), tokens_per_s=rates,
                load_average_after=os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="first logged steps left out")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--run-root", type=Path, default=REPO / "runs" / "precision_throughput")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = [run(arm, index, args) for index in range(args.pairs) for arm in ARMS]
    by_arm = {arm: [r["median_tokens_per_s"] for r in runs if r["arm"] == arm] for arm in ARMS}
    ratios = [nvfp4 / bf16 for bf16, nvfp4 in zip(by_arm["bf16"], by_arm["nvfp4"])]
    report = dict(
        machine_record(load_before), recipe=args.recipe, steps=args.steps, skip=args.skip,
        pairs=args.pairs, overrides=args.overrides,
        median_tokens_per_s={arm: statistics.median(values) for arm, values in by_arm.items()},
        nvfp4_over_bf16=statistics.median(ratios), runs=runs,
    )
    out = write_result("precision_throughput_cpu", report)
    print(f"{describe(report)}; recipe={args.recipe} {' '.join(args.overrides)}, {args.steps} "
          f"steps, tokens/s = median over steps {args.skip + 1}-{args.steps}, {args.pairs} pairs")
    print("| precision | tokens/s (median of runs) | runs |")
    print("|---|---|---|")
    for arm, values in by_arm.items():
        print(f"| {arm} | {statistics.median(values):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in values)} |")
    print(f"nvfp4 / bf16 = {report['nvfp4_over_bf16']:.2f} (median of the pairs)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
