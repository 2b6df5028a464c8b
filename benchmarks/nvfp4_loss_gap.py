"""Loss gap of NVFP4 training against BF16, and of each recipe feature switched off.

Trains the same recipe five times through the real command (`train.py`): precision=bf16,
precision=nvfp4, and nvfp4 with the random Hadamard transform, stochastic rounding or
2D weight scaling disabled; reads each run's metrics.jsonl and reports the final training
loss (mean of the last `--window` steps), the held-out loss after the last step
(`--eval-iters` validation micro-batches) and their gaps relative to BF16.

    .venv/bin/python benchmarks/nvfp4_loss_gap.py --steps 300 [--jobs 2] [override ...]

Overrides after the options go to every run (e.g. `model.seq_length=128`). `--jobs N` runs
N arms at once, each with OMP_NUM_THREADS = cores / N (losses do not depend on it; the
wall times are then not a speed comparison). Writes benchmarks/results/nvfp4_loss_gap.json
and prints a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

ARMS = {
    "bf16": ["precision=bf16"],
    "nvfp4": ["precision=nvfp4"],
    "nvfp4 no RHT": ["precision=nvfp4", "precision.rht=false"],
    "nvfp4 no SR": ["precision=nvfp4", "precision.stochastic_rounding=false"],
    "nvfp4 no 2D": ["precision=nvfp4", "precision.weight_2d=false"],
}


def run_arm(name, overrides, args, run_root) -> dict:
    run_dir = run_root / name.replace(" ", "_")
    command = [sys.executable, "train.py", f"recipe={args.recipe}", *overrides,
               f"train.max_steps={args.steps}", f"optim.warmup_steps={max(1, args.steps // 10)}",
               "logging.log_interval=1", "checkpoint.save_final=false", f"seed={args.seed}",
               f"train.eval_interval={args.steps}", f"train.eval_iters={args.eval_iters}",
               f"hydra.run.dir={run_dir}", *args.overrides]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    print(f"[nvfp4_loss_gap] {name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records]
    final = sum(losses[-args.window:]) / len(losses[-args.window:])
    valid = [record["valid_loss"] for record in records if "valid_loss" in record]
    print(f"[nvfp4_loss_gap] {name}: done in {seconds:.0f} s, final loss {final:.4f}", flush=True)
    return dict(arm=name, command=" ".join(command[1:]), steps=len(losses), final_loss=final,
                last_loss=losses[-1], valid_loss=valid[-1] if valid else None, seconds=seconds,
                threads=threads, load_average_before=load_before,
                load_average_after=os.getloadavg()[0], losses=losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=20, help="steps averaged into the final loss")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--eval-iters", type=int, default=16,
                        help="validation micro-batches for the held-out loss after the last step")
    parser.add_argument("--jobs", type=int, default=1, help="arms run at once")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    parser.add_argument("--run-root", type=Path, default=REPO / "runs" / "nvfp4_loss_gap")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    arms = [arm.strip() for arm in args.arms.split(",")]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda name: run_arm(name, ARMS[name], args, args.run_root), arms))
    baseline = next((r for r in results if r["arm"] == "bf16"), None)
    for result in results:
        for key in ("final_loss", "valid_loss"):
            gap = None
            if baseline is not None and result[key] is not None and baseline[key]:
                gap = (result[key] - baseline[key]) / baseline[key]
            result[key.replace("loss", "gap")] = gap
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nvfp4_loss_gap.json"
    out.write_text(json.dumps(dict(recipe=args.recipe, steps=args.steps, window=args.window,
                                   eval_iters=args.eval_iters, seed=args.seed, jobs=args.jobs,
                                   overrides=args.overrides, cpu_count=os.cpu_count(),
                                   results=results), indent=2) + "\n")
    print(f"recipe={args.recipe} steps={args.steps} {' '.join(args.overrides)}; train loss = mean of "
          f"the last {args.window} steps; held-out = {args.eval_iters} validation micro-batches")
    print("| arm | train loss | gap vs BF16 | held-out loss | gap vs BF16 | wall s |")
    print("|---|---|---|---|---|---|")

    def percent(gap):
        return "" if gap is None else f"{100 * gap:+.2f}%"

    for r in results:
        valid = "" if r["valid_loss"] is None else f"{r['valid_loss']:.4f}"
        print(f"| {r['arm']} | {r['final_loss']:.4f} | {percent(r['final_gap'])} | {valid} "
              f"| {percent(r['valid_gap'])} | {r['seconds']:.0f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
