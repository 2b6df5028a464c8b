"""Throughput and memory of import-hf and export-hf on a synthetic checkpoint of billions of weights.

The model is Nano's (recipes/model/nano_30b.yaml: width 2688, 128 experts of 1856, shared
expert 3712, vocabulary 131072) cut to `--pattern` (default `MEM*EM`: 3 Mamba, 2 MoE and
1 attention layer, 3.4B parameters, 6.8 GB in bf16), so every layer is one of Nano's and the
figures scale to the full model by its bytes and its largest layer. Random bf16 weights are
written in the released layout with our streaming writer, then

    python -m nemotron_train.convert import-hf --hf-dir SYNTH --output OURS
    python -m nemotron_train.convert export-hf --checkpoint OURS --output BACK --dtype bf16

run as separate processes, each timed (wall clock, and the conversion's own time without
interpreter start-up) with its peak resident memory (which counts the file pages it mapped
and the kernel may drop) and its peak anonymous memory (RssAnon from /proc, sampled every 50 ms:
what the process itself allocated). Inputs are dropped from the page cache before each step
(posix_fadvise on our own files), so reads come from disk. `--verify` checks BACK equals SYNTH
bit for bit.

    PYTHONPATH=. .venv/bin/python benchmarks/convert_throughput.py --workdir /tmp/convert_bench --verify

Writes benchmarks/results/convert_throughput.json.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
NANO = dict(hidden_size=2688, num_attention_heads=32, num_query_groups=2, head_dim=128, mamba_num_heads=64,
            mamba_head_dim=64, mamba_state_dim=128, mamba_num_groups=8, mamba_chunk_size=128,
            num_experts=128, moe_router_topk=6, moe_ffn_hidden_size=1856,
            moe_shared_expert_intermediate_size=3712, moe_router_topk_scaling_factor=2.5, vocab_size=131072)
# Bytes in bf16 (from the dry run's parameter counts: README, recipes table).
FULL_MODELS = {"nano_30b": 31.58e9 * 2, "super_120b": 123.61e9 * 2}


def machine() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9}


def write_synthetic(directory: Path, pattern: str, seed: int) -> dict:
    """Random bf16 weights of the cut Nano model in the released layout; returns its sizes."""
    from nemotron_train.convert.hf_config import hf_from_model
    from nemotron_train.convert.safetensors_io import PlannedTensor, SafetensorsWriter
    from nemotron_train.convert.tensor_mapping import conversion_units
    from nemotron_train.model.config import HybridModelConfig

    model = HybridModelConfig(pattern=pattern, num_layers=len(pattern), seq_length=8192, **NANO)
    shapes = hf_shapes(model)
    plan = [PlannedTensor(name, torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16,
                          shape) for name, shape in shapes.items()]
    directory.mkdir(parents=True)
    writer = SafetensorsWriter(directory, plan, max_shard_bytes=5 * 10**9)
    generator = torch.Generator().manual_seed(seed)
    for planned in plan:
        writer.write(planned.name, random_weights(planned, generator))
    writer.finish()
    (directory / "config.json").write_text(json.dumps(hf_from_model(model, NANO["vocab_size"]), indent=2))
    units = conversion_units(model)
    unit_bytes = [sum(_nbytes(shapes[n]) for m in u.tensors for n in m.hf) for u in units]
    return {"pattern": pattern, "parameters": sum(_numel(s) for s in shapes.values()),
            "bytes": sum(p.nbytes for p in plan), "tensors": len(plan), "largest_unit_bytes": max(unit_bytes)}


def random_weights(planned, generator) -> torch.Tensor:
    """Random values without a float pass over billions of weights: bf16 bit patterns of
    magnitude 2^-7 .. 2 (exponent bits 0x3C00..0x3F7F); the few fp32 tensors from randn."""
    if planned.dtype == torch.float32:
        return torch.randn(planned.shape, generator=generator)
    bits = torch.randint(0x3C00, 0x3F80, planned.shape, dtype=torch.int16, generator=generator)
    return bits.view(torch.bfloat16)


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


def _nbytes(shape) -> int:
    return 2 * _numel(shape)


def hf_shapes(model) -> dict:
    """HF tensor name -> shape of `model`, from the module shapes Megatron-Core builds (meta device)."""
    from nemotron_train.convert.checkpoint_tensors import build_meta_model, conversion_session, parameter_shapes
    from nemotron_train.convert.tensor_mapping import conversion_units, to_hf

    with conversion_session():
        ours = parameter_shapes(build_meta_model(model, model.vocab_size))
    return {name: tuple(meta.shape) for unit in conversion_units(model) for mapping in unit.tensors
            for name, meta in zip(mapping.hf, to_hf(mapping, torch.empty(ours[mapping.ours], device="meta"), model))}


def drop_from_page_cache(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def run_measured(arguments: list[str]) -> dict:
    """Run one convert command; wall time, its own reported time, peak RSS and peak RssAnon."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "nemotron_train.convert", *arguments], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"RssAnon": 0, "VmHWM": 0}
    finished = threading.Event()

    def sample():
        status = Path(f"/proc/{process.pid}/status")
        while not finished.is_set():
            try:
                text = status.read_text()
            except OSError:
                break
            for field in peaks:
                match = re.search(field + r":\s+(\d+) kB", text)
                if match:
                    peaks[field] = max(peaks[field], int(match.group(1)) * 1024)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = process.stdout.read()
    process.wait()
    finished.set()
    sampler.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed:\n{output[-3000:]}")
    reported = [float(s) for s in re.findall(r" in ([0-9.]+) s", output)]
    return {"command": "python -m nemotron_train.convert " + " ".join(arguments), "wall_s": wall,
            "conversion_s": reported[-1] if reported else None, "peak_rss_bytes": peaks["VmHWM"],
            "peak_anon_bytes": peaks["RssAnon"], "log_tail": output.strip().splitlines()[-3:]}


