"""Validation: the mean loss over `train.eval_iters` micro-batches per data-parallel rank,
and with `train.eval_per_source` the loss of each source of the validation blend and of
each curriculum phase whose sources it holds."""

import os
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

from nemotron_train.data.datasets import blend_source_names, build_data_iterator
from nemotron_train.training.forward_step import forward_step, mean_reported_loss, reduced_report_totals


@torch.no_grad()
def evaluate(config, setup, data, context) -> dict:
    """`valid_loss`, and per source `valid_loss/<source>` and per phase `valid_loss/phase<k>`
    when asked for and the validation set is a blend. `data` is the run's TrainData."""
    sources = blend_source_names(data.valid_dataset) if config.train.eval_per_source else []
    iterator = build_data_iterator(data.valid_dataset, micro_batch_size=config.train.micro_batch_size,
                                   consumed_samples=0, data_parallel_rank=context.data_parallel_rank,
                                   data_parallel_size=context.data_parallel_size,
                                   with_source=bool(sources))
    for chunk in setup.chunks:
        chunk.eval()
    reports = get_forward_backward_func()(
        forward_step_func=partial(forward_step, device=context.device, num_sources=len(sources)),
        data_iterator=iterator, model=setup.chunks, num_microbatches=config.train.eval_iters,
        seq_length=config.model.seq_length, micro_batch_size=config.train.micro_batch_size,
        forward_only=True,
    )
    for chunk in setup.chunks:
        chunk.train()
    get_moe_metrics_tracker().clear()
    metrics = {"valid_loss": mean_reported_loss(reports, context.device)}
    if sources:
        metrics.update(_per_source_losses(reports, sources, data, context.device))
    return metrics


def _per_source_losses(reports: list, sources: list[str], data, device) -> dict:
    zeros = torch.zeros(len(sources), 2, dtype=torch.float64, device=device)
    totals = reduced_report_totals([r for r in reports if "source loss" in r], device, "source loss", zeros)
    losses = {}
    for name, (loss_sum, count) in zip(sources, totals.tolist()):
        if count:
            losses[name] = loss_sum / count
    metrics = {f"valid_loss/{name}": loss for name, loss in losses.items()}
    prefixes = [os.path.abspath(part.dataset_path) for part in data.valid_dataset.datasets]
    by_prefix = {prefix: losses.get(name) for prefix, name in zip(prefixes, sources)}
    for phase in data.phases if len(data.phases) > 1 else ():
        phase_loss = _blend_loss(phase.blend, by_prefix)
        if phase_loss is not None:
            metrics[f"valid_loss/phase{phase.number}"] = phase_loss
    return metrics


def _blend_loss(blend, loss_by_prefix: dict):
    """The loss of a blend's mixture, Σ w_i L_i / Σ w_i, when every source has a loss."""
    weighted = total = 0.0
    for weight, prefix in blend:
        loss = loss_by_prefix.get(os.path.abspath(os.path.expanduser(prefix)))
        if loss is None:
            return None
        weighted, total = weighted + float(weight) * loss, total + float(weight)
    return weighted / total
