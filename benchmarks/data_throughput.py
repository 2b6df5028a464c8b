"""Data pipeline throughput: preparation tokens/s with 1 and 2 workers, loader samples/s.

    .venv/bin/python -m benchmarks.data_throughput            # from the repository root

1. Builds a corpus of at least --corpus-mb megabytes of JSON Lines, deterministically and
   offline: the stdlib corpus's files (one document each), repeated in a new seeded order
   per copy until the file is large enough.
2. Trains (or reuses) the builtin tokenizer, then runs `python -m data_prep` on the corpus
   once per --workers value, one after the other, each in a fresh process as a user would,
   for --repeats rounds; the table shows each worker count's fastest round (other
   processes on the machine only ever slow a round down), the JSON file every round.
   Tokens/s and documents/s are over the preparation's own time (the summary it prints);
   wall time adds interpreter start-up and imports; cores is the CPU time of the process
   and its workers over the wall time. The outputs must be byte-identical.
3. Reads the prepared dataset through the trainer's loader (build_train_data, one
   data-parallel rank) at each --seq-lengths value with micro batch --micro-batch-size:
   the time to build Megatron-Core's indices, then samples/s over --loader-batches micro
   batches after a few warm-up ones.

Prints a table and writes the numbers, with the machine's state (CPUs, load average before
and after each measurement), to --output. Run it on an idle machine: with the kernel's
sched_autogroup, CPU time is shared between sessions first, so one busy neighbour leaves
this benchmark about one core whatever --workers says (the cores column shows it).
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import tokenizers
import torch

from nemotron_train.data.config import DataConfig, TokenizerConfig
from nemotron_train.data.curriculum import build_train_data
from nemotron_train.data.stdlib_corpus import stdlib_source_files
from nemotron_train.data.tokenizer import Tokenizer, build_tokenizer

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
WARM_UP_BATCHES = 5


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus-mb", type=float, default=100.0, help="corpus size, 10^6 bytes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=2, help="preparation rounds, worker counts alternating"
    )
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[4096, 256])
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--loader-batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--work-dir", help="where the corpus and datasets go (default: a temporary directory)"
    )
    parser.add_argument(
        "--cache-dir", help="tokenizer cache (default: $NEMOTRON_TRAIN_CACHE or ~/.cache)"
    )
    parser.add_argument(
        "--output", default=str(REPOSITORY_ROOT / "benchmarks/results/data_throughput.json")
    )
    return parser.parse_args()


def machine_state() -> dict:
    """CPUs, load average and the versions that matter, at this moment."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        # With autogroup, CFS shares the CPUs between sessions before processes: on a busy
        # machine this benchmark's processes together get about one session's share.
        "sched_autogroup": autogroup.read_text().strip() == "1" if autogroup.exists() else None,
        "cpu": model,
        "load_average_1_5_15_min": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
    }


def build_corpus(path: Path, target_bytes: int, seed: int) -> dict:
    """Write stdlib documents as JSON Lines, reshuffled per copy, until `target_bytes`."""
    texts = [file.read_text(encoding="utf-8", errors="replace") for file in stdlib_source_files()]
    lines = [json.dumps({"text": text}) + "\n" for text in texts if text.strip()]
    written = documents = copies = 0
    with open(path, "w") as corpus:
        while written < target_bytes:
            order = list(range(len(lines)))
            random.Random(seed + copies).shuffle(order)
            for index in order:
                corpus.write(lines[index])
                written += len(lines[index].encode())
                documents += 1
            copies += 1
    return {"bytes": path.stat().st_size, "documents": documents, "stdlib_copies": copies}


