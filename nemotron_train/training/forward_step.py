"""One micro-batch through the model, and the token-averaged language-model loss."""

from functools import partial

import torch

from megatron.core import parallel_state
from megatron.core.utils import get_batch_on_this_cp_rank

from nemotron_train.training.step_timing import straggler_timer


def forward_step(data_iterator, model, *, device: torch.device):
    """Megatron-Core's forward-step contract: return the model output and its loss function."""
    batch = {key: value.to(device, non_blocking=True) for key, value in next(data_iterator).items()}
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
    return output, partial(masked_token_loss, loss_mask)


def masked_token_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """Sum of the masked per-token losses, the token count, and (sum, count) for reporting.

    Returning the count lets Megatron-Core average over tokens, not micro-batches.
    """
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(per_token_loss.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}
