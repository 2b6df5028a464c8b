"""What this machine can run: CUDA, TransformerEngine, mamba_ssm (all imported lazily)."""

import functools
import importlib.util

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