def verify(source: Path, back: Path) -> bool:
    from nemotron_train.convert.safetensors_io import SafetensorsReader

    a, b = SafetensorsReader(source), SafetensorsReader(back)
    same = set(a.infos) == set(b.infos) and all(
        torch.equal(a.tensor(n).view(-1).view(torch.uint8), b.tensor(n).view(-1).view(torch.uint8))
        and a.infos[n].dtype == b.infos[n].dtype for n in a.infos)
    a.close(), b.close()
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="scratch space (about 3x the model)")
    parser.add_argument("--pattern", default="MEM*EM")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "convert_throughput.json")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    synth, ours, back = args.workdir / "synthetic_hf", args.workdir / "ours", args.workdir / "back"
    result = {"machine_before": machine()}
    started = time.perf_counter()
    result["checkpoint"] = write_synthetic(synth, args.pattern, seed=0)
    result["checkpoint"]["generate_s"] = time.perf_counter() - started
    drop_from_page_cache(synth)
    result["import"] = run_measured(["import-hf", "--hf-dir", str(synth), "--output", str(ours)])
    drop_from_page_cache(ours)
    result["export"] = run_measured(["export-hf", "--checkpoint", str(ours), "--output", str(back), "--dtype", "bf16"])
    if args.verify:
        result["export_equals_source"] = verify(synth, back)
    size = result["checkpoint"]["bytes"]
    for step in ("import", "export"):
        measured = result[step]
        measured["gb_per_s_wall"] = size / 1e9 / measured["wall_s"]
        if measured["conversion_s"]:
            measured["gb_per_s_conversion"] = size / 1e9 / measured["conversion_s"]
    result["extrapolated_minutes"] = {
        name: {step: full / 1e9 / result[step].get("gb_per_s_conversion", result[step]["gb_per_s_wall"]) / 60
               for step in ("import", "export")} for name, full in FULL_MODELS.items()}
    result["machine_after"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine_before", "machine_after")}, indent=2))
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
