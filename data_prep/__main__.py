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

from nemotron_train.data.config import (
    BUILTIN_EOD_TOKEN,
    TIKTOKEN_PATTERNS,
    TOKENIZER_TYPES,
    TokenizerConfig,
)
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.sources import MalformedInputError, expand_inputs
from nemotron_train.data.tokenizer import build_tokenizer


EPILOG = """\
example:
  python -m data_prep --input web/ code.jsonl --output-prefix /data/web_code_text_document \\
      --tokenizer-type huggingface --tokenizer-path tokenizer.json --eod-token '</s>'

Each document becomes one sequence, its tokens then the end-of-document token, stored as
uint16 when the vocabulary fits, else int32. Malformed records are reported with file and
line and skipped (--strict: stop); empty documents are skipped and counted. Train on the
result with data.corpus=prefixes data.blend='[[1.0,PREFIX]]' and the same tokenizer
settings under data.tokenizer. Exit status: 0 on success, 1 on bad input (nothing written).
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
        "document each), directories of those (read recursively in sorted order, hidden "
        "files left out), Hugging Face `datasets` directories (save_to_disk), or `stdlib` "
        "for the embedded corpus; read in the order given",
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
        default="text",
        help="field (JSONL) or column (Parquet, datasets) of the text (default: %(default)s)",
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
            tiktoken_pattern=arguments.tiktoken_pattern,
            tiktoken_num_special_tokens=arguments.tiktoken_num_special_tokens,
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
