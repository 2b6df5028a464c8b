"""Parameters of a hybrid model, counted from Megatron-Core's own modules.

`count_parameters` builds one layer of each type in the pattern, the embedding, final norm,
output layer and MTP block at full width on the meta device (no memory), and the pattern's
layer counts multiply the per-layer numbers. Everything after that is arithmetic on those
counts; each formula is written out where it is computed.

How a parallel layout shards parameters (Megatron-Core's rules, read from the modules):
tensor parallelism (TP) splits every parameter marked `tensor_model_parallel` (attention
and Mamba matrices, Mamba's per-head vectors, shared-expert and dense-MLP matrices, the
vocabulary); routed experts are split across expert parallelism x expert tensor
parallelism (EP x ETP); norms, the router and the LatentMoE projections are replicated.
Pipeline parallelism (PP) gives each stage its layers, the first stage the embedding and
the last the final norm, output layer and MTP block.
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

import torch

from nemotron_train.model.config import HybridModelConfig
from nemotron_train.model.pattern import LAYER_SYMBOLS


@dataclass(frozen=True)
class ParamSplit:
    """Parameters of some modules, split by how a parallel layout shards them."""

    tensor_parallel: int = 0
    """Split across TP ranks (marked `tensor_model_parallel` by Megatron-Core)."""
    expert: int = 0
    """Routed-expert weights, split across EP x ETP ranks."""
    replicated: int = 0
    """On every rank of the model-parallel group: norms, router, LatentMoE projections."""
    matmul: int = 0
    """The 2-D weights a token is multiplied by (routed experts included, embedding excluded)."""

    @property
    def total(self) -> int:
        return self.tensor_parallel + self.expert + self.replicated

    def __add__(self, other: "ParamSplit") -> "ParamSplit":
        return ParamSplit(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})

    def __mul__(self, count: int) -> "ParamSplit":
        return ParamSplit(**{f.name: getattr(self, f.name) * count for f in dataclasses.fields(self)})

    def active(self, expert_fraction: float) -> float:
        """Parameters one token uses: all but the routed experts it is not sent to."""
        return self.total - self.expert * (1.0 - expert_fraction)

    def active_matmul(self, expert_fraction: float) -> float:
        """Matrix parameters one token is multiplied by (routed experts hold only matrices)."""
        return self.matmul - self.expert * (1.0 - expert_fraction)


@dataclass(frozen=True)
class MambaShape:
    """The SSD shape of one MambaMixer, read from the built module."""

    heads: int
    head_dim: int
    state_dim: int
    groups: int
    conv_kernel: int
    chunk_size: int

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        """x, B and C go through the causal conv."""
        return self.inner + 2 * self.groups * self.state_dim


@dataclass(frozen=True)
class ModuleCounts:
    """Parameter splits of one layer of each type and of every other module of the model."""

    layers: dict
    """Layer type ("mamba", "moe", "attention", "mlp") -> ParamSplit of one main-stack layer."""
    embedding: ParamSplit
    final_norm: ParamSplit
    output_layer: ParamSplit
    mtp_depth: Optional[ParamSplit]
    """One MTP depth (norms, projection, its layers), or None without MTP."""
    mtp_layers: tuple
    """(layer type, ParamSplit) of the layers inside one MTP depth, in order."""
    mtp_stored_depths: int
    """MTP depth modules with their own weights: 1 when the depths share one block."""
    mamba: Optional[MambaShape]
    linear_weights: dict
    """Name pattern of each module holding a weight matrix (experts and layers as '*') ->
    elements in the weight matrices of one such module."""

    @property
    def linear_modules(self) -> tuple:
        """Name patterns of the modules holding a weight matrix."""
        return tuple(self.linear_weights)


def count_parameters(model: HybridModelConfig, vocab_size: int) -> ModuleCounts:
    """Build one layer of each type (and the rest) on the meta device and count their parameters.

    Starts and stops a world-size-1 process group of its own, so the modules are built
    unsharded whatever the run's layout; sharding is applied arithmetically afterwards.
    """
    import torch.distributed as dist
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemotron_train.model import te_standins
    from nemotron_train.runtime.device_redirect import allocate_on
    from nemotron_train.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        initialize_distributed,
        megatron_parallel_fields,
    )
    from nemotron_train.runtime.setup import prepare_runtime

    if dist.is_initialized():
        raise RuntimeError("count_parameters builds unsharded modules; call it outside a distributed run")
    parsed = model.parsed_pattern
    one_of_each = "".join(dict.fromkeys(parsed.main))
    mtp_suffix = f"/{parsed.mtp_block}" * parsed.mtp_depths
    # The local spec builds on any machine; TE's spec holds the same parameter shapes, and
    # so does the flex dispatcher (whose DeepEP buffers cannot be built on the meta device).
    probe_config = dataclasses.replace(model, pattern=one_of_each + mtp_suffix,
                                       num_layers=len(one_of_each), spec="local",
                                       moe_token_dispatcher_type="alltoall")
    prepare_runtime()
    initialize_distributed(ParallelConfig(backend="gloo"), local=True)
    try:
        model_parallel_cuda_manual_seed(0)
        transformer_config = probe_config.transformer_config(
            **megatron_parallel_fields(ParallelConfig()), perform_initialization=False)
        # TE's modules never reach the meta device: the local stand-ins hold the same shapes.
        with allocate_on(torch.device("meta")), te_standins.local_standins():
            probe = probe_config.build(transformer_config, vocab_size=vocab_size)
        return _counts_from_probe(probe, one_of_each, parsed.mtp_block or "")
    finally:
        destroy_distributed()


def _counts_from_probe(probe, one_of_each: str, mtp_block: str) -> ModuleCounts:
    from megatron.core.ssm.mamba_mixer import MambaMixer
    from megatron.core.transformer.moe.moe_layer import MoELayer

    expert_ids = {id(p) for m in probe.modules() if isinstance(m, MoELayer)
                  for p in m.experts.parameters()}
    embedding_ids = {id(p) for p in probe.embedding.parameters()}

    def split(module) -> ParamSplit:
        counts = dict(tensor_parallel=0, expert=0, replicated=0, matmul=0)
        for param in module.parameters():
            if id(param) in expert_ids:
                counts["expert"] += param.numel()
            elif getattr(param, "tensor_model_parallel", False):
                counts["tensor_parallel"] += param.numel()
            else:
                counts["replicated"] += param.numel()
            if param.dim() == 2 and id(param) not in embedding_ids:
                counts["matmul"] += param.numel()
        return ParamSplit(**counts)

    layers = {LAYER_SYMBOLS[symbol]: split(layer)
              for symbol, layer in zip(one_of_each, probe.decoder.layers)}
    mtp_depth, mtp_layers, stored_depths = None, (), 0
    if getattr(probe, "mtp", None) is not None:
        depth_module = probe.mtp.layers[0]
        mtp_depth = split(depth_module)
        inner = depth_module.mtp_model_layer.layers
        mtp_layers = tuple((LAYER_SYMBOLS[symbol], split(layer)) for symbol, layer in zip(mtp_block, inner))
        stored_depths = len(probe.mtp.layers)
    mixers = [m for m in probe.modules() if isinstance(m, MambaMixer)]
    mamba = None
    if mixers:
        mixer = mixers[0]
        mamba = MambaShape(heads=mixer.nheads, head_dim=mixer.headdim, state_dim=mixer.d_state,
                           groups=mixer.ngroups, conv_kernel=mixer.d_conv, chunk_size=mixer.chunk_size)
    linear_weights = {}
    for name, module in probe.named_modules():
        matrices = [p.numel() for p in module.parameters(recurse=False) if p.dim() == 2]
        if matrices:
            pattern = re.sub(r"(layers|local_experts)\.\d+", r"\1.*", name)
            linear_weights.setdefault(pattern, sum(matrices))
    return ModuleCounts(layers=layers, embedding=split(probe.embedding),
                        final_norm=split(probe.decoder.final_norm),
                        output_layer=split(probe.output_layer), mtp_depth=mtp_depth, mtp_layers=mtp_layers,
                        mtp_stored_depths=stored_depths, mamba=mamba, linear_weights=linear_weights)


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParameterSummary:
    """Parameter totals and the per-token active counts."""

    by_layer_type: dict
    """Layer type -> {"layers", "per_layer", "total", "active_per_layer"}."""
    embedding: int
    output_layer: int
    final_norm: int
    mtp: int
    total: int
    """Every parameter the run trains, MTP included."""
    total_without_mtp: int
    active: float
    """Parameters a token uses, both embeddings included (MTP not: it drafts, it does not predict)."""
    active_without_input_embedding: float
    """As `active`, less the input embedding lookup (which does no FLOPs)."""
    active_without_embeddings: float
    """As `active`, less both the input embedding and the output layer."""
    mtp_active: float


def summarize_parameters(model: HybridModelConfig, counts: ModuleCounts) -> ParameterSummary:
    parsed = model.parsed_pattern
    fraction = expert_fraction(model)
    by_type = {}
    layers_total = 0
    layers_active = 0.0
    for layer_type, split in counts.layers.items():
        number = parsed.count(layer_type)
        by_type[layer_type] = dict(layers=number, per_layer=split.total, total=split.total * number,
                                   active_per_layer=split.active(fraction))
        layers_total += split.total * number
        layers_active += split.active(fraction) * number
    mtp_total = counts.mtp_depth.total * counts.mtp_stored_depths if counts.mtp_depth else 0
    mtp_active = counts.mtp_depth.active(fraction) if counts.mtp_depth else 0.0
    embedding, output = counts.embedding.total, counts.output_layer.total
    without_embeddings = layers_active + counts.final_norm.total
    total_without_mtp = layers_total + embedding + output + counts.final_norm.total
    return ParameterSummary(
        by_layer_type=by_type, embedding=embedding, output_layer=output,
        final_norm=counts.final_norm.total, mtp=mtp_total,
        total=total_without_mtp + mtp_total, total_without_mtp=total_without_mtp,
        active=without_embeddings + embedding + output,
        active_without_input_embedding=without_embeddings + output,
        active_without_embeddings=without_embeddings, mtp_active=mtp_active,
    )


def expert_fraction(model: HybridModelConfig) -> float:
    """The share of a MoE layer's routed experts one token is sent to (k / N)."""
    return model.moe_router_topk / model.num_experts


# ---------------------------------------------------------------------------- FLOPs
