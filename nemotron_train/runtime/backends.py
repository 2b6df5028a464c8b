"""What this machine can run: CUDA, TransformerEngine, mamba_ssm, Apex, DeepEP (all imported lazily)."""

import functools
import importlib.util
from dataclasses import dataclass

import torch


def cuda_available() -> bool:
    """True when a CUDA device can be used."""
    return torch.cuda.is_available()


@functools.cache
def transformer_engine_available() -> bool:
    """True when `transformer_engine.pytorch` imports (it needs CUDA at import time)."""
    if importlib.util.find_spec("transformer_engine") is None or not cuda_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@functools.cache
def mamba_ssm_available() -> bool:
    """True when mamba_ssm's fused Triton/CUDA training kernel imports."""
    if importlib.util.find_spec("mamba_ssm") is None or not cuda_available():
        return False
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@functools.cache
def apex_gradient_accumulation_fusion_available() -> bool:
    """True when Apex's `fused_weight_gradient_mlp_cuda` imports: Megatron-Core's own
    (non-TE) linears need it for gradient accumulation fusion."""
    if not cuda_available():
        return False
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def fused_moe_permute_available() -> bool:
    """True when Megatron-Core found TransformerEngine's fused MoE permute kernels (TE >= 2.1)."""
    if not transformer_engine_available():
        return False
    from megatron.core.transformer.moe import moe_utils

    return all(getattr(moe_utils, name, None) is not None for name in (
        "fused_permute", "fused_permute_with_probs", "fused_sort_chunks_by_index",
        "fused_sort_chunks_by_index_with_probs", "fused_unpermute"))


@functools.cache
def flex_dispatcher_backends() -> tuple[str, ...]:
    """The flex token dispatcher's backends that import here ('deepep', 'hybridep'), as
    Megatron-Core's `fused_a2a` finds them (DeepEP's `Buffer` / `HybridEPBuffer`)."""
    if not cuda_available():
        return ()
    try:
        from megatron.core.transformer.moe import fused_a2a
    except (ImportError, OSError, RuntimeError):
        return ()
    found = []
    if getattr(fused_a2a, "HAVE_DEEP_EP", False):
        found.append("deepep")
    if getattr(fused_a2a, "HAVE_HYBRIDEP", False):
        found.append("hybridep")
    return tuple(found)


@dataclass(frozen=True)
class Machine:
    """What this machine offers the run plan (probed once; tests pass their own)."""

    cuda: bool = False
    transformer_engine: bool = False
    blackwell: bool = False
    """A GPU of compute capability 10 or higher (native NVFP4 GEMMs)."""
    apex_gradient_accumulation_fusion: bool = False
    fused_moe_permute: bool = False
    flex_dispatcher_backends: tuple = ()


def probe_machine() -> Machine:
    """This process's Machine."""
    cuda = cuda_available()
    return Machine(
        cuda=cuda,
        transformer_engine=transformer_engine_available(),
        blackwell=cuda and torch.cuda.get_device_capability()[0] >= 10,
        apex_gradient_accumulation_fusion=apex_gradient_accumulation_fusion_available(),
        fused_moe_permute=fused_moe_permute_available(),
        flex_dispatcher_backends=flex_dispatcher_backends(),
    )
