"""python -m data_prep: tokenize raw text into a Megatron-Core indexed dataset (.bin/.idx).

    python -m data_prep --input corpus.jsonl more/ --output-prefix /data/corpus_text_document \\
        --tokenizer-type huggingface --tokenizer-path tokenizer.json --eod-token '</s>'
    python -m data_prep --input 'web/*.jsonl.zst' --output-prefix /data/web ... \\
        --num-shards 64 --shard-index 7          # one shard of 64 (an array task)
    python -m data_prep merge --output-prefix /data/web     # or: blend, status

The output is what Megatron-LM's tools/preprocess_data.py writes (one sequence per document,
the end-of-document token appended) and what DataConfig.blend points at. Progress and the
closing summary go to stderr. The merge, blend and status commands are in shard_commands.py.
"""

import argparse
import logging
import os
import sys

from data_prep.shard_commands import SHARD_COMMANDS, run_shard_command
from nemotron_train.data.config import (
    BUILTIN_EOD_TOKEN,
    TIKTOKEN_PATTERNS,
    TOKENIZER_TYPES,
    TokenizerConfig,
)
from nemotron_train.data.inputs import expand_inputs
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.shard_plan import load_or_make_shard_plan
from nemotron_train.data.shards import prepare_shard, preparation_status
from nemotron_train.data.tokenizer import Tokenizer, build_tokenizer


