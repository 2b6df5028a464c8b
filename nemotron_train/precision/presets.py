"""Named precision presets, and the one function that pushes a preset onto Megatron-Core."""

from dataclasses import dataclass, field

import torch

from nemotron_train.errors import ConfigError

EXECUTIONS = ("auto", "native", "emulated")


@dataclass(kw_only=True)
class PrecisionConfig:
    """Which numeric formats the run computes and stores in."""

    recipe: str = "bf16"
    """Preset name: one of PRESETS ('fp32', 'bf16', 'nvfp4'). 'nvfp4' keeps BF16 parameters
    and computes the linear layers as the NVFP4 precision policy says (precision/policy.py)."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and all-reduce gradients in fp32 whatever the compute dtype."""

    # NVFP4 only (ignored by the other presets).
    rht: bool = True
    """NVFP4: random Hadamard transform of both wgrad operands (false for the ablation)."""
    stochastic_rounding: bool = True
    """NVFP4: stochastic rounding of the gradient operands; RNE when false (ablation)."""
    weight_2d: bool = True
    """NVFP4: 16x16 weight blocks shared by fprop and dgrad; 1x16 copies when false (ablation)."""
    last_layers_bf16_fraction: float = 0.15
    """NVFP4: fraction of the main-stack layers, counted from the end (rounded up to whole
    layers), computed entirely in BF16."""
    execution: str = "auto"
    """NVFP4: 'native' (TransformerEngine kernels, Blackwell only), 'emulated'
    (nemotron_train.precision on any device) or 'auto' (native where it can run)."""

    def __post_init__(self):
        if self.recipe not in PRESETS:
            raise ConfigError("precision.recipe", self.recipe, f"choose one of {sorted(PRESETS)}")
        if not 0.0 <= self.last_layers_bf16_fraction <= 1.0:
            raise ConfigError("precision.last_layers_bf16_fraction", self.last_layers_bf16_fraction,
                              "choose a fraction in [0, 1]")
        if self.execution not in EXECUTIONS:
            raise ConfigError("precision.execution", self.execution, f"choose one of {list(EXECUTIONS)}")


@dataclass(frozen=True)
class PrecisionSettings:
    """Fields for Megatron-Core's TransformerConfig and OptimizerConfig (the DDP config reads
    `precision.grad_reduce_in_fp32` itself)."""

    transformer: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)


_BF16 = PrecisionSettings(
    transformer=dict(params_dtype=torch.bfloat16, bf16=True, fp16=False),
    optimizer=dict(bf16=True, fp16=False, params_dtype=torch.bfloat16),
)

PRESETS = {
    "fp32": PrecisionSettings(
        transformer=dict(params_dtype=torch.float32, bf16=False, fp16=False),
        optimizer=dict(bf16=False, fp16=False, params_dtype=torch.float32),
    ),
    "bf16": _BF16,
    # The quantized GEMMs come from the precision policy (precision/execution.py), on top of
    # BF16 parameters and activations.
    "nvfp4": _BF16,
}


def precision_settings(config: PrecisionConfig) -> PrecisionSettings:
    """Resolve the preset named by `config` into Megatron-Core config fields."""
    preset = PRESETS[config.recipe]
    return PrecisionSettings(
        transformer=dict(preset.transformer),
        optimizer=dict(preset.optimizer),
    )
