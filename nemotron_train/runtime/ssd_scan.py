"""Mamba-2's fused training kernel and gated RMSNorm in plain PyTorch.

Megatron-Core's `MambaMixer` trains through `mamba_ssm`'s Triton kernel
`mamba_split_conv1d_scan_combined` and normalises with `mamba_ssm`'s gated
RMSNorm; both need CUDA. This module provides the same two entry points, with
the same signatures and semantics, so the mixer runs where `mamba_ssm` cannot be
imported. The scan is the SSD (state-space duality) algorithm of the Mamba-2
paper: a masked attention-like product inside each chunk, and a decayed sum of
chunk states between chunks. Gradients come from autograd.

Shape letters: b batch, l/s positions in a chunk, c chunk, h head, p head
channel, g group, n state channel.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from megatron.core import parallel_state
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
)


def causal_depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor | None
) -> torch.Tensor:
    """Causal depthwise convolution along the sequence that never mixes documents.

    out[b, t, d] = bias[d] + sum_k weight[d, k] * x[b, t - width + 1 + k, d], summing
    only the taps that lie in token t's document (same `seq_idx`). Tokens with a
    negative `seq_idx` are padding and output zero, bias included, as in
    causal-conv1d's kernel. `seq_idx` None means one document per row: a plain
    left-padded depthwise `conv1d`.

    x: (batch, seqlen, channels); weight: (channels, width); bias: (channels,) or
    None; seq_idx: (batch, seqlen) int or None. Returns (batch, seqlen, channels).
    """
    width = weight.shape[-1]
    if seq_idx is None or (_one_document_per_row(seq_idx) and bool((seq_idx >= 0).all())):
        out = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), weight.unsqueeze(1), bias,
                       groups=weight.shape[0])
        return out.transpose(1, 2)
    windows = F.pad(x, (0, 0, width - 1, 0)).unfold(1, width, 1)  # (b, t, d, k)
    window_docs = F.pad(seq_idx, (width - 1, 0), value=-1).unfold(1, width, 1)  # (b, t, k)
    same_doc = (window_docs == seq_idx.unsqueeze(-1)).unsqueeze(2)
    out = (windows * same_doc * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return out.masked_fill(seq_idx.unsqueeze(-1) < 0, 0.0)


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective SSM h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, chunk by chunk.

    Inside a chunk, y_t = sum_{s<=t} (C_t . B_s) exp(dt_{s+1} A + ... + dt_t A) dt_s x_s,
    the decays taken as differences of the chunk's running sums of dt A (as the
    kernel does; they stay short, so float32 keeps them); the state entering a
    chunk follows the recurrence over chunks. A change of `seq_idx` cuts all these
    paths, so no state crosses a document boundary; `initial_states` belong to
    document 0, as in the kernel. `seq_idx` must be non-decreasing along each row
    (packing), negative only as trailing padding; None (or one document in every
    row) skips the document masks.

    x: (batch, seqlen, nheads, headdim); dt: (batch, seqlen, nheads), already
    discretised; A: (nheads,); B, C: (batch, seqlen, ngroups, dstate), consecutive
    heads sharing a group; seq_idx: (batch, seqlen) int or None; initial_states:
    (batch, nheads, headdim, dstate) or None for zeros. Returns y (batch, seqlen,
    nheads, headdim) and the final states (batch, nheads, headdim, dstate).
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2:]
    # One document per row needs no masks, unless an initial state (document 0's)
    # must be kept from rows of another document.
    if seq_idx is not None and _one_document_per_row(seq_idx) and (
            initial_states is None or not seq_idx.any()):
        seq_idx = None

    # Padded steps have dt = 0, so they neither decay nor feed the state.
    pad = -seqlen % chunk_size
    x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dt = F.pad(dt, (0, 0, 0, pad))
    # Head-major chunks, so every product below is a batched matmul without copies;
    # dt scales each input once here instead of every score and state term.
    x_dt = rearrange(x * dt[..., None], "b (c l) h p -> b h c l p", l=chunk_size).contiguous()
    B, C = (rearrange(t, "b (c l) g n -> b g c l n", l=chunk_size).contiguous() for t in (B, C))
    dA_cumsum = rearrange(dt * A, "b (c l) h -> b h c l", l=chunk_size).cumsum(-1)
    masks = None if seq_idx is None else _DocumentMasks.of(seq_idx, pad, chunk_size)

    def per_group(t):  # (b, h, ...) -> (b, g, k, ...): k heads share a group's B and C
        return t.unflatten(1, (ngroups, nheads // ngroups))

    # 1. Within each chunk: the quadratic, attention-like form, C.B^T once per group.
    decay = _decay_within_chunks(dA_cumsum)  # (b, h, c, l, s)
    if masks is not None:
        decay = decay * masks.same_doc[:, None]
    scores = (C @ B.transpose(-1, -2)).unsqueeze(2) * per_group(decay)  # (b, g, k, c, l, s)
    y = scores @ per_group(x_dt)  # (b, g, k, c, l, p)

    # 2. Each chunk's contribution to the state at its end: each step decayed to the
    # chunk's end (with documents: only the chunk's last document). Computed apart
    # from decay's last row, whose slice would cost decay's backward a full zero tensor.
    to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)  # (b, h, c, s)
    if masks is not None:
        to_end = to_end * masks.same_doc[:, None, :, -1]
    weighted = per_group(x_dt * to_end[..., None])
    chunk_states = torch.einsum("bgkcsp,bgcsn->bgkcpn", weighted, B).flatten(1, 2)

    # 3. Between chunks: the state entering chunk i+1 is chunk i's decayed through
    # it plus chunk i's contribution (with documents: reset where a chunk ends in
    # another document than it began).
    chunk_decay = torch.exp(dA_cumsum[..., -1])  # (b, h, c)
    if masks is not None:
        chunk_decay = chunk_decay * masks.same_doc_across_chunk[:, None]
    state = x.new_zeros(batch, nheads, headdim, dstate) if initial_states is None else initial_states
    entering = []
    # unbind, not indexing: its backward stacks the slices' gradients once, where
    # each index's backward would fill a whole zero tensor.
    for decay_i, added_i in zip(chunk_decay[..., None, None].unbind(2), chunk_states.unbind(2)):
        entering.append(state)
        state = decay_i * state + added_i
    entering_states = torch.stack(entering, dim=2)  # (b, h, c, p, n)

    # 4. The state entering a chunk reaches the chunk's tokens (of its document).
    from_start = torch.exp(dA_cumsum)  # (b, h, c, l)
    if masks is not None:
        from_start = from_start * masks.same_state_doc[:, None]
    y_state = torch.einsum("bgcln,bgkcpn->bgkclp", C, per_group(entering_states))
    y = y + y_state * per_group(from_start)[..., None]
    return rearrange(y, "b g k c l p -> b (c l) (g k) p")[:, :seqlen], state


def _decay_within_chunks(dA_cumsum: torch.Tensor) -> torch.Tensor:
    """exp(dA_cumsum[l] - dA_cumsum[s]) for s <= l and 0 above the diagonal: the decay from
    step s to step l of a chunk. (..., l) -> (..., l, l)."""
    length = dA_cumsum.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=dA_cumsum.device).tril()
    # -inf before exp: the differences above the diagonal are positive and may overflow.
    exponent = dA_cumsum[..., :, None] - dA_cumsum[..., None, :]
    return torch.exp(exponent.masked_fill(~causal, float("-inf")))


def _one_document_per_row(seq_idx: torch.Tensor) -> bool:
    return bool((seq_idx == seq_idx[:, :1]).all())


@dataclass(frozen=True)
class _DocumentMasks:
    """Which scan paths stay inside one document (`seq_idx` chunked into (b, c, l))."""

    same_doc: torch.Tensor
    """(b, c, l, s): steps l and s of a chunk are in one document."""
    same_doc_across_chunk: torch.Tensor
    """(b, c): chunk c ends in the document of the state entering it."""
    same_state_doc: torch.Tensor
    """(b, c, l): step l is in the document of the state entering its chunk."""

    @staticmethod
    def of(seq_idx: torch.Tensor, pad: int, chunk_size: int) -> "_DocumentMasks":
        # Padded steps repeat the last document id, so each chunk ends in its last
        # real token's document.
        seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, pad)], dim=1)
        doc = rearrange(seq_idx, "b (c l) -> b c l", l=chunk_size)
        # The document at each chunk boundary: 0 (the initial state's) at the start,
        # then each chunk's last token's.
        boundary_doc = F.pad(doc[:, :, -1], (1, 0), value=0)  # (b, c+1)
        return _DocumentMasks(
            same_doc=doc[:, :, :, None] == doc[:, :, None, :],
            same_doc_across_chunk=boundary_doc[:, 1:] == boundary_doc[:, :-1],
            same_state_doc=doc == boundary_doc[:, :-1, None],
        )


def gated_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    """RMSNorm over consecutive groups of `group_size` channels, optionally gated by silu(z).

    norm_before_gate=True gives rmsnorm(x) * silu(z); False gives rmsnorm(x * silu(z)).
    group_size=None means one group over the whole last dimension. Computes in
    float32 (float64 for float64 input) and returns x's dtype.

    x, z: (..., hidden); weight: (hidden,).
    """
    dtype = x.dtype
    compute_dtype = torch.promote_types(dtype, torch.float32)
    x = x.to(compute_dtype)
    gate = F.silu(z.to(compute_dtype)) if z is not None else None
    if gate is not None and not norm_before_gate:
        x = x * gate
    groups = x.unflatten(-1, (-1, group_size or x.shape[-1]))
    normed = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + eps)
    out = normed.flatten(-2) * weight.to(compute_dtype)
    if gate is not None and norm_before_gate:
        out = out * gate
    return out.to(dtype)


class GatedRMSNorm(torch.nn.Module):
    """Drop-in for Megatron-Core's `ExtendedRMSNorm` (mamba_ssm's gated RMSNorm) on any device.

    Same constructor, parameters (`weight`, and `bias` registered as None) and
    state-dict keys, so checkpoints load whichever backend built the model.
    `MambaMixer` sets `tp_group` after construction.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the weight to ones."""
        torch.nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """rmsnorm(x) * silu(z) if norm_before_gate, else rmsnorm(x * silu(z)).

        x, z: (..., hidden). Returns x's dtype.
        """
        return gated_rms_norm(x, self.weight, z, self.eps, self.group_size, self.norm_before_gate)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """The weight, sharded along axis 0 over the tensor-parallel group as in ExtendedRMSNorm."""
        if not hasattr(self, "tp_group"):
            self.tp_group = parallel_state.get_tensor_model_parallel_group()
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True),
            prefix,
            {"weight": 0},
            sharded_offsets,
            tp_group=self.tp_group,
            dp_cp_group=metadata["dp_cp_group"],
        )


def mamba_split_conv1d_scan_combined(
    zxbcdt: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    activation: str | None = "silu",
    rmsnorm_weight: torch.Tensor | None = None,
    rmsnorm_eps: float = 1e-6,
    outproj_weight: torch.Tensor | None = None,
    outproj_bias: torch.Tensor | None = None,
    headdim: int | None = None,
    ngroups: int = 1,
    norm_before_gate: bool = True,
    state_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's mixer core, from the in-projection's output to the gated SSM output.

    Same signature and semantics as `mamba_ssm.ops.triton.ssd_combined.
    mamba_split_conv1d_scan_combined`:
      1. split zxbcdt into [zx0 | z | xBC | dt] (zx0, of width 2 * d_nonssm, is
         usually empty);
      2. xBC = silu(causal depthwise conv(xBC)), reset at document boundaries;
         split into x, B, C;
      3. dt = clamp(softplus(dt + dt_bias), *dt_limit);
      4. y = SSD scan(x, dt, A, B, C) + D * x;
      5. y * silu(z), or the grouped gated RMSNorm of y and z (group size
         dim / ngroups) when rmsnorm_weight is given;
      6. prepend silu(zx0[:d_nonssm]) * zx0[d_nonssm:] if d_nonssm > 0, then
         apply the optional output projection.
    Everything up to the projection runs in float32 (float64 for float64 input)
    whatever autocast says, like the kernel; the output has zxbcdt's dtype and the
    final states float32. `state_dtype` is accepted for signature compatibility:
    the kernel may store inter-chunk states in lower precision, here they stay float32.

    zxbcdt: (batch, seqlen, 2 * d_nonssm + 2 * dim + 2 * ngroups * dstate + nheads),
    dim = nheads * headdim; conv1d_weight: (dim + 2 * ngroups * dstate, width);
    conv1d_bias: (dim + 2 * ngroups * dstate,) or None; dt_bias, A: (nheads,);
    D: (nheads,) with `headdim` given, or (nheads, headdim); initial_states: (batch,
    nheads, headdim, dstate); seq_idx: (batch, seqlen) int, non-decreasing document
    ids, negative for padding, or None for one document per row; rmsnorm_weight:
    (dim,); outproj_weight: (out_dim, d_nonssm + dim); outproj_bias: (out_dim,).
    Returns out (batch, seqlen, out_dim or d_nonssm + dim), and the final states
    (batch, nheads, headdim, dstate) if return_final_states.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation={activation!r}: expected None, 'silu' or 'swish'")
    if D.dim() == 1:
        if headdim is None:
            raise ValueError("headdim is required when D has one value per head")
        nheads = D.shape[0]
    else:
        nheads, headdim = D.shape
    if nheads % ngroups:
        raise ValueError(f"ngroups={ngroups} must divide nheads={nheads}")
    if outproj_weight is None and outproj_bias is not None:
        raise ValueError("outproj_bias given without outproj_weight")
    dim = nheads * headdim
    dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
    ssm_width = 2 * dim + 2 * ngroups * dstate + nheads
    d_nonssm = (zxbcdt.shape[-1] - ssm_width) // 2
    if d_nonssm < 0 or zxbcdt.shape[-1] != 2 * d_nonssm + ssm_width:
        raise ValueError(
            f"zxbcdt's last dimension is {zxbcdt.shape[-1]}; with nheads={nheads}, "
            f"headdim={headdim}, ngroups={ngroups}, dstate={dstate} it must be "
            f"{ssm_width} plus an even number of extra columns"
        )
    compute_dtype = torch.promote_types(zxbcdt.dtype, torch.float32)
    # The Triton kernel ignores autocast; so must the scan, or its einsums would run in bf16.
    with torch.autocast(zxbcdt.device.type, enabled=False):
        zx0, z, xBC, dt = torch.split(
            zxbcdt.to(compute_dtype),
            [2 * d_nonssm, dim, dim + 2 * ngroups * dstate, nheads],
            dim=-1,
        )
        conv_bias = conv1d_bias.to(compute_dtype) if conv1d_bias is not None else None
        xBC = causal_depthwise_conv1d(xBC, conv1d_weight.to(compute_dtype), conv_bias, seq_idx)
        if activation is not None:
            xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
        x = rearrange(x, "b l (h p) -> b l h p", p=headdim)
        dt = F.softplus(dt + dt_bias.to(compute_dtype)).clamp(*dt_limit)
        y, final_states = ssd_chunked_scan(
            x,
            dt,
            A.to(compute_dtype),
            rearrange(B, "b l (g n) -> b l g n", g=ngroups),
            rearrange(C, "b l (g n) -> b l g n", g=ngroups),
            chunk_size,
            seq_idx,
            initial_states.to(compute_dtype) if initial_states is not None else None,
        )
        D = D.to(compute_dtype)
        y = y + x * (D if D.dim() == 2 else D[:, None])
        y = rearrange(y, "b l h p -> b l (h p)")
        if rmsnorm_weight is None:
            y = y * F.silu(z)
        else:
            y = gated_rms_norm(y, rmsnorm_weight, z, rmsnorm_eps, dim // ngroups, norm_before_gate)
        if d_nonssm > 0:
            gate, value = zx0.chunk(2, dim=-1)
            y = torch.cat([F.silu(gate) * value, y], dim=-1)
        out = y.to(zxbcdt.dtype)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    return (out, final_states) if return_final_states else out
