"""Emulation overhead: the quantized linears' forward + backward against a plain linear.

For each shape (tokens, in, out) the plain linear (torch's matmul, in BF16 and in float32)
and the emulated NVFP4 and MXFP8 linears (nemotron_train.precision.quantized_linear, full
recipe) run forward + backward on the same BF16 operands, interleaved round by round so
that the machine's load hits them alike; the table reports median times and the ratio of
each quantized linear to the plain ones.

    .venv/bin/python benchmarks/nvfp4_emulation.py [--device cuda] [--rounds 7] [--shapes nano]

`--shapes nano` times Nemotron 3 Nano's linears at one 4096-token micro-batch instead of the
small default shapes. Writes benchmarks/results/nvfp4_emulation_<device>.json (or `--out`)
and prints a Markdown table.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nemotron_train.precision.quantized_linear import mxfp8_linear, nvfp4_linear

SHAPES = ((1024, 256, 256), (1024, 256, 640), (2048, 1024, 1024))
# Nano (hidden 2688) at 4096 tokens: Mamba in_proj (2 x 4096 + 2 x 8 x 128 + 64 outputs) and
# out_proj, attention QKV (32 + 2 x 2 heads of 128) and output projection, the shared expert,
# and one routed expert at its average load (4096 x 6 / 128 = 192 tokens).
NANO_SHAPES = ((4096, 2688, 10304), (4096, 4096, 2688), (4096, 2688, 4608), (4096, 4096, 2688),
               (4096, 2688, 3712), (4096, 3712, 2688), (192, 2688, 1856), (192, 1856, 2688))
NANO_NAMES = ("mamba in_proj", "mamba out_proj", "attention linear_qkv", "attention linear_proj",
              "shared expert fc1", "shared expert fc2", "routed expert fc1", "routed expert fc2")
RESULTS = Path(__file__).parent / "results"


def linears(device):
    def plain(dtype):
        return lambda x, w: F.linear(x.to(dtype), w.to(dtype))

    return {"bf16": plain(torch.bfloat16), "fp32": plain(torch.float32),
            "nvfp4": nvfp4_linear, "mxfp8": mxfp8_linear}


def time_fwd_bwd(fn, x, w, grad, device) -> float:
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x, w).backward(grad)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(shape, device, rounds):
    tokens, d_in, d_out = shape
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(tokens, d_in, device=device, generator=generator).to(torch.bfloat16)
    w = (torch.randn(d_out, d_in, device=device, generator=generator) * 0.02).to(torch.bfloat16)
    grad = torch.randn(tokens, d_out, device=device, generator=generator).to(torch.bfloat16)
    fns = linears(device)
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        time_fwd_bwd(fn, x, w, grad.to(torch.float32 if name == "fp32" else torch.bfloat16), device)
    for _ in range(rounds):
        for name, fn in fns.items():
            g = grad.to(torch.float32) if name == "fp32" else grad
            times[name].append(time_fwd_bwd(fn, x, w, g, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    return dict(
        tokens=tokens, d_in=d_in, d_out=d_out, seconds=median,
        nvfp4_over_bf16=median["nvfp4"] / median["bf16"], nvfp4_over_fp32=median["nvfp4"] / median["fp32"],
        mxfp8_over_bf16=median["mxfp8"] / median["bf16"], mxfp8_over_fp32=median["mxfp8"] / median["fp32"],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", choices=("small", "nano"), default="small")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()
    shapes, names = (NANO_SHAPES, NANO_NAMES) if args.shapes == "nano" else (SHAPES, (None,) * len(SHAPES))
    rows = [dict(measure(shape, device, args.rounds), linear=name) for shape, name in zip(shapes, names)]
    report = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        cpu_count=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
        load_average_before=load_before, load_average_after=os.getloadavg(), rounds=args.rounds,
        shapes=args.shapes, rows=rows,
    )
    out = args.out or RESULTS / f"nvfp4_emulation_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"device {report['device']} ({device.type}), load average before/after "
          f"{load_before[0]:.1f}/{report['load_average_after'][0]:.1f}, median of {args.rounds} rounds")
    print("| linear | tokens x in x out | plain bf16 ms | plain fp32 ms | NVFP4 ms | MXFP8 ms "
          "| NVFP4 / bf16 | NVFP4 / fp32 | MXFP8 / bf16 | MXFP8 / fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        print(f"| {row['linear'] or ''} | {row['tokens']} x {row['d_in']} x {row['d_out']} | {s['bf16'] * 1e3:.2f} "
              f"| {s['fp32'] * 1e3:.2f} | {s['nvfp4'] * 1e3:.2f} | {s['mxfp8'] * 1e3:.2f} "
              f"| {row['nvfp4_over_bf16']:.1f} | {row['nvfp4_over_fp32']:.1f} "
              f"| {row['mxfp8_over_bf16']:.1f} | {row['mxfp8_over_fp32']:.1f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
