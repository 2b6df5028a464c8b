"""The pure-PyTorch Mamba-2 kernel against a step-by-step recurrence oracle."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nemotron_train.runtime.ssd_scan import (
    GatedRMSNorm,
    mamba_split_conv1d_scan_combined,
    ssd_chunked_scan,
)

TOLERANCE = 1e-5
DIFFERENTIABLE = ["zxbcdt", "conv1d_weight", "conv1d_bias", "dt_bias", "A", "D"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest expected magnitude."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def make_inputs(
    batch=2,
    seqlen=37,
    nheads=4,
    headdim=3,
    ngroups=2,
    dstate=5,
    width=4,
    d_nonssm=0,
    per_channel_D=False,
    dtype=torch.float32,
):
    """Random kernel arguments, with decays slow enough that state crosses several chunks."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).mul(scale).to(dtype)

    def uniform(low, high, *shape):
        unit = torch.rand(*shape, generator=generator, dtype=torch.float64)
        return (low + (high - low) * unit).to(dtype)

    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    dt_init = uniform(0.02, 0.3, nheads)
    return dict(
        zxbcdt=randn(batch, seqlen, 2 * d_nonssm + dim + conv_dim + nheads),
        conv1d_weight=randn(conv_dim, width, scale=0.5),
        conv1d_bias=randn(conv_dim, scale=0.1),
        dt_bias=dt_init + torch.log(-torch.expm1(-dt_init)),  # inverse softplus
        A=-uniform(0.2, 2.0, nheads),
        D=randn(nheads, headdim) if per_channel_D else randn(nheads),
        headdim=None if per_channel_D else headdim,
        ngroups=ngroups,
    )


def documents(lengths_per_row):
    """seq_idx for rows of packed document lengths, e.g. [[5, 3], [8]]."""
    rows = [sum(([doc] * n for doc, n in enumerate(lengths)), []) for lengths in lengths_per_row]
    return torch.tensor(rows)


def reference_conv(xBC, weight, bias, seq_idx):
    """Causal depthwise conv, one step and one tap at a time; taps stop at document starts."""
    width = weight.shape[1]
    steps = []
    for t in range(xBC.shape[1]):
        acc = bias.expand(xBC.shape[0], -1)
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                same_doc = (seq_idx[:, source] == seq_idx[:, t]).unsqueeze(-1)
                acc = acc + same_doc * weight[:, k] * xBC[:, source]
        steps.append(torch.where((seq_idx[:, t] < 0).unsqueeze(-1), 0.0, acc))
    return torch.stack(steps, dim=1)


