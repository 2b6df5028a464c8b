"""One micro-batch through the model, and the token-averaged language-model loss."""

from functools import partial

import torch


def forward_step(data_iterator, model, *, device: torch.device):
    """Megatron-Core's forward-step contract: return the model output and its loss function."""
    batch = next(data_iterator)
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    # attention_mask=None: the attention layers are causal by type, and no
    # boolean mask has to be materialised at sequence length squared.
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