EPILOG = """\
example:
  python -m data_prep --input web/ code.jsonl --output-prefix /data/web_code_text_document \\
      --tokenizer-type huggingface --tokenizer-path tokenizer.json --eod-token '</s>'

  python -m data_prep --input @shard_list.txt --output-prefix /data/web --num-shards 64 \\
      --shard-index "$SLURM_ARRAY_TASK_ID" --tokenizer-type huggingface --tokenizer-path t.json
  python -m data_prep merge --output-prefix /data/web       # one dataset from the 64 shards
  python -m data_prep blend --output-prefix /data/web --output configs/data/web.yaml
  python -m data_prep status --output-prefix /data/web      # per-shard and total progress

Each document becomes one sequence, its tokens then the end-of-document token, stored as
uint16 when the vocabulary fits, else int32. Malformed records are reported with file and
line and skipped (--strict: stop); empty documents are skipped and counted; corrupt
compressed data and unreadable files stop the run, named with file and byte offset.

With --num-shards N the input is split into N shards of about equal bytes (PREFIX.plan.json
records which files and byte ranges each reads); each shard writes
PREFIX.shard-0000I-of-0000N.{bin,idx} and a manifest, and a finished shard is never redone.
Without --shard-index every unfinished shard runs here, one after the other. Merged in
order, the shards are byte for byte the unsharded output.

Train on the result with data.corpus=prefixes data.blend='[[1.0,PREFIX]]' and the same
tokenizer settings under data.tokenizer (a blend file carries them). Exit status: 0 on
success, 1 on bad input (nothing written for the failing shard).
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line, as documented by --help."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Tokenize documents into a Megatron-Core indexed dataset (.bin/.idx).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL (.jsonl/.ndjson/.json), Parquet (.parquet), plain text files (one "
        "document each), any of them but Parquet compressed (.gz, .zst), directories of those "
        "(read recursively in sorted order, hidden files left out), globs ('web/*.jsonl.zst'), "
        "@FILE for a file listing inputs one per line, Hugging Face `datasets` directories "
        "(save_to_disk), or `stdlib` for the embedded corpus; read in the order given",
    )
    parser.add_argument(
        "--output-prefix",
        required=True,
        help="writes PREFIX.bin and PREFIX.idx, replacing them only once complete",
    )
    parser.add_argument(
        "--tokenizer-type",
        choices=TOKENIZER_TYPES,
        default="builtin",
        help="builtin: byte-level BPE trained on the stdlib corpus and cached; huggingface: a "
        "tokenizer.json; tiktoken: a Megatron-format tiktoken vocabulary .json; "
        "sentencepiece: a .model file (default: %(default)s)",
    )
    parser.add_argument(
        "--tokenizer-path", help="tokenizer file (required for all types but builtin)"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="builtin tokenizer's vocabulary size (default: %(default)s)",
    )
    parser.add_argument(
        "--eod-token",
        default=BUILTIN_EOD_TOKEN,
        help="token appended to every document; must exist in the tokenizer "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tiktoken-pattern",
        choices=TIKTOKEN_PATTERNS,
        default="v2",
        help="tiktoken: Megatron-Core's pre-tokenization regex (default: %(default)s)",
    )
    parser.add_argument(
        "--tiktoken-num-special-tokens",
        type=int,
        default=1000,
        help="tiktoken: ids reserved for special tokens below the BPE ranks "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--json-key",
        nargs="+",
        help="field (JSONL) or column (Parquet, datasets) of the text: one for every input, or "
        "one per --input value in the same order (default: text)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizing processes (1: the writing process tokenizes too); the output is "
        "the same for any number (default: %(default)s, the CPU count)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed record instead of skipping it",
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        help="split the input into this many shards (files, and byte ranges of large plain "
        "JSONL files), each written and resumed on its own; merge or blend them afterwards",
    )
    parser.add_argument(
        "--shard-index",
        type=int,
        help="with --num-shards: prepare only this shard, 0-based (a Slurm array task's "
        "$SLURM_ARRAY_TASK_ID); without it every unfinished shard runs here",
    )
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="with --num-shards: check the inputs and the tokenizer, write PREFIX.plan.json "
        "and stop (the Slurm launcher runs this before it submits)",
    )
    parser.add_argument(
        "--cache-dir",
        help="where the builtin tokenizer is trained and cached (default: $NEMOTRON_TRAIN_CACHE, "
        "else ~/.cache/nemotron_train)",
    )
    return parser


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; exits with usage on a bad one."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error(f"--workers={arguments.workers} is invalid; allowed: >= 1")
    if arguments.json_key is not None and len(arguments.json_key) not in (
        1,
        len(arguments.input),
    ):
        parser.error(
            f"--json-key has {len(arguments.json_key)} keys for {len(arguments.input)} inputs; "
            "allowed: one key for all inputs, or one per input"
        )
    if arguments.num_shards is None:
        if arguments.shard_index is not None:
            parser.error("--shard-index needs --num-shards")
        if arguments.plan_only:
            parser.error("--plan-only needs --num-shards")
    elif arguments.num_shards < 1:
        parser.error(f"--num-shards={arguments.num_shards} is invalid; allowed: >= 1")
    elif arguments.shard_index is not None and not 0 <= arguments.shard_index < arguments.num_shards:
        parser.error(
            f"--shard-index={arguments.shard_index} is invalid; allowed: 0 <= index < "
            f"--num-shards={arguments.num_shards}"
        )
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; 0 on success, 1 on bad input, with the reason on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="data_prep: %(message)s", stream=sys.stderr)
    if argv and argv[0] in SHARD_COMMANDS:
        return run_shard_command(argv)
    arguments = parse_arguments(argv)
    try:
        tokenizer_config = TokenizerConfig(
            type=arguments.tokenizer_type,
            path=arguments.tokenizer_path,
            vocab_size=arguments.vocab_size,
            eod_token=arguments.eod_token,
            tiktoken_pattern=arguments.tiktoken_pattern,
            tiktoken_num_special_tokens=arguments.tiktoken_num_special_tokens,
        )
        tokenizer = build_tokenizer(tokenizer_config, arguments.cache_dir)
        json_keys = arguments.json_key or ["text"]
        if arguments.num_shards is not None:
            return _prepare_shards(arguments, json_keys, tokenizer_config, tokenizer)
        summary = prepare_indexed_dataset(
            expand_inputs(arguments.input, json_keys=json_keys),
            tokenizer=tokenizer,
            output_prefix=arguments.output_prefix,
            workers=arguments.workers,
            strict=arguments.strict,
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        # ValueError covers malformed records (--strict), corrupt and unreadable inputs.
        print(f"data_prep: error: {error}", file=sys.stderr)
        return 1
    print(f"data_prep: {summary.describe()}", file=sys.stderr)
    return 0


def _prepare_shards(
    arguments: argparse.Namespace,
    json_keys: list[str],
    tokenizer_config: TokenizerConfig,
    tokenizer: Tokenizer,
) -> int:
    output_prefix = os.path.abspath(arguments.output_prefix)
    plan = load_or_make_shard_plan(output_prefix, arguments.input, json_keys, arguments.num_shards)
    if arguments.plan_only:
        print(f"data_prep: planned {plan.num_shards} shards: {output_prefix}.plan.json", file=sys.stderr)
        return 0
    indices = range(plan.num_shards) if arguments.shard_index is None else [arguments.shard_index]
    for shard_index in indices:
        prepare_shard(
            plan,
            shard_index,
            output_prefix=output_prefix,
            tokenizer=tokenizer,
            tokenizer_config=tokenizer_config,
            workers=arguments.workers,
            strict=arguments.strict,
        )
    status = preparation_status(plan, output_prefix)
    print(f"data_prep: {status.total_line()}", file=sys.stderr)
    if status.count("finished") == plan.num_shards:
        print(
            f"data_prep: every shard is finished: `python -m data_prep merge --output-prefix "
            f"{output_prefix}` writes one dataset, `python -m data_prep blend --output-prefix "
            f"{output_prefix} --output FILE.yaml` a blend of the shards",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
