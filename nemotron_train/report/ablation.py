"""Compare the arms of an ablation from their run directories.

`python -m nemotron_train.report.ablation <run_dir or multirun dir> ... --out <dir>`

Each run directory holds `config.yaml` and `metrics.jsonl` (train.py writes both) and, for an
MTP arm measured with `python -m nemotron_train.eval.mtp_acceptance`, `mtp_acceptance.json`.
A directory without `config.yaml` is taken as a Hydra multirun directory: its job
subdirectories are the arms. Writes `ablation.md`, `ablation.json` and `loss_curves.png`.
"""

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from nemotron_train.errors import ConfigError

SMOOTHING_WINDOW = 5
"""The smoothed loss is the mean loss over this many last logged steps."""


@dataclass(frozen=True)
class ArmSummary:
    """One arm's numbers, as the table shows them."""

    label: str
    run_dir: str
    steps: int
    final_loss: float
    smoothed_loss: float
    valid_loss: Optional[float]
    median_tokens_per_s: float
    active_params: float
    total_params: float
    moe_dispatch_width: Optional[int]
    all_to_all_bytes_per_routed_copy: Optional[float]
    all_to_all_bytes_per_token: Optional[float]
    expert_weight_bytes_per_token: Optional[float]
    mtp_losses: dict
    mtp_acceptance: dict


def find_runs(paths: list) -> list:
    """Run directories named by `paths`, a multirun directory standing for its job dirs."""
    runs = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            runs.append(path)
            continue
        jobs = sorted((p for p in path.iterdir() if (p / "config.yaml").is_file()),
                      key=lambda p: (len(p.name), p.name)) if path.is_dir() else []
        if not jobs:
            raise ConfigError("run_dir", str(path), "neither a run directory (config.yaml) "
                              "nor a multirun directory with run directories inside")
        runs.extend(jobs)
    return runs


def run_label(run_dir: Path) -> str:
    """The arm's name from Hydra's recorded overrides (`arm=latent`), else the directory name."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for line in overrides.read_text().splitlines():
            item = line.strip().lstrip("- ").strip("'\"")
            if item.startswith("arm="):
                return item.partition("=")[2]
    return run_dir.name


def summarize_run(run_dir: Path, window: int = SMOOTHING_WINDOW) -> ArmSummary:
    """Read one run's metrics, dry-run accounting and MTP acceptance."""
    from nemotron_train.config.schema import load_run_config
    from nemotron_train.planning.report import build_report
    from nemotron_train.telemetry.metrics import read_metrics

    records = read_metrics(run_dir)
    if not records:
        raise ConfigError("run_dir", str(run_dir), "metrics.jsonl has no logged steps yet")
    config = load_run_config(run_dir)
    report = build_report(config)
    losses = [r["loss"] for r in records]
    # Step 1 includes start-up work (first allocations); leave it out of the throughput.
    throughput = [r["tokens_per_s"] for r in records if r["step"] > 1] or [records[0]["tokens_per_s"]]
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    last = records[-1]
    traffic = report["moe_communication"]
    moe_layers = traffic["moe_layers"] if traffic else 0
    activation_bytes = report["memory"]["bytes_per_element"]["activation"]
    acceptance_file = run_dir / "mtp_acceptance.json"
    acceptance = {}
    if acceptance_file.is_file():
        acceptance = {f"mtp_{d['depth']}": d["rate"] for d in json.loads(acceptance_file.read_text())["depths"]}
    return ArmSummary(
        label=run_label(run_dir), run_dir=str(run_dir), steps=last["step"],
        final_loss=last["loss"], smoothed_loss=statistics.fmean(losses[-window:]),
        valid_loss=valid[-1] if valid else None,
        median_tokens_per_s=statistics.median(throughput),
        active_params=report["active_params"], total_params=report["total_params"],
        moe_dispatch_width=traffic["dispatch_width"] if traffic else None,
        all_to_all_bytes_per_routed_copy=(2 * traffic["dispatch_width"] * activation_bytes
                                          if traffic else None),
        all_to_all_bytes_per_token=traffic["all_to_all_bytes_forward"] * moe_layers if traffic else None,
        expert_weight_bytes_per_token=traffic["expert_weight_bytes"] * moe_layers if traffic else None,
        mtp_losses={key[:-len("_loss")]: value for key, value in last.items()
                    if key.startswith("mtp_") and key.endswith("_loss")},
        mtp_acceptance=acceptance,
    )


