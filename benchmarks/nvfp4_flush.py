"""Fraction of values the quantizers flush to zero, per module type and GEMM operand.

Builds the tiny model (local spec, BF16 parameters) under the NVFP4 policy, attaches one
FlushCounter per module type, and runs forward + backward on a batch; then again with
Mamba's out_proj in NVFP4 instead of MXFP8, to show what each format does there.

    .venv/bin/python benchmarks/nvfp4_flush.py [--batches 2]

Writes benchmarks/results/nvfp4_flush.json and prints a Markdown table.
"""

import argparse
import dataclasses
import json
import re
from pathlib import Path

import torch

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.precision.execution import apply_precision_policy
from nemotron_train.precision.parallel_linear import QuantizedGemmMixin
from nemotron_train.precision.policy import MAMBA_OUT_PROJ_MXFP8, nvfp4_policy
from nemotron_train.precision.quantized_linear import FlushCounter

RESULTS = Path(__file__).parent / "results"


def module_type(name: str) -> str:
    return re.sub(r"^decoder\.layers\.\d+\.|local_experts\.\d+\.", "", name)


def flush_fractions(policy, batches, vocab, seed=0):
    import megatron.core.tensor_parallel as tp

    config = HybridModelConfig(pattern="MEM*ME", num_layers=6, spec="local")
    torch.manual_seed(seed)
    tp.model_parallel_cuda_manual_seed(seed)
    model = config.build(config.transformer_config(params_dtype=torch.bfloat16, bf16=True), vocab)
    formats = apply_precision_policy(model, policy)
    counters = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedGemmMixin) and formats[name] in ("nvfp4", "mxfp8"):
            key = (module_type(name), formats[name])
            module.flush_counter = counters.setdefault(key, FlushCounter())
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        tokens = torch.randint(0, vocab, (4, config.seq_length), generator=generator)
        positions = torch.arange(config.seq_length).expand(4, -1)
        model(tokens, positions, None, labels=tokens).float().mean().backward()
    return {f"{kind} ({fmt})": counter.fractions() for (kind, fmt), counter in counters.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    from nemotron_train.runtime.distributed import ParallelConfig, destroy_distributed, initialize_distributed
    from nemotron_train.runtime.setup import prepare_runtime

    prepare_runtime()
    initialize_distributed(ParallelConfig())
    try:
        policy = nvfp4_policy(6)
        all_nvfp4 = dataclasses.replace(policy, rules=tuple(
            dataclasses.replace(rule, format="nvfp4") if rule == MAMBA_OUT_PROJ_MXFP8 else rule
            for rule in policy.rules))
        results = flush_fractions(policy, args.batches, 4096)
        out_proj_nvfp4 = flush_fractions(all_nvfp4, args.batches, 4096)
        results["mixer.out_proj (nvfp4)"] = out_proj_nvfp4["mixer.out_proj (nvfp4)"]
    finally:
        destroy_distributed()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nvfp4_flush.json"
    out.write_text(json.dumps(dict(batches=args.batches, model="tiny at initialisation, random tokens",
                                   flushed_fraction=results), indent=2) + "\n")
    operands = ("x", "weight", "grad_output", "weight_t", "grad_output_t", "x_t")
    print("| module (format) | " + " | ".join(operands) + " |")
    print("|---|" + "---|" * len(operands))
    for kind, fractions in sorted(results.items()):
        cells = [f"{100 * fractions[o]:.2f}%" if o in fractions else "" for o in operands]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
