"""Named precision presets, and the one function that pushes a preset onto Megatron-Core."""

from dataclasses import dataclass, field

import torch

from nemotron_train.config.errors import ConfigError


@dataclass(kw_only=True)
class PrecisionConfig:
    """Which numeric formats the run computes and stores in."""

    recipe: str = "bf16"
    """Preset name: one of PRESETS ('fp32', 'bf16')."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and all-reduce gradients in fp32 whatever the compute dtype."""

    def __post_init__(self):
        if self.recipe not in PRESETS:
            raise ConfigError("precision.recipe", self.recipe, f"choose one of {sorted(PRESETS)}")


@dataclass(frozen=True)
class PrecisionSettings:
    """Fields for Megatron-Core's TransformerConfig, OptimizerConfig and DDP config."""

    transformer: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    ddp: dict = field(default_factory=dict)


PRESETS = {
    "fp32": PrecisionSettings(
        transformer=dict(params_dtype=torch.float32, bf16=False, fp16=False),
        optimizer=dict(bf16=False, fp16=False, params_dtype=torch.float32),
    ),
    "bf16": PrecisionSettings(
        transformer=dict(params_dtype=torch.bfloat16, bf16=True, fp16=False),
        optimizer=dict(bf16=True, fp16=False, params_dtype=torch.bfloat16),
    ),
}


def precision_settings(config: PrecisionConfig) -> PrecisionSettings:
    """Resolve the preset named by `config` into Megatron-Core config fields."""
    preset = PRESETS[config.recipe]
    return PrecisionSettings(
        transformer=dict(preset.transformer),
        optimizer=dict(preset.optimizer),
        ddp=dict(grad_reduce_in_fp32=config.grad_reduce_in_fp32, **preset.ddp),
    )
