"""python -m data_prep: tokenize raw text into a Megatron-Core indexed dataset (.bin/.idx).

    python -m data_prep --input corpus.jsonl more/ --output-prefix /data/corpus_text_document \\
        --tokenizer-type huggingface --tokenizer-path tokenizer.json --eod-token '</s>'

The output is what Megatron-LM's tools/preprocess_data.py writes (one sequence per document,
the end-of-document token appended) and what DataConfig.blend points at. Progress and the
closing summary go to stderr.
"""

import argparse
import logging
import os
import sys

from nemotron_train.data.config import BUILTIN_EOD_TOKEN, TOKENIZER_TYPES, TokenizerConfig
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.sources import MalformedInputError, expand_inputs
from nemotron_train.data.tokenizer import build_tokenizer


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, as documented by --help."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Tokenize documents into a Megatron-Core indexed dataset (.bin/.idx).",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL (.jsonl/.ndjson/.json), Parquet (.parquet), plain text files (one "
        "document each), directories of those, Hugging Face `datasets` directories "
        "(save_to_disk), or `stdlib` for the embedded corpus",
    )
    parser.add_argument(
        "--output-prefix",
        required=True,
        help="writes PREFIX.bin and PREFIX.idx, replacing them only once complete",
    )
    parser.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="builtin")
    parser.add_argument("--tokenizer-path", help="tokenizer file (all types but builtin)")
    parser.add_argument(
        "--vocab-size", type=int, default=4096, help="builtin tokenizer's vocabulary size"
    )
    parser.add_argument(
        "--eod-token", default=BUILTIN_EOD_TOKEN, help="token appended to every document"
    )
    parser.add_argument(
        "--json-key", default="text", help="field (JSONL) or column (Parquet, datasets) of the text"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first malformed record instead of skipping it",
    )
    parser.add_argument(
        "--cache-dir",
        help="where the builtin tokenizer is trained and cached (default: $NEMOTRON_TRAIN_CACHE, "
        "else ~/.cache/nemotron_train)",
    )
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error(f"--workers={arguments.workers} is invalid; allowed: >= 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; 0 on success, 1 on bad input, with the reason on stderr."""
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="data_prep: %(message)s", stream=sys.stderr)
    try:
        tokenizer_config = TokenizerConfig(
            type=arguments.tokenizer_type,
            path=arguments.tokenizer_path,
            vocab_size=arguments.vocab_size,
            eod_token=arguments.eod_token,
        )
        tokenizer = build_tokenizer(tokenizer_config, arguments.cache_dir)
        summary = prepare_indexed_dataset(
            expand_inputs(arguments.input),
            tokenizer=tokenizer,
            output_prefix=arguments.output_prefix,
            workers=arguments.workers,
            json_key=arguments.json_key,
            strict=arguments.strict,
        )
    except (MalformedInputError, ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"data_prep: error: {error}", file=sys.stderr)
        return 1
    print(f"data_prep: {summary.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
