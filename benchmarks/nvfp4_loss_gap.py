"""Loss gap of NVFP4 training against BF16, and of each recipe feature switched off.

Trains the same recipe five times through the real command (`train.py`): precision=bf16,
precision=nvfp4, and nvfp4 with the random Hadamard transform, stochastic rounding or
2D weight scaling disabled; reads each run's metrics.jsonl and reports the final loss
(mean of the last `--window` steps) and its gap relative to BF16.

    .venv/bin/python benchmarks/nvfp4_loss_gap.py --steps 300 [override ...]

Overrides after the options go to every run (e.g. `model.hidden_size=128`). Writes
benchmarks/results/nvfp4_loss_gap.json and prints a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

ARMS = {
    "bf16": ["precision=bf16"],
    "nvfp4": ["precision=nvfp4"],
    "nvfp4, no RHT": ["precision=nvfp4", "precision.rht=false"],
    "nvfp4, no SR": ["precision=nvfp4", "precision.stochastic_rounding=false"],
    "nvfp4, no 2D weights": ["precision=nvfp4", "precision.weight_2d=false"],
}


def run_arm(name, overrides, args, run_root) -> dict:
    run_dir = run_root / name.replace(", ", "_").replace(" ", "_")
    command = [sys.executable, "train.py", f"recipe={args.recipe}", *overrides,
               f"train.max_steps={args.steps}", f"optim.warmup_steps={max(1, args.steps // 10)}",
               "logging.log_interval=1", "checkpoint.save_final=false", f"seed={args.seed}",
               f"hydra.run.dir={run_dir}", *args.overrides]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records]
    final = sum(losses[-args.window:]) / len(losses[-args.window:])
    return dict(arm=name, command=" ".join(command[1:]), steps=len(losses), final_loss=final,
                last_loss=losses[-1], seconds=seconds, load_average_before=load_before,
                load_average_after=os.getloadavg()[0], losses=losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=20, help="steps averaged into the final loss")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    parser.add_argument("--run-root", type=Path, default=REPO / "runs" / "nvfp4_loss_gap")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    arms = [arm.strip() for arm in args.arms.split(",")]
    results = [run_arm(name, ARMS[name], args, args.run_root) for name in arms]
    baseline = next((r["final_loss"] for r in results if r["arm"] == "bf16"), None)
    for result in results:
        result["relative_gap"] = None if baseline is None else (result["final_loss"] - baseline) / baseline
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nvfp4_loss_gap.json"
    out.write_text(json.dumps(dict(recipe=args.recipe, steps=args.steps, window=args.window,
                                   seed=args.seed, overrides=args.overrides, cpu_count=os.cpu_count(),
                                   results=results), indent=2) + "\n")
    print(f"recipe={args.recipe} steps={args.steps} final loss = mean of the last {args.window} steps")
    print("| arm | final loss | gap vs BF16 | wall s | load avg before/after |")
    print("|---|---|---|---|---|")
    for r in results:
        gap = "" if r["relative_gap"] is None else f"{100 * r['relative_gap']:+.2f}%"
        print(f"| {r['arm']} | {r['final_loss']:.4f} | {gap} | {r['seconds']:.0f} "
              f"| {r['load_average_before']:.1f} / {r['load_average_after']:.1f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
