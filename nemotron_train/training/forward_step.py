"""One micro-batch through the model, and the token-averaged language-model loss."""

from functools import partial

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.utils import get_batch_on_this_cp_rank

from nemotron_train.data.datasets import SOURCE_KEY
from nemotron_train.training.step_timing import straggler_timer


def forward_step(data_iterator, model, *, device: torch.device, num_sources: int = 0):
    """Megatron-Core's forward-step contract: return the model output and its loss function.

    With `num_sources`, the batch carries each sample's blend source and the loss function
    also reports (sum, count) per source."""
    batch = {key: value.to(device, non_blocking=True) for key, value in next(data_iterator).items()}
    sources = batch.pop(SOURCE_KEY, None)  # one per sample: not split along the sequence
    if parallel_state.get_context_parallel_world_size() > 1:
        # Each context-parallel rank keeps chunks i and 2*CP-1-i of every sequence.
        batch = get_batch_on_this_cp_rank(batch, is_hybrid_cp=False,
                                          cp_group=parallel_state.get_context_parallel_group())
    tokens, labels = batch["tokens"], batch["labels"]
    loss_mask, position_ids = batch["loss_mask"], batch["position_ids"]
    # attention_mask=None: the attention layers are causal by type, and no
    # boolean mask has to be materialised at sequence length squared.
    with straggler_timer():
        output = model(tokens, position_ids, None, labels=labels, loss_mask=loss_mask)
    if num_sources and sources is not None:
        return output, partial(masked_token_loss, loss_mask, sources=sources, num_sources=num_sources)
    return output, partial(masked_token_loss, loss_mask)


def masked_token_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor, *,
                      sources: torch.Tensor = None, num_sources: int = 0):
    """Sum of the masked per-token losses, the token count, and (sum, count) for reporting.

    Returning the count lets Megatron-Core average over tokens, not micro-batches. With
    `sources` ([micro_batch] blend source ids), the report also holds (sum, count) per source.
    """
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(per_token_loss.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    reports = {"lm loss": torch.stack([loss_sum.detach(), mask.sum()])}
    if sources is not None:
        sample_mask = loss_mask.float().reshape(sources.shape[0], -1)
        sample_sums = (per_token_loss.detach().float().reshape(sample_mask.shape) * sample_mask).sum(dim=1)
        per_source = torch.zeros(num_sources, 2, device=sample_sums.device)
        per_source[:, 0].index_add_(0, sources, sample_sums)
        per_source[:, 1].index_add_(0, sources, sample_mask.sum(dim=1))
        reports["source loss"] = per_source
    return loss_sum, num_tokens, reports


def mean_reported_loss(reports: list, device, key: str = "lm loss") -> float:
    """Token-weighted mean loss over micro-batches and data-parallel ranks.

    Only the last pipeline stage has losses; the other ranks add zeros, and the
    tensor-parallel copies scale sum and count alike, so the ratio is the mean.
    """
    totals = reduced_report_totals(reports, device, key, torch.zeros(2, dtype=torch.float64, device=device))
    return (totals[0] / totals[1].clamp(min=1)).item()


def reduced_report_totals(reports: list, device, key: str, totals: torch.Tensor) -> torch.Tensor:
    """The sum of every micro-batch's `key` report over all ranks (added into `totals`)."""
    for report in reports:
        totals += report[key].to(device=device, dtype=torch.float64)
    dist.all_reduce(totals)
    return totals
