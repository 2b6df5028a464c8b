"""The commands for finished or running shards: `python -m data_prep merge|blend|status`.

    python -m data_prep merge --output-prefix /data/web
    python -m data_prep blend --output-prefix /data/web --output configs/data/web.yaml
    python -m data_prep status --output-prefix /data/web
"""

import argparse
import logging
import sys

from nemotron_train.data.shard_outputs import merge_shards, write_blend
from nemotron_train.data.shard_plan import load_shard_plan
from nemotron_train.data.shards import preparation_status

SHARD_COMMANDS = ("merge", "blend", "status")


def build_shard_command_parser() -> argparse.ArgumentParser:
    """The merge, blend and status command lines, as documented by --help."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Merge, blend or report on the shards of `python -m data_prep ... "
        "--num-shards N`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge",
        help="concatenate the finished shards, in order, into PREFIX.bin/.idx with "
        "Megatron-Core's IndexedDatasetBuilder.add_index (byte for byte the unsharded output)",
    )
    blend = commands.add_parser(
        "blend",
        help="write a data-config YAML blending the shards, each weighted by its tokens "
        "(train without merging: train.py --config-dir DIR data=NAME for DIR/data/NAME.yaml)",
    )
    blend.add_argument("--output", required=True, help="the YAML file to write")
    status = commands.add_parser(
        "status", help="print every shard's state, documents, tokens and throughput, and totals"
    )
    for command in (merge, blend, status):
        command.add_argument(
            "--output-prefix",
            required=True,
            help="the --output-prefix the shards were prepared with",
        )
    return parser


def run_shard_command(argv: list[str]) -> int:
    """Run one of SHARD_COMMANDS; 0 on success, 1 with the reason on stderr."""
    arguments = build_shard_command_parser().parse_args(argv)
    # Megatron-Core's _IndexReader logs five INFO lines for every shard it opens.
    logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)
    try:
        if arguments.command == "merge":
            message = merge_shards(arguments.output_prefix).describe()
        elif arguments.command == "blend":
            message = write_blend(arguments.output_prefix, arguments.output).describe()
        else:
            plan = load_shard_plan(arguments.output_prefix)
            print(preparation_status(plan, arguments.output_prefix).table())
            return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"data_prep {arguments.command}: error: {error}", file=sys.stderr)
        return 1
    print(f"data_prep {arguments.command}: {message}", file=sys.stderr)
    return 0
