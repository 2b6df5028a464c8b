"""NVFP4 quantizer speed and bits: ours against TransformerEngine's pure-PyTorch reference.

A linear layer needs each operand twice, quantized along each of its dimensions (the
rowwise copy for one GEMM, the columnwise copy for another). For each configuration
the same BF16 matrix is quantized into both copies by

- ours: ``nvfp4.quantize(x)`` and ``nvfp4.quantize(x.T)`` (the columnwise copy is
  quantized from the transposed view, where it lies in memory);
- TransformerEngine's ``NVFP4QuantizerRef(rowwise=True, columnwise=True)`` (the
  reference its tests check the kernel against), loaded from a source tree that
  is fetched at run time and never committed (``--te-src``; see
  benchmarks/reference_sources.py).

Configurations: 1x16 blocks; 16x16 blocks (both copies quantized, and ours once:
the 2D-block copies are the same numbers transposed, which is how the linear layer
uses them); 1x16 rowwise with the columnwise copy random-Hadamard-rotated (the
recipe's activation operand). Runs are interleaved round by round, after a warm-up,
so the machine's load hits both alike; the table gives the minimum and median of
the rounds and their ratio. The bits are compared on the same tensor: packed E2M1
codes and E4M3 block scales of each copy.

    git clone --depth 1 https://github.com/NVIDIA/TransformerEngine .cache/TransformerEngine
    PYTHONPATH=. .venv/bin/python benchmarks/nvfp4_quantize.py --te-src .cache/TransformerEngine

Writes benchmarks/results/nvfp4_quantize_cpu.json (``--result``) and prints a Markdown table.
"""

import argparse
import os
from pathlib import Path

import torch

from benchmarks.reference_sources import TE_REFERENCE, load_te_nvfp4_reference, source_version
from benchmarks.side_by_side import describe, interleaved_seconds, machine_record, write_result
from nemotron_train.precision import nvfp4
CONFIGS = {  # name: (tile, RHT on the columnwise copy, columnwise copy quantized by ours)
    "1x16": ((1, 16), False, True),
    "16x16": ((16, 16), False, True),
    "16x16, ours once (transposed view reused)": ((16, 16), False, False),
    "1x16, RHT columnwise": ((1, 16), True, True),
}


def ours(x, tile, rht, quantize_columnwise):
    """Our two copies: (rowwise NVFP4Tensor, columnwise NVFP4Tensor or None)."""
    rowwise = nvfp4.quantize(x, tile=tile)
    columnwise = nvfp4.quantize(x.T, tile=tile, rht=rht) if quantize_columnwise else None
    return rowwise, columnwise


def theirs(te, x, tile, rht):
    quantizer = te.NVFP4QuantizerRef(dtype=te.reference_utils.Fp4Formats.E2M1, rowwise=True,
                                     columnwise=True, quant_tile_shape=tile, with_rht=rht)
    return quantizer.quantize(x)


def equal_bits(our_copy, data, scale, tile_rows):
    """(equal codes, codes, equal scales, scales) of one copy against TE's packed data."""
    codes, their_codes = nvfp4.e2m1_codes(our_copy.values), nvfp4.unpack_codes(data)
    # TE stores a 16x16 tile's scale once per row of the tile.
    scales = our_copy.block_scales.repeat_interleave(tile_rows, dim=0).view(torch.uint8)
    return (int((codes == their_codes).sum()), codes.numel(),
            int((scales == scale.view(torch.uint8)).sum()), scales.numel())


def measure(name, x, te, rounds):
    tile, rht, quantize_columnwise = CONFIGS[name]
    runs = {"ours": lambda: ours(x, tile, rht, quantize_columnwise)}
    if te is not None:
        runs["te_reference"] = lambda: theirs(te, x, tile, rht)
    seconds = interleaved_seconds(runs, rounds)
    row = dict(config=name, tile=list(tile), rht_columnwise=rht, seconds=seconds)
    if te is not None:
        row["te_over_ours"] = {stat: row["seconds"]["te_reference"][stat] / row["seconds"]["ours"][stat]
                               for stat in ("min", "median")}
        if quantize_columnwise:
            rowwise, columnwise = ours(x, tile, rht, True)
            reference = theirs(te, x, tile, rht)
            row["bits"] = {
                "rowwise": equal_bits(rowwise, reference.data, reference.scale, tile[0]),
                "columnwise": equal_bits(columnwise, reference.data_t, reference.scale_t, tile[0]),
            }
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--te-src", type=Path, help="root of a TransformerEngine source tree")
    parser.add_argument("--size", type=int, default=4096, help="the matrix is size x size BF16")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", default="nvfp4_quantize_cpu",
                        help="name of the JSON written under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    te = load_te_nvfp4_reference(args.te_src) if args.te_src else None
    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)).bfloat16()

    load_before = os.getloadavg()
    rows = [measure(name, x, te, args.rounds) for name in CONFIGS]
    report = dict(
        machine_record(load_before),
        shape=[args.size, args.size], dtype="bfloat16", rounds=args.rounds,
        te_reference=None if te is None else dict(
            file=str(TE_REFERENCE), commit=source_version(args.te_src)),
        rows=rows,
    )
    out = write_result(args.result, report)
    print(f"{describe(report)}; {args.size} x {args.size} BF16, both copies, "
          f"{args.rounds} interleaved rounds")
    print("| blocks | ours ms (min / median) | TE reference ms (min / median) "
          "| TE / ours (min / median) | equal codes | equal scales |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = row["seconds"]
        cells = [row["config"], f"{s['ours']['min'] * 1e3:.0f} / {s['ours']['median'] * 1e3:.0f}"]
        if te is not None:
            ratio = row["te_over_ours"]
            cells += [f"{s['te_reference']['min'] * 1e3:.0f} / {s['te_reference']['median'] * 1e3:.0f}",
                      f"{ratio['min']:.1f}x / {ratio['median']:.1f}x"]
            bits = row.get("bits")
            if bits:
                codes = sum(b[0] for b in bits.values()), sum(b[1] for b in bits.values())
                scales = sum(b[2] for b in bits.values()), sum(b[3] for b in bits.values())
                cells += [f"{codes[0]:,} / {codes[1]:,}", f"{scales[0]:,} / {scales[1]:,}"]
            else:
                cells += ["(as 16x16)", "(as 16x16)"]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