def run_preparation(
    corpus: Path, output_prefix: Path, workers: int, cache_dir: str | None
) -> dict:
    """One `python -m data_prep` process; its throughput over its own reported time."""
    command = [sys.executable, "-m", "data_prep", "--input", str(corpus)]
    command += ["--output-prefix", str(output_prefix), "--workers", str(workers)]
    if cache_dir:
        command += ["--cache-dir", cache_dir]
    load_before = os.getloadavg()[0]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(
        command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, check=False
    )
    wall_seconds = time.perf_counter() - start
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The process and its pool workers: how many cores the run actually got.
    cpu_seconds = sum(
        getattr(children_after, field) - getattr(children_before, field)
        for field in ("ru_utime", "ru_stime")
    )
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr}")
    summary = re.search(
        r"wrote ([\d,]+) documents, ([\d,]+) tokens .* in ([\d.]+) s", finished.stderr
    )
    documents, tokens = (int(summary.group(index).replace(",", "")) for index in (1, 2))
    seconds = float(summary.group(3))
    return {
        "workers": workers,
        "command": " ".join(command),
        "documents": documents,
        "tokens": tokens,
        "preparation_seconds": seconds,
        "wall_seconds": round(wall_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "cores_used": round(cpu_seconds / wall_seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "documents_per_s": round(documents / seconds, 1),
        "input_mb_per_s": round(corpus.stat().st_size / 1e6 / seconds, 2),
        "load_average_1_min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def measure_loader(
    path_prefix: str,
    seq_length: int,
    arguments: argparse.Namespace,
    tokenizer: Tokenizer,
    cache_dir: str,
) -> dict:
    """The trainer's loader over the prepared dataset: index build time, then samples/s."""
    config = DataConfig(
        corpus="prefixes", blend=[[1.0, path_prefix]], split="99,1,0", cache_dir=cache_dir
    )
    micro_batches = WARM_UP_BATCHES + arguments.loader_batches
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    train_data = build_train_data(
        config,
        tokenizer,
        seq_length=seq_length,
        seed=arguments.seed,
        max_steps=micro_batches,
        global_batch_size=arguments.micro_batch_size,
        micro_batch_size=arguments.micro_batch_size,
        valid_samples=arguments.micro_batch_size,
        consumed_samples=0,
        data_parallel_rank=0,
        data_parallel_size=1,
    )
    build_seconds = time.perf_counter() - start
    for _ in range(WARM_UP_BATCHES):
        next(train_data.iterator)
    start = time.perf_counter()
    for _ in range(arguments.loader_batches):
        batch = next(train_data.iterator)
    seconds = time.perf_counter() - start
    assert batch["tokens"].shape == (arguments.micro_batch_size, seq_length)
    samples = arguments.loader_batches * arguments.micro_batch_size
    return {
        "seq_length": seq_length,
        "micro_batch_size": arguments.micro_batch_size,
        "index_build_seconds": round(build_seconds, 2),
        "micro_batches_timed": arguments.loader_batches,
        "samples_per_s": round(samples / seconds, 1),
        "tokens_per_s": round(samples * seq_length / seconds),
        "load_average_1_min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


@contextlib.contextmanager
def benchmark_work_dir(work_dir: str | None, prefix: str) -> Iterator[Path]:
    """`work_dir` (kept afterwards), or a temporary directory removed at the end."""
    path = Path(work_dir or tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not work_dir:
            shutil.rmtree(path, ignore_errors=True)


def write_results(results: dict, output: str) -> Path:
    """Write `results` as indented JSON to `output` (directories made); return its path."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def print_table(results: dict) -> None:
    corpus, before, after = results["corpus"], results["machine_before"], results["machine_after"]
    print(
        f"\nmachine: {before['nproc']} CPUs ({before['cpu']}), load average (1, 5, 15 min) "
        f"before {before['load_average_1_5_15_min']}, after {after['load_average_1_5_15_min']}"
    )
    print(
        f"corpus: {corpus['bytes'] / 1e6:.1f} MB JSONL, {corpus['documents']:,} documents "
        f"(stdlib x {corpus['stdlib_copies']}), builtin BPE 4096\n"
    )
    print("| data_prep (best) | tokens/s | docs/s | MB/s | prep s | wall s | cores | load 1m |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for run in results["preparation"]:
        print(
            f"| --workers {run['workers']} | {run['tokens_per_s']:,} | {run['documents_per_s']:,} "
            f"| {run['input_mb_per_s']} | {run['preparation_seconds']} | {run['wall_seconds']} "
            f"| {run['cores_used']} | {run['load_average_1_min_before_after']} |"
        )
    print("\n| loader (1 rank) | samples/s | tokens/s | index build s | load 1m before/after |")
    print("|---|---:|---:|---:|---|")
    for run in results["loader"]:
        print(
            f"| seq {run['seq_length']}, mbs {run['micro_batch_size']} | {run['samples_per_s']:,} "
            f"| {run['tokens_per_s']:,} | {run['index_build_seconds']} "
            f"| {run['load_average_1_min_before_after']} |"
        )


def main() -> None:
    arguments = parse_arguments()
    with benchmark_work_dir(arguments.work_dir, "data_throughput-") as work_dir:
        tokenizer = build_tokenizer(TokenizerConfig(), arguments.cache_dir)  # trained once
        results = {"machine_before": machine_state()}
        corpus_path = work_dir / "corpus.jsonl"
        target_bytes = int(arguments.corpus_mb * 1e6)
        results["corpus"] = build_corpus(corpus_path, target_bytes, arguments.seed)
        prefixes = [
            work_dir / f"workers{workers}" / "corpus_text_document" for workers in arguments.workers
        ]
        results["preparation_rounds"] = [
            run_preparation(corpus_path, prefix, workers, arguments.cache_dir)
            for _ in range(arguments.repeats)
            for prefix, workers in zip(prefixes, arguments.workers, strict=True)
        ]
        results["preparation"] = [
            min(
                (run for run in results["preparation_rounds"] if run["workers"] == workers),
                key=lambda run: run["preparation_seconds"],
            )
            for workers in arguments.workers
        ]
        results["outputs_identical"] = all(
            Path(f"{prefix}{suffix}").read_bytes() == Path(f"{prefixes[0]}{suffix}").read_bytes()
            for prefix in prefixes[1:]
            for suffix in (".bin", ".idx")
        )
        if not results["outputs_identical"]:
            raise RuntimeError("the worker counts wrote different datasets")
        index_cache = str(work_dir / "index_cache")
        results["loader"] = [
            measure_loader(str(prefixes[0]), seq_length, arguments, tokenizer, index_cache)
            for seq_length in arguments.seq_lengths
        ]
        results["machine_after"] = machine_state()
    print_table(results)
    print(f"\nwrote {write_results(results, arguments.output)}")


if __name__ == "__main__":
    main()
