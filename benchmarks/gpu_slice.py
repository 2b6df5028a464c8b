"""A Nano-width slice trained on one GPU through the local spec: throughput, MFU and peak
memory against the dry run's estimate for exactly this configuration.

The slice is Nemotron 3 Nano's first six layers (`MEMEM*`: 3 Mamba-2, 2 MoE with 128 experts
top-6 and the shared expert, 1 attention) at Nano's widths (hidden 2688, vocabulary 131072),
sequence 4096, micro-batch 1, 8 micro-batches per step, BF16, no recompute, one process. It
runs the real training loop (`nemotron_train.training.loop.train`); the dry run
(`nemotron_train.planning.report.build_report`) is computed for the same RunConfig.

    python benchmarks/gpu_slice.py                   # on the GPU machine (benchmarks/gpu/run.sh)
    python benchmarks/gpu_slice.py --device cpu      # a rehearsal at tiny width on a CPU
    python benchmarks/gpu_slice.py --estimate-only   # the dry run's figures only, any machine

Figures: tokens/s (median over the timed steps, the optimizer step included), model TFLOP/s
(the dry run's training FLOPs per token x tokens/s), MFU against the device's BF16 dense peak
(datasheet) and against a measured 8192^3 BF16 matmul, peak memory allocated against the
estimate, and per layer type the activation bytes one layer keeps for backward (memory
allocated across its forward) against the estimate's. Writes `gpu_slice.json` (or
`cpu_slice_rehearsal.json`, or `gpu_slice_estimate.json`) into --out.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
H200_BF16_DENSE_PEAK = 989.4e12
"""NVIDIA's datasheet figure for the H100/H200 SXM, dense BF16 (no sparsity)."""
LAYER_TYPES = {"MambaLayer": "mamba", "TransformerLayer": "attention",
               "MoETransformerLayer": "moe", "MLPLayer": "mlp"}
SLICE = ["recipe=nano_30b", "data=stdlib", "model.pattern=MEMEM*", "model.num_layers=6",
         "model.seq_length=4096", "model.recompute=[]", "precision=bf16",
         "parallel.tensor=1", "parallel.expert=1", "parallel.expert_tensor=null",
         "parallel.sequence_parallel=false", "parallel.distributed_optimizer=false",
         "parallel.num_nodes=null", "train.micro_batch_size=1", "train.global_batch_size=8",
         "optim.warmup_tokens=null", "optim.warmup_steps=1", "checkpoint.save_final=false",
         "logging.log_interval=1"]
TINY_WIDTH = ["model.hidden_size=128", "model.num_attention_heads=4", "model.head_dim=32",
              "model.mamba_num_heads=4", "model.mamba_head_dim=32", "model.mamba_state_dim=16",
              "model.mamba_num_groups=2", "model.mamba_chunk_size=32", "model.num_experts=8",
              "model.moe_ffn_hidden_size=64", "model.moe_shared_expert_intermediate_size=64",
              "model.vocab_size=4096", "model.seq_length=256", "train.global_batch_size=2"]


