"""`python -m nemotron_train.convert {import-hf,export-hf,logits,compare-hf} ...`

  import-hf  --hf-dir DIR --output OUT [--mtp-depths K]
  export-hf  --checkpoint CKPT --output DIR [--dtype bf16|fp32] [--config FILE] [--max-shard-gb G]
  logits     --checkpoint CKPT --input-ids IDS.json --output OUT.pt [--dtype fp32|bf16] [--config FILE]
  compare-hf --hf-dir DIR --checkpoint CKPT [--input-ids IDS.json | --batch B --seq-length S]
             [--dtype fp32|bf16] [--tolerance T] [--config FILE] [--json OUT.json]

CKPT is a run directory, its checkpoints/ directory, one iter_* directory, or what
import-hf wrote. Bad input exits with status 2 and one line naming the file or field.
"""

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from nemotron_train.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nemotron_train.convert",
                                     description="Hugging Face NemotronH <-> Megatron-Core checkpoints")
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import-hf", help="HF directory -> our checkpoint + config.yaml")
    imports.add_argument("--hf-dir", required=True, type=Path)
    imports.add_argument("--output", required=True, type=Path)
    imports.add_argument("--mtp-depths", type=int, help="apply a single stored MTP block at this many "
                                                        "depths (shared weights, as Super trains)")
    exports = commands.add_parser("export-hf", help="our checkpoint -> HF directory")
    exports.add_argument("--checkpoint", required=True, type=Path)
    exports.add_argument("--output", required=True, type=Path)
    exports.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    exports.add_argument("--config", type=Path, help="the run's config.yaml, if not beside the checkpoint")
    exports.add_argument("--max-shard-gb", type=float, default=5.0, help="bound on each weight file")
    logits = commands.add_parser("logits", help="our model's logits on token rows")
    logits.add_argument("--checkpoint", required=True, type=Path)
    logits.add_argument("--input-ids", required=True, type=Path, help="JSON list of token-id rows")
    logits.add_argument("--output", required=True, type=Path, help="float32 [batch, seq, vocab] (torch.save)")
    logits.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    logits.add_argument("--config", type=Path)
    compare = commands.add_parser("compare-hf", help="our logits against transformers' on the same tokens")
    compare.add_argument("--hf-dir", required=True, type=Path)
    compare.add_argument("--checkpoint", required=True, type=Path)
    compare.add_argument("--input-ids", type=Path, help="JSON token rows (default: random ones)")
    compare.add_argument("--batch", type=int, default=2)
    compare.add_argument("--seq-length", type=int, default=64)
    compare.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    compare.add_argument("--tolerance", type=float, help="bound on max |diff| / max |hf logit| "
                                                         "(default 1e-4 in fp32, 5e-2 in bf16)")
    compare.add_argument("--config", type=Path)
    compare.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def _run(args) -> int:
    from nemotron_train.convert.checkpoint_source import resolve_source

    if args.command == "import-hf":
        from nemotron_train.convert.import_hf import import_hf

        import_hf(args.hf_dir, args.output, mtp_depths=args.mtp_depths)
        return 0
    if args.command == "export-hf":
        from nemotron_train.convert.export_hf import export_hf

        if args.max_shard_gb <= 0:
            raise ConfigError("--max-shard-gb", args.max_shard_gb, "must be positive")
        export_hf(args.checkpoint, args.output, config_file=args.config, dtype=args.dtype,
                  max_shard_bytes=int(args.max_shard_gb * 1e9))
        return 0
    import torch

    from nemotron_train.convert.logits import model_logits, read_token_rows

    if args.command == "logits":
        source = resolve_source(args.checkpoint, args.config)
        logits = model_logits(source, read_token_rows(args.input_ids), dtype=args.dtype)
        torch.save(logits, args.output)
        print(f"[logits] {list(logits.shape)} float32 -> {args.output}")
        return 0
    from nemotron_train.convert.compare import DEFAULT_TOLERANCE, compare_logits, hf_logits, random_token_rows
    from nemotron_train.convert.import_hf import read_hf_config

    source = resolve_source(args.checkpoint, args.config)
    if args.input_ids is not None:
        rows = read_token_rows(args.input_ids)
    else:
        rows = random_token_rows(read_hf_config(args.hf_dir)["vocab_size"], args.batch, args.seq_length)
    theirs = hf_logits(args.hf_dir, rows, args.dtype)  # before our runtime is set up
    ours = model_logits(source, rows, dtype=args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.dtype]
    comparison = compare_logits(ours, theirs, tolerance)
    print(f"[compare-hf] {comparison.summary()}")
    if args.json is not None:
        args.json.write_text(json.dumps(comparison.as_dict(), indent=2) + "\n")
    return 0 if comparison.passed else 1


def _quiet_library_warnings() -> None:
    """torch's checkpoint loader warns on every one-process load, Megatron-Core on every save
    (its async writer's deprecation); the console keeps our progress lines."""
    logging.getLogger("megatron").setLevel(logging.ERROR)
    for message in ("torch.distributed is disabled", "The argument order of load",
                    "Please use DTensor instead"):
        warnings.filterwarnings("ignore", message=message)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _quiet_library_warnings()
    try:
        return _run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