def _optional(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(arms: list, window: int = SMOOTHING_WINDOW) -> str:
    """The comparison as a Markdown table, one column per arm."""
    rows = [
        ("steps", lambda a: f"{a.steps:,}"),
        ("final loss", lambda a: f"{a.final_loss:.4f}"),
        (f"smoothed loss (mean of last {window} logged steps)", lambda a: f"{a.smoothed_loss:.4f}"),
        ("held-out loss (last evaluation)", lambda a: _optional(a.valid_loss, ".4f")),
        ("median tokens/s", lambda a: f"{a.median_tokens_per_s:,.0f}"),
        ("active params", lambda a: f"{a.active_params:,.0f}"),
        ("total params", lambda a: f"{a.total_params:,.0f}"),
        ("MoE dispatch width", lambda a: _optional(a.moe_dispatch_width, "d")),
        ("all-to-all bytes per routed copy (dispatch + combine, fwd)",
         lambda a: _optional(a.all_to_all_bytes_per_routed_copy, ",.0f")),
        ("all-to-all bytes per token (all MoE layers, fwd)",
         lambda a: _optional(a.all_to_all_bytes_per_token, ",.0f")),
        ("routed-expert weight bytes per token (all MoE layers)",
         lambda a: _optional(a.expert_weight_bytes_per_token, ",.0f")),
    ]
    depths = sorted({k for a in arms for k in a.mtp_losses}, key=lambda k: int(k.split("_")[1]))
    for depth in depths:
        rows.append((f"{depth} loss (final)", lambda a, d=depth: _optional(a.mtp_losses.get(d), ".4f")))
        rows.append((f"{depth} draft acceptance (held out)",
                     lambda a, d=depth: _optional(a.mtp_acceptance.get(d), ".2%")))
    lines = ["| | " + " | ".join(a.label for a in arms) + " |", "|---|" + "---|" * len(arms)]
    lines += [f"| {name} | " + " | ".join(cell(a) for a in arms) + " |" for name, cell in rows]
    return "\n".join(lines)


def plot_losses(runs: list, labels: list, path: Path) -> None:
    """Training loss per logged step of every arm (held-out losses as markers), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nemotron_train.telemetry.metrics import read_metrics

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for run_dir, label in zip(runs, labels):
        records = read_metrics(run_dir)
        line, = axes.plot([r["step"] for r in records], [r["loss"] for r in records], label=label, lw=1.2)
        valid = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r]
        if valid:
            axes.plot(*zip(*valid), "o", color=line.get_color(), label=f"{label} (held out)")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(paths: list, out: Path, window: int = SMOOTHING_WINDOW) -> list:
    """Summarize the runs under `paths` into `out`; return the summaries."""
    runs = find_runs(paths)
    arms = [summarize_run(run, window) for run in runs]
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(arms, window)
    (out / "ablation.md").write_text(table + "\n\n![loss curves](loss_curves.png)\n")
    (out / "ablation.json").write_text(json.dumps(
        {"smoothing": f"mean loss of the last {window} logged steps",
         "arms": [asdict(a) for a in arms]}, indent=2) + "\n")
    plot_losses(runs, [a.label for a in arms], out / "loss_curves.png")
    print(table)
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'loss_curves.png'}")
    return arms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, or a multirun directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report")
    parser.add_argument("--window", type=int, default=SMOOTHING_WINDOW,
                        help=f"logged steps in the smoothed loss (default {SMOOTHING_WINDOW})")
    args = parser.parse_args(argv)
    try:
        write_report(args.runs, args.out, args.window)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
