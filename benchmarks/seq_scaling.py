"""Step time and peak memory of the tiny model versus sequence length, and attention's share.

Each length runs in a fresh process (so the peak-memory high-water mark is its own): the
tiny recipe's model (recipes/model/tiny.yaml, local spec, fp32 as recipe=tiny, one process) built by the
trainer's own setup, one micro-batch of one sequence of random tokens, and Megatron-Core's
forward-backward schedule plus the optimizer step, timed over `--steps` steps after one
warm-up step (median).

- Memory: peak resident set size (getrusage ru_maxrss, the process's high-water mark) after
  the steps, and its increase over the high-water mark just before the first step (what
  the steps themselves add: activations, gradients, optimizer state).
- Attention's share: the model's own attention core module (Megatron-Core's
  DotProductAttention at CP 1) timed separately, forward + backward on random query, key
  and value of the step's shape, times the number of attention layers, over the step time.
  Projections (QKV, output) are not in it: they grow linearly like every other matmul.

    PYTHONPATH=. .venv/bin/python benchmarks/seq_scaling.py --lengths 1024 2048 4096 8192 16384

Prints a Markdown table, writes benchmarks/results/seq_scaling_cpu.json and a PNG plot
beside it (matplotlib, the `report` extra).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(seq_length: int, steps: int) -> dict:
    """One length, in this process: step time, peak memory, attention core time."""
    from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from omegaconf import OmegaConf

    from nemotron_train.config.schema import RunConfig
    from nemotron_train.model.config import HybridModelConfig
    from nemotron_train.precision.presets import PrecisionConfig, precision_settings
    from nemotron_train.runtime.distributed import ParallelConfig, initialize_distributed
    from nemotron_train.runtime.setup import prepare_runtime
    from nemotron_train.training.config import TrainConfig
    from nemotron_train.training.loop import connect_megatron_hooks, train_step
    from nemotron_train.training.model_setup import build_model
    from nemotron_train.training.optimizer import (OptimConfig, build_optimizer, build_scheduler,
                                                   schedule_steps)

    model_fields = OmegaConf.to_container(OmegaConf.load(REPO / "recipes" / "model" / "tiny.yaml"))
    model = HybridModelConfig(**{**model_fields, "seq_length": seq_length, "spec": "local"})
    config = RunConfig(model=model, parallel=ParallelConfig(backend="gloo"),
                       precision=PrecisionConfig(recipe="fp32"),
                       train=TrainConfig(global_batch_size=1, micro_batch_size=1, max_steps=steps + 1))
    prepare_runtime()
    context = initialize_distributed(config.parallel)
    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(0)
    init_num_microbatches_calculator(0, None, 1, 1, 1)
    vocab = 4096
    setup = build_model(config, vocab, context.device)
    optim = OptimConfig(warmup_steps=1)
    optimizer = build_optimizer(setup.chunks, optim, distributed_optimizer=False,
                                precision_fields=precision_settings(config.precision).optimizer)
    scheduler = build_scheduler(optimizer, optim, schedule_steps(optim, steps + 1, seq_length))
    connect_megatron_hooks(setup, optimizer)

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:
            tokens = torch.randint(0, vocab, (1, seq_length + 1), generator=generator)
            yield {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
                   "loss_mask": torch.ones(1, seq_length),
                   "position_ids": torch.arange(seq_length).unsqueeze(0)}

    step = partial(train_step, forward_backward=get_forward_backward_func(), data_iterator=batches(),
                   model_chunks=setup.chunks, optimizer=optimizer, scheduler=scheduler,
                   num_microbatches=1, seq_length=seq_length, micro_batch_size=1,
                   device=context.device, moe_layers=[])
    rss_before = peak_rss_bytes()
    step()  # warm-up: allocator, optimizer states
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    rss_after = peak_rss_bytes()

    cores = [m for name, m in setup.chunks[0].module.named_modules() if name.endswith("core_attention")]
    attention_times = []
    shape = (seq_length, 1, model.num_attention_heads, model.head_dim)
    kv_shape = (seq_length, 1, model.num_query_groups, model.head_dim)
    for _ in range(steps):
        query = torch.randn(shape, requires_grad=True)
        key, value = (torch.randn(kv_shape, requires_grad=True) for _ in range(2))
        started = time.perf_counter()
        cores[0](query, key, value, None).sum().backward()
        attention_times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    attention_s = statistics.median(attention_times) * len(cores)
    return {"seq_length": seq_length, "step_s": step_s, "tokens_per_s": seq_length / step_s,
            "attention_core_s": attention_s, "attention_share": attention_s / step_s,
            "attention_layers": len(cores), "peak_rss_bytes": rss_after,
            "step_rss_increase_bytes": rss_after - rss_before, "steps": steps,
            "torch_threads": torch.get_num_threads()}


def run_child(seq_length: int, steps: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", str(seq_length), "--steps", str(steps)],
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"seq {seq_length} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| seq | step s | x seq | x time | tokens/s | attention core s (share) | peak RSS GB | step adds GB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['seq_length']} | {row['step_s']:.3f} | {row['seq_length'] / base['seq_length']:.0f} "
            f"| {row['step_s'] / base['step_s']:.2f} | {row['tokens_per_s']:,.0f} "
            f"| {row['attention_core_s']:.3f} ({row['attention_share']:.0%}) "
            f"| {row['peak_rss_bytes'] / 1e9:.2f} | {row['step_rss_increase_bytes'] / 1e9:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["seq_length"] for r in rows]
    base = rows[0]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    time_axis.loglog(lengths, [r["step_s"] for r in rows], "o-", label="step (fwd+bwd+AdamW)")
    time_axis.loglog(lengths, [r["attention_core_s"] for r in rows], "s-", label="attention core, all layers")
    time_axis.loglog(lengths, [base["step_s"] * n / lengths[0] for n in lengths], "k--", lw=0.8,
                     label="linear in seq")
    time_axis.set_xlabel("sequence length (tokens)")
    time_axis.set_ylabel("seconds")
    time_axis.set_title("tiny model, 1 CPU process")
    time_axis.legend()
    memory_axis.plot(lengths, [r["step_rss_increase_bytes"] / 1e9 for r in rows], "o-",
                     label="RSS added by the steps")
    memory_axis.plot(lengths, [r["peak_rss_bytes"] / 1e9 for r in rows], "s-", label="peak RSS")
    memory_axis.set_xlabel("sequence length (tokens)")
    memory_axis.set_ylabel("GB")
    memory_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per length (after one warm-up)")
    parser.add_argument("--output", default=str(RESULTS / "seq_scaling_cpu.json"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)), flush=True)
        return
    rows = []
    for seq_length in args.lengths:
        print(f"[seq_scaling] seq {seq_length} ...", file=sys.stderr, flush=True)
        rows.append(run_child(seq_length, args.steps))
    print(table(rows))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"device": "cpu", "rows": rows}, indent=2) + "\n")
    plot(rows, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