def reference_recurrence(x, dt, A, B, C, D, seq_idx, initial_states):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, one step at a time.

    The state restarts at zero whenever seq_idx changes; the initial state is document 0's.
    """
    nheads = x.shape[2]
    heads_per_group = nheads // B.shape[2]
    h = initial_states
    previous_doc = torch.zeros_like(seq_idx[:, 0])
    ys = []
    for t in range(x.shape[1]):
        new_doc = seq_idx[:, t] != previous_doc
        previous_doc = seq_idx[:, t]
        h = torch.where(new_doc[:, None, None, None], 0.0, h)
        B_t = B[:, t].repeat_interleave(heads_per_group, dim=1)  # (b, h, n)
        C_t = C[:, t].repeat_interleave(heads_per_group, dim=1)
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + dt[:, t, :, None, None] * x[:, t, :, :, None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t) + D * x[:, t])
    return torch.stack(ys, dim=1), h


def reference_gated_norm(y, z, weight, eps, ngroups, norm_before_gate):
    """Gated RMSNorm, one channel group at a time."""
    group_size = y.shape[-1] // ngroups
    outs = []
    for g in range(ngroups):
        channels = slice(g * group_size, (g + 1) * group_size)
        v, gate = y[..., channels], F.silu(z[..., channels])
        if not norm_before_gate:
            v = v * gate
        v = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * weight[channels]
        outs.append(v * gate if norm_before_gate else v)
    return torch.cat(outs, dim=-1)


def reference_forward(
    zxbcdt,
    conv1d_weight,
    conv1d_bias,
    dt_bias,
    A,
    D,
    headdim,
    ngroups,
    seq_idx=None,
    initial_states=None,
    dt_limit=(0.0, math.inf),
    rmsnorm_weight=None,
    rmsnorm_eps=1e-6,
    norm_before_gate=True,
):
    """The whole fused kernel in float64, from the formulas (no extra d_nonssm columns)."""
    zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D = (
        t.double() for t in (zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D)
    )
    batch, seqlen, _ = zxbcdt.shape
    nheads = A.shape[0]
    headdim = headdim or D.shape[1]
    dim = nheads * headdim
    dstate = (conv1d_weight.shape[0] - dim) // (2 * ngroups)
    if seq_idx is None:
        seq_idx = torch.zeros(batch, seqlen, dtype=torch.long)
    if initial_states is None:
        initial_states = torch.zeros(batch, nheads, headdim, dstate)
    z, xBC, dt = zxbcdt.split([dim, conv1d_weight.shape[0], nheads], dim=-1)
    xBC = F.silu(reference_conv(xBC, conv1d_weight, conv1d_bias, seq_idx))
    x, B, C = xBC.split([dim, ngroups * dstate, ngroups * dstate], dim=-1)
    x = x.reshape(batch, seqlen, nheads, headdim)
    B = B.reshape(batch, seqlen, ngroups, dstate)
    C = C.reshape(batch, seqlen, ngroups, dstate)
    dt = F.softplus(dt + dt_bias).clamp(*dt_limit)
    D = D if D.dim() == 2 else D[:, None]
    y, final_states = reference_recurrence(x, dt, A, B, C, D, seq_idx, initial_states.double())
    y = y.reshape(batch, seqlen, dim)
    if rmsnorm_weight is None:
        return y * F.silu(z), final_states
    weight = rmsnorm_weight.double()
    return reference_gated_norm(y, z, weight, rmsnorm_eps, ngroups, norm_before_gate), final_states


CASES = {
    "chunk4_g1": dict(chunk_size=4, inputs=dict(seqlen=37, nheads=3, ngroups=1)),
    "chunk8_g2": dict(chunk_size=8, inputs=dict(seqlen=37, nheads=4, ngroups=2)),
    "chunk16_g2_3heads_per_group": dict(chunk_size=16, inputs=dict(seqlen=45, nheads=6)),
    "divisible_seqlen": dict(chunk_size=8, inputs=dict(seqlen=32)),
    "shorter_than_chunk": dict(chunk_size=16, inputs=dict(seqlen=11, nheads=2, ngroups=1)),
    "per_channel_D": dict(chunk_size=8, inputs=dict(seqlen=29, per_channel_D=True)),
    "rmsnorm_before_gate": dict(chunk_size=8, rmsnorm=True, norm_before_gate=True),
    "rmsnorm_after_gate": dict(chunk_size=8, rmsnorm=True, norm_before_gate=False),
    "initial_states": dict(chunk_size=8, initial_states=True),
    "dt_limit": dict(chunk_size=8, dt_limit=(0.05, 0.15)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_recurrence(case):
    inputs = make_inputs(**case.get("inputs", {}))
    nheads = inputs["A"].shape[0]
    headdim = inputs["headdim"] or inputs["D"].shape[1]
    options = dict(
        dt_limit=case.get("dt_limit", (0.0, math.inf)),
        initial_states=torch.randn(2, nheads, headdim, 5) if case.get("initial_states") else None,
        rmsnorm_weight=torch.rand(nheads * headdim) + 0.5 if case.get("rmsnorm") else None,
        norm_before_gate=case.get("norm_before_gate", True),
    )

    out, final_states = mamba_split_conv1d_scan_combined(
        **inputs, chunk_size=case["chunk_size"], return_final_states=True, **options
    )
    expected, expected_final_states = reference_forward(**inputs, **options)

    assert out.dtype == torch.float32
    assert relative_error(out, expected) < TOLERANCE
    assert relative_error(final_states, expected_final_states) < TOLERANCE


@pytest.mark.parametrize("chunk_size", [4, 8])
def test_documents_reset_state_and_conv(chunk_size):
    # Boundaries mid-chunk and on a chunk edge, a document shorter than the conv
    # width, and padding (seq_idx -1) after the last document. Row 1 starts at
    # document 1, so, as in the kernel, the initial state (document 0's) is dropped.
    seq_idx = documents([[5, 3, 2, 9, 11, 1], [8, 8, 9, 6]])
    seq_idx[1] += 1
    seq_idx[1, -4:] = -1
    inputs = make_inputs(seqlen=31)
    initial_states = torch.randn(2, 4, 3, 5)

    out, final_states = mamba_split_conv1d_scan_combined(
        **inputs,
        chunk_size=chunk_size,
        seq_idx=seq_idx.int(),
        initial_states=initial_states,
        return_final_states=True,
    )
    expected, expected_final_states = reference_forward(
        **inputs, seq_idx=seq_idx, initial_states=initial_states
    )

    assert relative_error(out, expected) < TOLERANCE
    assert relative_error(final_states, expected_final_states) < TOLERANCE
    assert out[1, -4:].abs().max() == 0


@pytest.mark.parametrize(
    "row_docs, keeps_initial_state",
    [(0, True), (1, False), (-1, False)],
    ids=["document_0", "document_1", "padding"],
)
def test_rows_of_one_document(row_docs, keeps_initial_state):
    # One document per row skips the masks, except where they still matter: the
    # initial state belongs to document 0 only, and padding (-1) outputs zero.
    inputs = make_inputs(seqlen=29)
    seq_idx = torch.full((2, 29), row_docs)
    initial_states = torch.randn(2, 4, 3, 5)
    out, final_states = mamba_split_conv1d_scan_combined(
        **inputs, chunk_size=8, seq_idx=seq_idx.int(), initial_states=initial_states,
        return_final_states=True,
    )
    expected, expected_final_states = reference_forward(
        **inputs, seq_idx=seq_idx, initial_states=initial_states
    )
    if row_docs < 0:
        assert out.abs().max() == 0 and final_states.abs().max() == 0
        assert expected.abs().max() == 0 and expected_final_states.abs().max() == 0
        return
    assert relative_error(out, expected) < TOLERANCE
    assert relative_error(final_states, expected_final_states) < TOLERANCE
    without_initial, _ = reference_forward(**inputs, seq_idx=seq_idx)
    assert (relative_error(out, without_initial) < TOLERANCE) != keeps_initial_state


def test_many_chunks_without_documents_match_recurrence_with_gradients():
    # 38 chunks of 8: the inter-chunk recurrence and its backward, no document masks.
    inputs = make_inputs(batch=1, seqlen=300, nheads=4, ngroups=1, dtype=torch.float64)
    initial_states = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    leaves = [inputs[name].detach().requires_grad_() for name in DIFFERENTIABLE]
    leaves64 = [inputs[name].detach().clone().requires_grad_() for name in DIFFERENTIABLE]
    grad_out = torch.randn(1, 300, 12, dtype=torch.float64)
    out, final_states = mamba_split_conv1d_scan_combined(
        **{**inputs, **dict(zip(DIFFERENTIABLE, leaves))}, chunk_size=8,
        initial_states=initial_states, return_final_states=True,
    )
    expected, expected_final_states = reference_forward(
        **{**inputs, **dict(zip(DIFFERENTIABLE, leaves64))}, initial_states=initial_states
    )
    assert relative_error(out, expected) < 1e-10
    assert relative_error(final_states, expected_final_states) < 1e-10
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, leaves64, grad_out)
    for name, grad, expected_grad in zip(DIFFERENTIABLE, grads, expected_grads):
        assert relative_error(grad, expected_grad) < 1e-10, name


def test_packed_documents_match_separate_runs():
    inputs = make_inputs(batch=1, seqlen=23)
    zxbcdt = inputs.pop("zxbcdt")
    seq_idx = documents([[14, 9]]).int()
    packed = mamba_split_conv1d_scan_combined(zxbcdt, **inputs, chunk_size=8, seq_idx=seq_idx)
    first = mamba_split_conv1d_scan_combined(zxbcdt[:, :14], **inputs, chunk_size=8)
    second = mamba_split_conv1d_scan_combined(zxbcdt[:, 14:], **inputs, chunk_size=8)
    assert relative_error(packed, torch.cat([first, second], dim=1)) < TOLERANCE


def test_returns_output_only_without_final_states():
    out = mamba_split_conv1d_scan_combined(**make_inputs(), chunk_size=8)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 37, 12)


def test_extra_mlp_columns_and_out_projection():
    """Leading d_nonssm column pairs give silu(gate) * value ahead of the SSM output."""
    d_nonssm = 6
    inputs = make_inputs(d_nonssm=d_nonssm)
    outproj_weight, outproj_bias = torch.randn(7, d_nonssm + 12), torch.randn(7)
    out = mamba_split_conv1d_scan_combined(
        **inputs, chunk_size=8, outproj_weight=outproj_weight, outproj_bias=outproj_bias
    )

    zxbcdt = inputs["zxbcdt"].double()
    gate, value, ssm_columns = zxbcdt.split([d_nonssm, d_nonssm, 48], dim=-1)
    ssm_out, _ = reference_forward(**{**inputs, "zxbcdt": ssm_columns})
    mixed = torch.cat([F.silu(gate) * value, ssm_out], dim=-1)
    expected = F.linear(mixed, outproj_weight.double(), outproj_bias.double())
    assert relative_error(out, expected) < TOLERANCE


def test_bfloat16_in_bfloat16_out_computed_in_float32():
    inputs = {
        k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in make_inputs().items()
    }
    out, final_states = mamba_split_conv1d_scan_combined(
        **inputs, chunk_size=8, return_final_states=True
    )
    inputs = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    expected = mamba_split_conv1d_scan_combined(**inputs, chunk_size=8)
    assert out.dtype == torch.bfloat16 and final_states.dtype == torch.float32
    assert torch.equal(out, expected.bfloat16())


def test_autocast_does_not_lower_scan_precision():
    inputs = make_inputs()
    expected = mamba_split_conv1d_scan_combined(**inputs, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mamba_split_conv1d_scan_combined(**inputs, chunk_size=8)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_missing_headdim_raises():
    inputs = {**make_inputs(), "headdim": None}
    with pytest.raises(ValueError, match="headdim"):
        mamba_split_conv1d_scan_combined(**inputs, chunk_size=8)


@pytest.mark.parametrize("with_documents", [True, False], ids=["documents", "one_document"])
def test_gradcheck(with_documents):
    sizes = dict(batch=1, seqlen=7, nheads=2, headdim=2, ngroups=2, dstate=2, width=3)
    inputs = make_inputs(**sizes, per_channel_D=True, dtype=torch.float64)
    seq_idx = documents([[5, 2]]) if with_documents else None
    initial_states = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    rmsnorm_weight = torch.rand(4, dtype=torch.float64) + 0.5
    leaves = [inputs[name] for name in DIFFERENTIABLE] + [initial_states, rmsnorm_weight]
    leaves = [t.detach().requires_grad_() for t in leaves]

    def function(*tensors):
        return mamba_split_conv1d_scan_combined(
            **{**inputs, **dict(zip(DIFFERENTIABLE, tensors))},
            chunk_size=4,
            seq_idx=seq_idx,
            initial_states=tensors[-2],
            rmsnorm_weight=tensors[-1],
            norm_before_gate=False,
            return_final_states=True,
        )

    assert torch.autograd.gradcheck(function, leaves)


def test_gradients_match_recurrence():
    inputs = make_inputs(seqlen=21)
    seq_idx = documents([[9, 12], [21]])
    leaves = [inputs[name].detach().requires_grad_() for name in DIFFERENTIABLE]
    leaves64 = [inputs[name].double().requires_grad_() for name in DIFFERENTIABLE]
    grad_out = torch.randn(2, 21, 12, dtype=torch.float64)

    out = mamba_split_conv1d_scan_combined(
        **{**inputs, **dict(zip(DIFFERENTIABLE, leaves))}, chunk_size=8, seq_idx=seq_idx
    )
    expected, _ = reference_forward(
        **{**inputs, **dict(zip(DIFFERENTIABLE, leaves64))}, seq_idx=seq_idx
    )
    grads = torch.autograd.grad(out, leaves, grad_out.float())
    expected_grads = torch.autograd.grad(expected, leaves64, grad_out)

    for name, grad, expected_grad in zip(DIFFERENTIABLE, grads, expected_grads):
        assert relative_error(grad, expected_grad) < 1e-4, name


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("group_size", [None, 4])
def test_gated_rms_norm_matches_formula(norm_before_gate, group_size):
    norm = GatedRMSNorm(12, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    weight = norm.weight.double()
    x, z = torch.randn(3, 2, 12), torch.randn(3, 2, 12)
    ngroups = 12 // (group_size or 12)

    expected = reference_gated_norm(x.double(), z.double(), weight, 1e-5, ngroups, norm_before_gate)
    assert relative_error(norm(x, z), expected) < TOLERANCE

    groups = x.double().unflatten(-1, (ngroups, -1))
    ungated = groups / groups.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    assert relative_error(norm(x), ungated.flatten(-2) * weight) < TOLERANCE


def test_gated_rms_norm_parameters_and_dtype():
    norm = GatedRMSNorm(8, group_size=4, norm_before_gate=False, dtype=torch.float32)
    assert norm.bias is None and list(norm.state_dict()) == ["weight"]
    assert torch.equal(norm.weight, torch.ones(8))
    assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_gated_rms_norm_sharded_state_dict(single_process):
    norm = GatedRMSNorm(8, group_size=4)
    norm.tp_group = torch.distributed.group.WORLD
    metadata = {"dp_cp_group": torch.distributed.group.WORLD}
    sharded = norm.sharded_state_dict(prefix="mixer.norm.", metadata=metadata)
    assert list(sharded) == ["mixer.norm.weight"]
    tensor = sharded["mixer.norm.weight"]
    assert tensor.key == "mixer.norm.weight"
    assert tensor.data is norm.weight and tensor.global_shape == (8,)


MAMBA_SOURCE = Path(os.environ.get("NEMOTRON_MAMBA_SRC", ".cache/mamba"))


# An extra oracle where mamba's source tree was fetched (benchmarks/reference_sources.py);
# never committed, so CI's oracle is the masked dense reference above.
@pytest.mark.reference(MAMBA_SOURCE / "mamba_ssm")
@pytest.mark.parametrize("ngroups", [1, 4])
def test_scan_matches_mambas_minimal_reference(ngroups):
    # ssd_minimal_discrete (the paper's Listing 1) takes x·dt, A·dt and per-head B, C;
    # float64, so the two chunked formulations agree to round-off.
    from benchmarks.reference_sources import load_mamba_ssd_minimal

    minimal = load_mamba_ssd_minimal(MAMBA_SOURCE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 96, 4, 8, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(2, 96, 4, generator=g, dtype=torch.float64) - 2)
    A = -torch.rand(4, generator=g, dtype=torch.float64) - 0.2
    B, C = (torch.randn(2, 96, ngroups, 6, generator=g, dtype=torch.float64) for _ in range(2))
    initial_states = torch.randn(2, 4, 8, 6, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, initial_states)]
    y, final_states = ssd_chunked_scan(*leaves[:5], 16, initial_states=leaves[5])
    x_, dt_, A_, B_, C_, h0 = (t.clone().requires_grad_() for t in (x, dt, A, B, C, initial_states))
    per_head = [t.repeat_interleave(4 // ngroups, dim=2) for t in (B_, C_)]
    y_ref, final_ref = minimal.ssd_minimal_discrete(
        x_ * dt_[..., None], A_ * dt_, *per_head, 16, initial_states=h0[:, None])
    assert relative_error(y, y_ref) < 1e-12
    assert relative_error(final_states, final_ref) < 1e-12
    grad_y, grad_h = torch.randn_like(y), torch.randn_like(final_states)
    ours = torch.autograd.grad([y, final_states], leaves, [grad_y, grad_h])
    theirs = torch.autograd.grad([y_ref, final_ref], [x_, dt_, A_, B_, C_, h0], [grad_y, grad_h])
    for name, a, b in zip(["x", "dt", "A", "B", "C", "initial_states"], ours, theirs):
        assert relative_error(a, b) < 1e-12, name


@pytest.mark.gpu
@pytest.mark.imports("mamba_ssm")
def test_matches_mamba_ssm_kernel():
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined as kernel

    inputs = make_inputs(batch=2, seqlen=300, nheads=8, headdim=16, ngroups=2, dstate=16)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    options = dict(
        chunk_size=64,
        seq_idx=documents([[100, 37, 163], [300]]).int().cuda(),
        initial_states=torch.randn(2, 8, 16, 16, device="cuda"),
        rmsnorm_weight=torch.rand(128, device="cuda") + 0.5,
        norm_before_gate=False,
        return_final_states=True,
    )
    results = []
    for function in (mamba_split_conv1d_scan_combined, kernel):
        leaves = [inputs[name].detach().clone().requires_grad_() for name in DIFFERENTIABLE]
        out, final_states = function(**{**inputs, **dict(zip(DIFFERENTIABLE, leaves))}, **options)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append([out, final_states, *grads])
    # Triton's tl.dot multiplies float32 in TF32.
    for ours, theirs in zip(*results):
        assert relative_error(ours, theirs) < 1e-2


@pytest.mark.gpu
def test_cuda_matches_the_cpu_result():
    """The same scan, forward and backward, on CUDA and on CPU (float32, TF32 off by default)."""
    inputs = make_inputs(batch=2, seqlen=300, nheads=8, headdim=16, ngroups=2, dstate=16)
    options = dict(chunk_size=64, seq_idx=documents([[100, 37, 163], [300]]).int(),
                   initial_states=torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(3)),
                   rmsnorm_weight=torch.linspace(0.5, 1.5, 128), norm_before_gate=False,
                   return_final_states=True)
    results = []
    for device in ("cpu", "cuda"):
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in {**inputs, **options}.items()}
        leaves = [moved[name].detach().clone().requires_grad_() for name in DIFFERENTIABLE]
        out, final_states = mamba_split_conv1d_scan_combined(**{**moved, **dict(zip(DIFFERENTIABLE, leaves))})
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        results.append([t.cpu() for t in (out, final_states, *grads)])
    for on_cpu, on_cuda in zip(*results):
        assert relative_error(on_cuda, on_cpu) < 1e-5
