"""Mamba-2 kernel provider: mamba_ssm's fused kernel where it imports, else our PyTorch scan.

Megatron-Core's MambaMixer trains only through mamba_ssm's
`mamba_split_conv1d_scan_combined` and gated RMSNorm; its own Triton ops
(`megatron.core.ssm.ops`) cover inference prefill and decode, not training.
Without mamba_ssm we hand MambaMixer `nemotron_train.runtime.ssd_scan`,
which has the same signature, semantics and parameter names.
"""

from nemotron_train.runtime.backends import mamba_ssm_available

_installed = None


def install() -> str:
    """Make MambaMixer trainable here; return the kernel name ('mamba_ssm' or 'torch')."""
    global _installed
    if _installed is None:
        if mamba_ssm_available():
            _installed = "mamba_ssm"
        else:
            from megatron.core.ssm import mamba_mixer

            from nemotron_train.runtime import ssd_scan

            mamba_mixer.mamba_split_conv1d_scan_combined = ssd_scan.mamba_split_conv1d_scan_combined
            mamba_mixer.ExtendedRMSNorm = ssd_scan.GatedRMSNorm
            mamba_mixer.HAVE_MAMBA_SSM = True
            _installed = "torch"
    return _installed
