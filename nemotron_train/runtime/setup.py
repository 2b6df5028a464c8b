"""Pick the runtime for this machine before any Megatron-Core module is built."""

from dataclasses import dataclass

from nemotron_train.runtime import cpu_compat, mamba_kernels
from nemotron_train.runtime.backends import transformer_engine_available


@dataclass(frozen=True)
class RuntimeInfo:
    """What this process runs on, as reported at the start of a run."""

    device_type: str
    """'cuda' or 'cpu'."""
    transformer_engine: bool
    mamba_kernel: str
    """'mamba_ssm' (fused Triton/CUDA) or 'torch' (our chunked pure-PyTorch scan)."""

    def describe(self) -> str:
        return (f"device={self.device_type} transformer_engine={self.transformer_engine} "
                f"mamba_kernel={self.mamba_kernel}")


def prepare_runtime() -> RuntimeInfo:
    """Install the CPU stand-ins and the Mamba kernel this machine needs (the model installs
    its own stand-ins for TE's modules where TE is missing: model/te_standins.py)."""
    on_cpu = cpu_compat.activate()
    kernel = mamba_kernels.install()
    return RuntimeInfo(
        device_type="cpu" if on_cpu else "cuda",
        transformer_engine=transformer_engine_available(),
        mamba_kernel=kernel,
    )
