"""Sharded preparation throughput: tokens/s with 1 and 2 array tasks, the merge, zstd input,
and (optionally) Megatron-LM's tools/preprocess_data.py side by side.

    .venv/bin/python -m benchmarks.data_prep_scaling                     # from the repository root
    .venv/bin/python -m benchmarks.data_prep_scaling --megatron-lm /tmp/megatron-lm

1. Builds --corpus-mb of JSON Lines from the stdlib corpus (benchmarks/data_throughput.py's
   corpus), one plain file, and the same lines as --zstd-files zstd files.
2. Per round (--repeats, the table keeps each case's fastest round, the JSON every round):
   - unsharded: `python -m data_prep --workers 1`, the byte reference;
   - N array tasks for each --tasks N: the N commands a Slurm array runs
     (`--num-shards N --shard-index I --workers 1`) started together, timed from the first
     start to the last exit (interpreter start-up included, as in a real array task);
     tokens/s is all tokens over that wall time; the shards are merged and compared with
     the reference, byte for byte;
   - 1 array task over the zstd files: the cost of decompressing as a stream.
3. Once: the tokenizer alone on the documents in memory (one process), the bound of one
   tokenizing worker; the merge of the largest N's shards (MB/s written, documents/s,
   peak memory of the merging process); and with --megatron-lm DIR (a Megatron-LM
   checkout, e.g. one brought by a fetch; never committed) its tools/preprocess_data.py
   and ours, both with --workers --compare-workers, on the plain file and the same
   tokenizer (the builtin one through transformers' PreTrainedTokenizerFast: needs
   `pip install transformers`), outputs compared byte for byte. Megatron-LM's script runs
   against the pinned megatron-core.
4. Writes every number with the machine's state (CPUs, load average before and after each
   measurement) to --output and prints a table. On a shared machine the kernel's autogroup
   scheduling gives one session about one core however many tasks it starts: the cores
   column shows how many the measurement actually got.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from benchmarks.data_throughput import (
    benchmark_work_dir,
    build_corpus,
    machine_state,
    write_results,
)
from nemotron_train.data.cache import resolve_cache_dir
from nemotron_train.data.config import BUILTIN_EOD_TOKEN, TokenizerConfig
from nemotron_train.data.indexed_files import check_indexed_dataset
from nemotron_train.data.tokenizer import build_tokenizer, ensure_builtin_tokenizer

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
MERGE_PROBE = """
import json, resource, sys, time
from nemotron_train.data.shard_outputs import merge_shards
summary = merge_shards(sys.argv[1])
print(json.dumps({"seconds": summary.seconds, "documents": summary.documents,
                  "bytes_written": summary.bytes_written,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus-mb", type=float, default=100.0, help="corpus size, 10^6 bytes")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2], help="array sizes")
    parser.add_argument("--zstd-files", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--megatron-lm", help="a Megatron-LM checkout: compare its preprocess_data.py")
    parser.add_argument("--compare-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--work-dir", help="corpus and outputs (default: a temporary directory)")
    parser.add_argument("--cache-dir", help="tokenizer cache (default: $NEMOTRON_TRAIN_CACHE or ~/.cache)")
    parser.add_argument(
        "--output", default=str(REPOSITORY_ROOT / "benchmarks/results/data_prep_scaling.json")
    )
    return parser.parse_args()


def timed_processes(commands: list[list[str]]) -> dict:
    """Start `commands` together; wall time to the last exit, CPU time of them all, load."""
    load_before = os.getloadavg()[0]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    outputs = [process.communicate() for process in processes]
    wall_seconds = time.perf_counter() - start
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for command, process, (_, stderr) in zip(commands, processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    cpu_seconds = sum(
        getattr(children_after, field) - getattr(children_before, field)
        for field in ("ru_utime", "ru_stime")
    )
    return {
        "commands": [" ".join(command) for command in commands],
        "wall_seconds": round(wall_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "cores_used": round(cpu_seconds / wall_seconds, 2),
        "load_average_1_min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "stdout": [stdout for stdout, _ in outputs],
    }


def data_prep_command(inputs: list[str], output_prefix: Path, cache_dir: str | None, *extra) -> list[str]:
    command = [sys.executable, "-m", "data_prep", "--input", *inputs]
    command += ["--output-prefix", str(output_prefix), *extra]
    return command + (["--cache-dir", cache_dir] if cache_dir else [])


def shard_tokens(output_prefix: Path, num_shards: int) -> tuple[int, int]:
    """Documents and tokens over the shards' manifests."""
    manifests = [
        json.loads(Path(f"{output_prefix}.shard-{index:05d}-of-{num_shards:05d}.manifest.json").read_text())
        for index in range(num_shards)
    ]
    return sum(m["documents"] for m in manifests), sum(m["tokens"] for m in manifests)


def same_files(first: Path, second: Path) -> bool:
    return all(
        Path(f"{first}{suffix}").read_bytes() == Path(f"{second}{suffix}").read_bytes()
        for suffix in (".bin", ".idx")
    )


def run_array(inputs: list[str], work_dir: Path, name: str, tasks: int, cache_dir: str | None) -> dict:
    """`tasks` array tasks of one worker each, started together; their shards' totals."""
    output_prefix = work_dir / name / "corpus"
    shutil.rmtree(output_prefix.parent, ignore_errors=True)
    prepare = [sys.executable, "-m", "data_prep", "--input", *inputs, "--output-prefix",
               str(output_prefix), "--num-shards", str(tasks), "--plan-only"]
    subprocess.run(prepare + (["--cache-dir", cache_dir] if cache_dir else []), cwd=REPOSITORY_ROOT,
                   check=True, capture_output=True)
    commands = [
        data_prep_command(inputs, output_prefix, cache_dir, "--num-shards", str(tasks),
                          "--shard-index", str(index), "--workers", "1")
        for index in range(tasks)
    ]
    run = timed_processes(commands)
    run.pop("stdout")
    documents, tokens = shard_tokens(output_prefix, tasks)
    return run | {"case": name, "tasks": tasks, "output_prefix": str(output_prefix),
                  "documents": documents, "tokens": tokens,
                  "tokens_per_s": round(tokens / run["wall_seconds"])}


def tokenizer_alone(corpus: Path, cache_dir: str | None) -> dict:
    """The builtin tokenizer's own rate on the corpus's documents, one core, nothing else timed:
    what one tokenizing worker cannot exceed."""
    tokenizer = build_tokenizer(TokenizerConfig(), cache_dir)
    with open(corpus, "rb") as lines:
        documents = [json.loads(line)["text"] for line in lines]
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens = sum(len(tokenizer.encode(document)) + 1 for document in documents)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"tokens": tokens, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "tokens_per_s": round(tokens / seconds), "tokens_per_cpu_s": round(tokens / cpu_seconds),
            "load_average_1_min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def run_merge(output_prefix: str) -> dict:
    load_before = os.getloadavg()[0]
    probe = subprocess.run([sys.executable, "-c", MERGE_PROBE, output_prefix], cwd=REPOSITORY_ROOT,
                           capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    return result | {
        "mb_per_s": round(result["bytes_written"] / 1e6 / result["seconds"], 1),
        "documents_per_s": round(result["documents"] / result["seconds"]),
        "load_average_1_min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def write_zstd_files(corpus: Path, directory: Path, count: int) -> list[str]:
    """The corpus's lines as `count` zstd files of about equal size (with checksums)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = corpus.read_bytes().splitlines(keepends=True)
    per_file = -(-len(lines) // count)
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    for index in range(count):
        part = b"".join(lines[index * per_file : (index + 1) * per_file])
        (directory / f"part-{index:03d}.jsonl.zst").write_bytes(compressor.compress(part))
    return [str(directory / "part-*.jsonl.zst")]


def megatron_tokenizer_directory(tokenizer_path: str, eod_token: str, directory: Path) -> Path:
    """The builtin tokenizer.json as a transformers directory, EOD as its eos token."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_path, directory / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eod_token}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def compare_with_megatron_lm(arguments, corpus: Path, work_dir: Path, tokenizer_path: str) -> dict:
    """Megatron-LM's preprocess_data.py and ours on the same file, workers and tokenizer."""
    script = Path(arguments.megatron_lm) / "tools" / "preprocess_data.py"
    tokenizer_dir = megatron_tokenizer_directory(tokenizer_path, BUILTIN_EOD_TOKEN, work_dir / "hf_tokenizer")
    megatron_prefix = work_dir / "megatron_lm" / "corpus"
    megatron_prefix.parent.mkdir(parents=True, exist_ok=True)
    megatron = [sys.executable, str(script), "--input", str(corpus), "--output-prefix",
                str(megatron_prefix), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                str(tokenizer_dir), "--append-eod", "--workers", str(arguments.compare_workers)]
    ours_prefix = work_dir / "ours_compare" / "corpus"
    ours = data_prep_command([str(corpus)], ours_prefix, arguments.cache_dir, "--workers",
                             str(arguments.compare_workers))
    rounds = []
    for _ in range(arguments.repeats):
        for name, command in (("megatron_lm", megatron), ("ours", ours)):
            run = timed_processes([command])
            run.pop("stdout")
            rounds.append(run | {"case": name})
    best = {name: min((r for r in rounds if r["case"] == name), key=lambda r: r["wall_seconds"])
            for name in ("megatron_lm", "ours")}
    megatron_output = Path(f"{megatron_prefix}_text_document")
    return {
        "megatron_lm_script": str(script),
        "workers": arguments.compare_workers,
        "rounds": rounds,
        "best": best,
        "speedup_ours_over_megatron_lm": round(
            best["megatron_lm"]["wall_seconds"] / best["ours"]["wall_seconds"], 3
        ),
        "outputs_identical": same_files(megatron_output, ours_prefix),
    }


def print_table(results: dict) -> None:
    before, after = results["machine_before"], results["machine_after"]
    print(f"\nmachine: {before['nproc']} CPUs ({before['cpu']}), load average (1, 5, 15 min) before "
          f"{before['load_average_1_5_15_min']}, after {after['load_average_1_5_15_min']}")
    corpus = results["corpus"]
    print(f"corpus: {corpus['bytes'] / 1e6:.1f} MB JSONL, {corpus['documents']:,} documents\n")
    print("| case (best round) | tokens/s | wall s | cores | load 1m | identical |")
    print("|---|---:|---:|---:|---|---|")
    for run in results["best"]:
        print(f"| {run['case']} | {run['tokens_per_s']:,} | {run['wall_seconds']} | {run['cores_used']} "
              f"| {run['load_average_1_min_before_after']} | {run.get('identical_to_unsharded', '-')} |")
    alone = results["tokenizer_alone"]
    print(f"\ntokenizer alone (one process, in memory): {alone['tokens_per_s']:,} tokens/s, "
          f"{alone['tokens_per_cpu_s']:,} per CPU second")
    merge = results["merge"]
    print(f"merge of {results['merge_shards']} shards: {merge['seconds']:.2f} s, {merge['mb_per_s']} MB/s, "
          f"{merge['documents_per_s']:,} documents/s, peak RSS {merge['peak_rss_mb']:.0f} MB")
    if "megatron_lm" in results:
        comparison = results["megatron_lm"]
        print(f"Megatron-LM preprocess_data.py vs ours (--workers {comparison['workers']}): "
              f"{comparison['best']['megatron_lm']['wall_seconds']} s vs "
              f"{comparison['best']['ours']['wall_seconds']} s wall, "
              f"ours {comparison['speedup_ours_over_megatron_lm']}x, identical: {comparison['outputs_identical']}")


def measure_rounds(arguments, corpus: Path, zstd_inputs: list[str], work_dir: Path) -> list[dict]:
    """Every round of the unsharded run, the arrays and the zstd array, alternating."""
    reference = work_dir / "unsharded" / "corpus"
    rounds = []
    for _ in range(arguments.repeats):
        run = timed_processes([data_prep_command([str(corpus)], reference, arguments.cache_dir,
                                                 "--workers", "1")])
        run.pop("stdout")
        info = check_indexed_dataset(str(reference))
        rounds.append(run | {"case": "unsharded, --workers 1", "documents": info.documents,
                             "tokens": info.tokens, "tokens_per_s": round(info.tokens / run["wall_seconds"])})
        for tasks in arguments.tasks:
            array = run_array([str(corpus)], work_dir, f"array{tasks}", tasks, arguments.cache_dir)
            subprocess.run([sys.executable, "-m", "data_prep", "merge", "--output-prefix",
                            array["output_prefix"]], cwd=REPOSITORY_ROOT, check=True, capture_output=True)
            array["identical_to_unsharded"] = same_files(Path(array["output_prefix"]), reference)
            if not array["identical_to_unsharded"]:
                raise RuntimeError(f"{tasks} array tasks merged differ from the unsharded output")
            rounds.append(array | {"case": f"{tasks} array task(s), --workers 1 each"})
        rounds.append(run_array(zstd_inputs, work_dir, "zstd1", 1, arguments.cache_dir)
                      | {"case": f"1 array task, {arguments.zstd_files} zstd files"})
    return rounds


def main() -> None:
    arguments = parse_arguments()
    with benchmark_work_dir(arguments.work_dir, "data_prep_scaling-") as work_dir:
        # Trained once, before any timing.
        tokenizer_path = ensure_builtin_tokenizer(resolve_cache_dir(arguments.cache_dir),
                                                  TokenizerConfig().vocab_size)
        results = {"machine_before": machine_state()}
        corpus = work_dir / "corpus.jsonl"
        results["corpus"] = build_corpus(corpus, int(arguments.corpus_mb * 1e6), arguments.seed)
        zstd_inputs = write_zstd_files(corpus, work_dir / "zstd", arguments.zstd_files)
        results["corpus"]["zstd_files"] = arguments.zstd_files
        results["corpus"]["zstd_bytes"] = sum(p.stat().st_size for p in (work_dir / "zstd").iterdir())
        rounds = measure_rounds(arguments, corpus, zstd_inputs, work_dir)
        results["rounds"] = rounds
        results["best"] = [min((r for r in rounds if r["case"] == case), key=lambda r: r["wall_seconds"])
                           for case in dict.fromkeys(r["case"] for r in rounds)]
        results["tokenizer_alone"] = tokenizer_alone(corpus, arguments.cache_dir)
        results["merge_shards"] = max(arguments.tasks)
        results["merge"] = run_merge(str(work_dir / f"array{max(arguments.tasks)}" / "corpus"))
        if arguments.megatron_lm:
            results["megatron_lm"] = compare_with_megatron_lm(arguments, corpus, work_dir, tokenizer_path)
        results["machine_after"] = machine_state()
    print_table(results)
    print(f"\nwrote {write_results(results, arguments.output)}")


if __name__ == "__main__":
    main()
