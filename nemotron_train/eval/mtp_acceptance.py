"""Draft acceptance of the MTP heads on held-out data.

`python -m nemotron_train.eval.mtp_acceptance <run_dir> [--batches N] [--out FILE]`

At every position t of a validation sequence, MTP depth k (1-based) drafts token t+1+k. The
draft is accepted when it equals the main model's greedy token for t+1+k, i.e. the argmax
of the main head at position t+k (both with the true prefix, as in a verification pass).
The acceptance per depth is accepted / counted over all such positions; Megatron-Core's own
`mtp_k_acceptance_rate` counts matches with the true token instead (logged as
`mtp_k_accuracy` in metrics.jsonl).
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULT_FILE = "mtp_acceptance.json"


@dataclass(frozen=True)
class DepthAcceptance:
    depth: int
    accepted: int
    counted: int

    @property
    def rate(self) -> float:
        return self.accepted / self.counted if self.counted else float("nan")


def greedy_acceptance(main_logits: torch.Tensor, mtp_logits: list, loss_mask: torch.Tensor) -> list:
    """Per depth k = 1..len(mtp_logits): drafts argmax(mtp_k[t]) against argmax(main[t + k]).

    `main_logits` and each of `mtp_logits` are [batch, seq, vocab]; `loss_mask` [batch, seq]
    marks positions whose next token is real (a masked main position t + k is not counted).
    """
    seq = main_logits.shape[1]
    main_greedy = main_logits.argmax(-1)
    results = []
    for depth, logits in enumerate(mtp_logits, start=1):
        drafts = logits[:, :seq - depth].argmax(-1)
        valid = loss_mask[:, depth:].bool()
        accepted = ((drafts == main_greedy[:, depth:]) & valid).sum().item()
        results.append(DepthAcceptance(depth=depth, accepted=int(accepted), counted=int(valid.sum().item())))
    return results


def _main_and_mtp_logits(model, tokens, positions):
    """The main head's and every MTP depth's logits, [batch, seq, vocab] each."""
    captured = []
    handle = model.mtp.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        main_logits = model(tokens, positions, None)  # no labels: logits, [b, s, V]
    finally:
        handle.remove()
    depths = model.config.mtp_num_layers
    chunks = captured[0].chunk(1 + depths, dim=0)[1:]
    return main_logits, [model.output_layer(chunk)[0].transpose(0, 1) for chunk in chunks]


def measure(run_dir: Path, batches: int) -> dict:
    """Load the run's latest checkpoint and measure acceptance on `batches` validation micro-batches."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemotron_train.errors import ConfigError
    from nemotron_train.config.schema import load_run_config
    from nemotron_train.data.curriculum import build_train_data
    from nemotron_train.data.datasets import build_data_iterator
    from nemotron_train.data.tokenizer import build_tokenizer
    from nemotron_train.runtime.distributed import ParallelConfig
    from nemotron_train.training.checkpoint import load_checkpoint
    from nemotron_train.runtime.megatron_session import megatron_session
    from nemotron_train.training.model_setup import build_model

    config = load_run_config(run_dir)
    depths = config.model.parsed_pattern.mtp_depths
    if not depths:
        raise ConfigError("model.pattern", config.model.pattern,
                          "this run has no MTP block ('/' in the pattern): nothing to accept")
    checkpoint_dir = Path(config.checkpoint.dir or Path(run_dir) / "checkpoints")
    # One process: dist_checkpointing reshards whatever layout the run trained with.
    config.parallel = ParallelConfig()
    config.precision.grad_reduce_in_fp32 = True
    with megatron_session(config.parallel) as (_, context):
        torch.manual_seed(config.seed)
        model_parallel_cuda_manual_seed(config.seed)
        tokenizer = build_tokenizer(config.data.tokenizer, config.data.cache_dir)
        setup = build_model(config, tokenizer.vocab_size, context.device)
        load_checkpoint(checkpoint_dir, setup.chunks, None, None, weights_only=True)
        model = setup.chunks[0].module
        model = getattr(model, "module", model)  # under Float16Module
        model.eval()
        micro_batch = config.train.micro_batch_size
        data = build_train_data(
            config.data, tokenizer, seq_length=config.model.seq_length, seed=config.seed,
            max_steps=config.train.max_steps, global_batch_size=config.train.global_batch_size,
            micro_batch_size=micro_batch, valid_samples=batches * micro_batch, consumed_samples=0,
            data_parallel_rank=0, data_parallel_size=1)
        iterator = build_data_iterator(data.valid_dataset, micro_batch_size=micro_batch,
                                       consumed_samples=0, data_parallel_rank=0, data_parallel_size=1)
        totals = [[0, 0] for _ in range(depths)]
        # Only here: Megatron-Core's DDP (inside build_model) needs autograd to hook its grads.
        with torch.no_grad():
            for _ in range(batches):
                batch = {key: value.to(context.device) for key, value in next(iterator).items()}
                main_logits, mtp_logits = _main_and_mtp_logits(model, batch["tokens"], batch["position_ids"])
                for result in greedy_acceptance(main_logits.float(), mtp_logits, batch["loss_mask"]):
                    totals[result.depth - 1][0] += result.accepted
                    totals[result.depth - 1][1] += result.counted
    per_depth = [DepthAcceptance(depth=k + 1, accepted=a, counted=c) for k, (a, c) in enumerate(totals)]
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint_dir),
        "batches": batches,
        "tokens_per_batch": micro_batch * config.model.seq_length,
        "depths": [asdict(d) | {"rate": d.rate} for d in per_depth],
    }


def format_table(result: dict) -> str:
    lines = ["| depth k (drafts t+1+k) | accepted | positions | acceptance |", "|---|---|---|---|"]
    for depth in result["depths"]:
        lines.append(f"| {depth['depth']} | {depth['accepted']:,} | {depth['counted']:,} | {depth['rate']:.2%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with config.yaml and checkpoints/")
    parser.add_argument("--batches", type=int, default=16, help="validation micro-batches (default 16)")
    parser.add_argument("--out", type=Path, help=f"result JSON (default <run_dir>/{RESULT_FILE})")
    args = parser.parse_args(argv)
    from nemotron_train.errors import ConfigError

    try:
        result = measure(args.run_dir, args.batches)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    out = args.out or args.run_dir / RESULT_FILE
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
