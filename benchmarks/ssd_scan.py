"""The Mamba-2 SSD scan: our ``ssd_chunked_scan`` against mamba's ``ssd_minimal_discrete``.

``ssd_minimal_discrete`` (state-spaces/mamba, ``mamba_ssm/modules/ssd_minimal.py``, the
paper's Listing 1) is the pure-PyTorch reference; its source tree is fetched at run
time and never committed (``--mamba-src``; see benchmarks/reference_sources.py). Both
get the same float32 inputs for one row of packed-free tokens (no document
boundaries, as in pretraining): x (batch, length, heads, head dim), dt, A, B and C
(batch, length, groups, state). The reference takes ``x · dt``, ``A · dt`` and per-head
B and C, so its timed call includes those products and expands B and C to the heads
(a view); with one group the heads share B and C, with as many groups as heads
they do not. Forward, and forward plus backward (gradients for x, dt, A, B, C), run
interleaved round by round after a warm-up; the table gives the minimum and median
and the speed ratio reference / ours. Each case also checks that the outputs, final
states and gradients agree (largest absolute difference over the largest magnitude).

    git clone --depth 1 https://github.com/state-spaces/mamba .cache/mamba
    PYTHONPATH=. .venv/bin/python benchmarks/ssd_scan.py --mamba-src .cache/mamba

Writes benchmarks/results/ssd_scan_cpu.json (``--result``) and prints a Markdown table.
"""

import argparse
import os
from pathlib import Path

import torch

from benchmarks.reference_sources import MAMBA_REFERENCE, load_mamba_ssd_minimal, source_version
from benchmarks.side_by_side import describe, interleaved_seconds, machine_record, write_result
from nemotron_train.runtime.ssd_scan import ssd_chunked_scan
CASES = [  # (chunk size, groups)
    (64, 1), (128, 1), (128, 8),
]


def inputs(batch, length, heads, head_dim, groups, state, seed=0):
    """Float32 scan inputs with Mamba-2's parameterisation (dt from softplus, A < 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=g) - 3)
    A = -torch.exp(torch.rand(heads, generator=g))
    B = torch.randn(batch, length, groups, state, generator=g)
    C = torch.randn(batch, length, groups, state, generator=g)
    return dict(x=x, dt=dt, A=A, B=B, C=C)


def ours(chunk):
    def scan(x, dt, A, B, C):
        return ssd_chunked_scan(x, dt, A, B, C, chunk)
    return scan


def reference(module, chunk):
    def scan(x, dt, A, B, C):
        heads = x.shape[2]
        per_head = [t.repeat_interleave(heads // t.shape[2], dim=2) if t.shape[2] != heads
                    else t for t in (B, C)]
        return module.ssd_minimal_discrete(x * dt[..., None], A * dt, *per_head, chunk)
    return scan


def forward_backward(scan, tensors, grad):
    leaves = {k: v.detach().requires_grad_() for k, v in tensors.items()}
    y, final_state = scan(**leaves)
    torch.autograd.backward([y, final_state], [grad, torch.zeros_like(final_state)])
    return y.detach(), final_state.detach(), {k: v.grad for k, v in leaves.items()}


def relative_difference(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def measure(module, chunk, groups, shape, rounds):
    tensors = inputs(**shape, groups=groups)
    scans = {"ours": ours(chunk), "reference": reference(module, chunk)}
    grad = torch.randn_like(tensors["x"])
    with torch.no_grad():
        outputs = {name: scan(**tensors) for name, scan in scans.items()}
    gradients = {name: forward_backward(scan, tensors, grad)[2] for name, scan in scans.items()}
    agreement = dict(
        y=relative_difference(outputs["ours"][0], outputs["reference"][0]),
        final_state=relative_difference(outputs["ours"][1], outputs["reference"][1]),
        gradients={k: relative_difference(gradients["ours"][k], gradients["reference"][k])
                   for k in tensors},
    )
    runs = {}
    for name, scan in scans.items():
        runs[(name, "forward")] = lambda scan=scan: _no_grad(scan, tensors)
        runs[(name, "forward_backward")] = lambda scan=scan: forward_backward(scan, tensors, grad)
    row = dict(chunk_size=chunk, groups=groups, agreement=agreement, seconds={}, speedup={})
    for (name, mode), timing in interleaved_seconds(runs, rounds).items():
        row["seconds"].setdefault(mode, {})[name] = timing
    for mode, by_name in row["seconds"].items():
        row["speedup"][mode] = {stat: by_name["reference"][stat] / by_name["ours"][stat]
                                for stat in ("min", "median")}
    return row


def _no_grad(scan, tensors):
    with torch.no_grad():
        return scan(**tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mamba-src", type=Path, required=True,
                        help="root of a state-spaces/mamba source tree")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", default="ssd_scan_cpu",
                        help="name of the JSON written under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load_mamba_ssd_minimal(args.mamba_src)
    shape = dict(batch=1, length=args.length, heads=8, head_dim=64, state=128)

    load_before = os.getloadavg()
    rows = [measure(module, chunk, groups, shape, args.rounds) for chunk, groups in CASES]
    report = dict(
        machine_record(load_before),
        shape=shape, dtype="float32", rounds=args.rounds,
        reference=dict(file=str(MAMBA_REFERENCE), commit=source_version(args.mamba_src)),
        rows=rows,
    )
    out = write_result(args.result, report)
    print(f"{describe(report)}; b1 x L{args.length}, 8 heads x 64, state 128, float32, "
          f"{args.rounds} interleaved rounds")
    print("| chunk | groups | fwd ms ours / ref (min) | speed-up fwd (min / median) "
          "| fwd+bwd ms ours / ref (min) | speed-up fwd+bwd (min / median) | largest difference |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        s, up, agree = row["seconds"], row["speedup"], row["agreement"]
        worst = max(agree["y"], agree["final_state"], *agree["gradients"].values())
        print(f"| {row['chunk_size']} | {row['groups']} "
              f"| {s['forward']['ours']['min'] * 1e3:.0f} / {s['forward']['reference']['min'] * 1e3:.0f} "
              f"| {up['forward']['min']:.2f}x / {up['forward']['median']:.2f}x "
              f"| {s['forward_backward']['ours']['min'] * 1e3:.0f} / "
              f"{s['forward_backward']['reference']['min'] * 1e3:.0f} "
              f"| {up['forward_backward']['min']:.2f}x / {up['forward_backward']['median']:.2f}x "
              f"| {worst:.1e} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
