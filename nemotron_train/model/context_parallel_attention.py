"""Causal attention over a sequence split across context-parallel ranks, without TE.

Fills a Megatron-Core gap: its local `DotProductAttention` requires
`context_parallel_size == 1`; context parallelism for attention exists only in
TransformerEngine's attention. Here each rank holds chunks i and 2*CP-1-i of
every sequence (Megatron-Core's load-balanced split, as `get_batch_on_this_cp_rank`
produces), all-gathers keys and values over the CP group (reduce-scatter in
backward), and masks by global position. Attention has no positional embedding
in these models, so nothing else depends on the split.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


def load_balanced_positions(local_length: int, cp_rank: int, cp_size: int, device) -> torch.Tensor:
    """Global positions of the tokens a CP rank holds: chunks cp_rank and 2*cp_size-1-cp_rank."""
    chunk = local_length // 2
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second_start = (2 * cp_size - 1 - cp_rank) * chunk
    second = torch.arange(second_start, second_start + chunk, device=device)
    return torch.cat([first, second])


class ContextParallelAttention(MegatronModule):
    """Core attention with DotProductAttention's interface: [s, b, heads, dim] in, [s, b, hidden] out."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection=None):
        super().__init__(config=config)
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"ContextParallelAttention supports causal masks only, got {attn_mask_type}")
        tp_size = pg_collection.tp.size()
        self.heads = config.num_attention_heads // tp_size
        self.query_groups = config.num_query_groups // tp_size
        self.softmax_scale = softmax_scale or config.kv_channels ** -0.5
        self.cp_group = pg_collection.cp

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("ContextParallelAttention supports neither packed sequences nor attention bias")
        cp_size, cp_rank = self.cp_group.size(), self.cp_group.rank()
        local_length = query.size(0)
        key = gather_from_sequence_parallel_region(key, group=self.cp_group)
        value = gather_from_sequence_parallel_region(value, group=self.cp_group)
        query_positions = load_balanced_positions(local_length, cp_rank, cp_size, query.device)
        key_positions = torch.cat([load_balanced_positions(local_length, rank, cp_size, query.device)
                                   for rank in range(cp_size)])
        causal = key_positions[None, :] <= query_positions[:, None]
        repeat = self.heads // self.query_groups
        # [s, b, h, d] -> [b, h, s, d]; GQA: each key/value head serves `repeat` query heads.
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=causal,
                                                 scale=self.softmax_scale)
        batch = context.size(0)
        return context.permute(2, 0, 1, 3).reshape(local_length, batch, -1)