def compose(overrides: list[str]):
    """The RunConfig `train.py` would build from these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from nemotron_train.config.schema import register_schema
    from nemotron_train.entry import to_run_config

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # `recipe` reads hydra:runtime.choices
        with open_dict(cfg):
            del cfg["hydra"]
        return to_run_config(cfg)


class ActivationProbe:
    """Memory allocated across each decoder layer's training forward, by layer type: what the
    layer keeps for its backward (and its output), one micro-batch.

    The first micro-batch is left out (one-time allocations: cuBLAS workspaces, caches), and
    the hooks go once every layer type has `samples` values, before the timed steps."""

    def __init__(self, device, layers_per_type: dict, samples: int = 8):
        self.device = device
        self.deltas = {}
        self._skip = dict(layers_per_type)
        self._wanted = {layer_type: samples for layer_type, count in layers_per_type.items() if count}
        self._start = {}
        self._handles = []

    def __enter__(self):
        from torch.nn.modules import module

        self._handles = [module.register_module_forward_pre_hook(self._before),
                         module.register_module_forward_hook(self._after)]
        return self

    def __exit__(self, *exc):
        self._remove()

    def _remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def _before(self, module, args):
        if type(module).__name__ in LAYER_TYPES and module.training and torch.is_grad_enabled():
            self._start[id(module)] = self._allocated()

    def _after(self, module, args, output):
        start = self._start.pop(id(module), None)
        if start is None:
            return
        layer_type = LAYER_TYPES[type(module).__name__]
        if self._skip.get(layer_type, 0) > 0:
            self._skip[layer_type] -= 1
            return
        self.deltas.setdefault(layer_type, []).append(self._allocated() - start)
        if all(len(self.deltas.get(t, ())) >= n for t, n in self._wanted.items()):
            self._remove()

    def median_bytes(self) -> dict:
        return {layer_type: statistics.median(values) for layer_type, values in self.deltas.items()}


class AdamStepMemory:
    """Peak memory allocated inside each optimizer step and between steps (forward, backward,
    gradient clipping), from torch's global optimizer-step hooks, and the peaks over the run.

    The split says where a peak above the estimate comes from: without TE or Apex the optimizer
    is torch's multi-tensor (foreach) Adam, which allocates a temporary as large as its second
    moments (4 bytes per parameter) inside the step; the estimate (TE's fused Adam) has none."""

    def __init__(self, device):
        self.device = device
        self.outside, self.inside = [], []
        self.overall_allocated = self.overall_reserved = 0
        self._handles = []

    def __enter__(self):
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        if self.device.type == "cuda":
            self._handles = [register_optimizer_step_pre_hook(self._before_step),
                             register_optimizer_step_post_hook(self._after_step)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        if self.device.type == "cuda":
            self._take()  # what came after the last step

    def _take(self) -> int:
        """The peak since the last call (then reset), folded into the run's peaks."""
        peak = torch.cuda.max_memory_allocated(self.device)
        self.overall_allocated = max(self.overall_allocated, peak)
        self.overall_reserved = max(self.overall_reserved, torch.cuda.max_memory_reserved(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def _before_step(self, optimizer, args, kwargs):
        self.outside.append(self._take())

    def _after_step(self, optimizer, args, kwargs):
        self.inside.append(self._take())


def matmul_tflops(device, size=8192, repeats=10) -> float:
    """A measured BF16 GEMM ceiling on this device (random operands, after warm-up)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def machine_description(device) -> dict:
    info = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                hostname=platform.node(), nproc=os.cpu_count(), load_average=os.getloadavg(),
                python=platform.python_version(), torch=torch.__version__)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info["nvidia_smi"] = f"unavailable: {error}"
    return info


def estimate_figures(estimate: dict) -> dict:
    """The dry run's figures the measurement is compared with (stage 0: the whole slice)."""
    stage = estimate["memory"]["stages"][0]
    return dict(
        params=dict(total=estimate["total_params"], active=estimate["active_params"], on_this_gpu=stage["params"]),
        layers=estimate["layers"],
        flops_per_token=estimate["flops_per_token"],
        tokens_per_step=estimate["flops"]["tokens_per_step"],
        estimate_peak_bytes=stage["peak"],
        # The estimate less its runtime allowance: what the tensors themselves take.
        estimate_without_reserve_bytes=stage["peak"] - stage["reserve"],
        estimate_split={key: stage[key] for key in ("weights", "gradients", "optimizer", "activations", "reserve")},
        estimate_loss_and_logits_bytes=stage["loss_and_mtp"],
        estimate_activation_bytes_per_layer=estimate["memory"]["activation_bytes_per_layer"],
        # torch's foreach AdamW (no TE, no Apex) allocates one fp32 tensor per parameter in its step.
        foreach_adam_temporary_bytes=4 * stage["params"],
    )


def measure(config, args, figures: dict, device) -> dict:
    """Train the slice through the real loop; its throughput and memory against `figures`."""
    from nemotron_train.training.loop import train

    machine = machine_description(device)
    ceiling = matmul_tflops(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    shutil.rmtree(args.run_dir, ignore_errors=True)  # metrics.jsonl appends; a rerun starts clean
    args.run_dir.mkdir(parents=True)
    layer_types = figures["estimate_activation_bytes_per_layer"]
    with ActivationProbe(device, {t: figures["layers"][t] for t in ("mamba", "moe", "attention", "mlp")}) as probe, \
            AdamStepMemory(device) as adam_memory:
        train(config, args.run_dir)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in records if r["step"] > args.warmup_steps)
    achieved = figures["flops_per_token"] * tokens_per_s
    estimated = figures["estimate_without_reserve_bytes"]
    on_cuda = device.type == "cuda"
    peak = adam_memory.overall_allocated if on_cuda else None
    # The first step also creates Adam's states: the later ones show the steady state.
    outside_adam = max(adam_memory.outside[1:], default=None)
    measured_layers = probe.median_bytes()
    return dict(
        machine=machine, wall_seconds=wall,
        steps=dict(warmup=args.warmup_steps, timed=args.timed_steps, losses=[r["loss"] for r in records],
                   tokens_per_s=[r["tokens_per_s"] for r in records]),
        tokens_per_s=tokens_per_s,
        step_seconds=figures["tokens_per_step"] / tokens_per_s,
        model_tflops=achieved / 1e12,
        mfu_vs_datasheet_bf16_dense=achieved / H200_BF16_DENSE_PEAK if on_cuda else None,
        measured_bf16_matmul_tflops=ceiling,
        mfu_vs_measured_matmul=achieved / (ceiling * 1e12) if ceiling else None,
        memory=dict(
            peak_allocated_bytes=peak, peak_reserved_bytes=adam_memory.overall_reserved if on_cuda else None,
            allocated_over_estimate=peak / estimated if peak else None,
            within_10_percent=abs(peak / estimated - 1) <= 0.10 if peak else None,
            peak_outside_adam_step_bytes=outside_adam,
            outside_adam_step_over_estimate=outside_adam / estimated if outside_adam else None,
            peak_inside_adam_step_bytes=max(adam_memory.inside[1:], default=None),
            activation_bytes_per_layer={t: dict(measured=measured_layers.get(t), estimate=bytes_)
                                        for t, bytes_ in layer_types.items()},
        ),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--estimate-only", action="store_true",
                        help="write the dry run's figures for the full-width slice (gpu_slice_estimate.json), "
                             "on any machine, and train nothing")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--timed-steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("RESULTS_DIR", REPO / "benchmarks/results")))
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/nemotron_gpu_slice"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, applied last")
    args = parser.parse_args()
    if args.device == "cuda" and not args.estimate_only and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the rehearsal)")
    if args.device == "cpu" and not args.estimate_only:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU runtime, as on a machine without a GPU
    tiny = args.device == "cpu" and not args.estimate_only
    overrides = [*SLICE, *(TINY_WIDTH if tiny else []),
                 f"train.max_steps={args.warmup_steps + args.timed_steps}", *args.overrides]
    config = compose(overrides)

    from nemotron_train.planning.report import build_report

    # Before train(): the dry run starts and ends its own process group.
    figures = estimate_figures(build_report(config))
    options = ["--estimate-only"] if args.estimate_only else [f"--device {args.device}"]
    result = dict(command=" ".join(["python benchmarks/gpu_slice.py", *options, *args.overrides]),
                  overrides=overrides, estimate=figures)
    if args.estimate_only:
        result["machine"] = machine_description(torch.device("cpu"))
        name = "gpu_slice_estimate.json"
    else:
        device = torch.device(args.device)
        result.update(measure(config, args, figures, device))
        name = "gpu_slice.json" if device.type == "cuda" else "cpu_slice_rehearsal.json"
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {out}")


