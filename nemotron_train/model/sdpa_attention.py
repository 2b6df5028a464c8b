"""Megatron-Core's `DotProductAttention` with its core computed by torch's fused attention.

Fills a gap of the non-TE spec on GPUs: `DotProductAttention` materialises the
[batch, heads, s, s] scores and their softmax (fp32) in memory, so memory and time grow with
s^2 at the sequence lengths the Nemotron recipes train at. `torch.nn.functional.
scaled_dot_product_attention` dispatches to flash / cuDNN / memory-efficient kernels on CUDA
(no s x s tensor) and to its math path elsewhere. Everything but the core is inherited:
constructor, checks, softmax scale, dropout, and the (empty) parameter set and state-dict keys,
so checkpoints move between this module, `DotProductAttention` and TE's attention.
"""

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

_FLASH_DTYPES = (torch.bfloat16, torch.float16)


class ScaledDotProductAttention(DotProductAttention):
    """Core attention with DotProductAttention's interface: [s, b, heads, dim] in, [s, b, hidden] out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.softmax_offset is not None or self.scale_mask_softmax.window_size is not None:
            raise ValueError("ScaledDotProductAttention supports neither softmax offsets nor "
                             "sliding windows; use DotProductAttention")
        # DotProductAttention divides its scale by the layer number under query-key layer
        # scaling and multiplies the scores back inside the softmax: the net scale is this one.
        layer_scaling = self.layer_number if self.config.apply_query_key_layer_scaling else 1
        self.net_softmax_scale = self.softmax_scale * layer_scaling

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """Attention of `query` [sq, b, np, hn] over `key`/`value` [sk, b, ng, hn]; returns
        [sq, b, np * hn]. `attention_mask` (True = masked out) replaces the causal mask."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("ScaledDotProductAttention supports neither packed sequences nor attention bias")
        causal = (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal and attention_mask is None
        repeat = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        # Grouped KV heads stay grouped where the flash kernel takes them; elsewhere (fp32, CPU)
        # each KV head is repeated for its query heads, as DotProductAttention does.
        grouped = repeat > 1 and query.is_cuda and query.dtype in _FLASH_DTYPES
        # [s, b, heads, dim] -> [b, heads, s, dim]
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if repeat > 1 and not grouped:
            key = key.repeat_interleave(repeat, dim=1)
            value = value.repeat_interleave(repeat, dim=1)
        dropout = self.attention_dropout.p if self.training else 0.0
        # As DotProductAttention: dropout draws from the tensor-parallel RNG stream.
        rng = (tensor_parallel.get_cuda_rng_tracker().fork()
               if dropout and not self.config.sequence_parallel else contextlib.nullcontext())
        with rng:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=None if attention_mask is None else ~attention_mask,
                dropout_p=dropout, is_causal=causal, scale=self.net_softmax_scale, enable_gqa=grouped)
        sequence, batch = context.size(2), context.size(0)
        return context.permute(2, 0, 1, 3).reshape(sequence, batch, self.hidden_size_per_partition)