def summary(result: dict) -> str:
    """A short table of the figures (the end of the run's output)."""
    estimate = result["estimate"]
    split = ", ".join(f"{key} {value / 1e9:.1f}" for key, value in estimate["estimate_split"].items())
    lines = [f"estimate: {estimate['params']['on_this_gpu'] / 1e9:.2f}B parameters, "
             f"{estimate['estimate_without_reserve_bytes'] / 1e9:.2f} GB without its allowance "
             f"({split} GB); torch's foreach Adam would add {estimate['foreach_adam_temporary_bytes'] / 1e9:.2f} GB "
             f"inside its step; {estimate['flops_per_token'] / 1e9:.2f} GFLOP per token"]
    if "memory" not in result:
        return "\n".join(lines)
    memory = result["memory"]
    lines.append(f"slice on {result['machine'].get('gpu', 'cpu')}: {result['tokens_per_s']:,.0f} tokens/s, "
                 f"{result['step_seconds']:.2f} s/step, {result['model_tflops']:.1f} model TFLOP/s")
    if result["mfu_vs_datasheet_bf16_dense"] is not None:
        lines.append(f"MFU {result['mfu_vs_datasheet_bf16_dense']:.1%} of the 989 TFLOP/s datasheet peak, "
                     f"{result['mfu_vs_measured_matmul']:.1%} of the measured "
                     f"{result['measured_bf16_matmul_tflops']:.0f} TFLOP/s matmul")
        lines.append(f"peak allocated {memory['peak_allocated_bytes'] / 1e9:.2f} GB (ratio to the estimate "
                     f"{memory['allocated_over_estimate']:.3f}, within 10%: {memory['within_10_percent']}); "
                     f"reserved {memory['peak_reserved_bytes'] / 1e9:.2f} GB vs the estimate with its "
                     f"allowance {estimate['estimate_peak_bytes'] / 1e9:.2f} GB")
    if memory["peak_outside_adam_step_bytes"]:
        lines.append(f"  peak between optimizer steps {memory['peak_outside_adam_step_bytes'] / 1e9:.2f} GB "
                     f"(ratio {memory['outside_adam_step_over_estimate']:.3f}); inside the Adam step "
                     f"{memory['peak_inside_adam_step_bytes'] / 1e9:.2f} GB")
    for layer_type, row in memory["activation_bytes_per_layer"].items():
        measured = "-" if row["measured"] is None else f"{row['measured'] / 1e6:.1f} MB"
        lines.append(f"  {layer_type:<10} activations per layer: measured {measured}, "
                     f"estimate {row['estimate'] / 1e6:.1f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
