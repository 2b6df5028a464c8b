"""AdamW through Megatron-Core's optimizer, and the warmup-stable-decay schedule."""

from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from nemotron_train.errors import ConfigError

DECAY_STYLES = ("WSD", "cosine", "linear", "constant")
WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (Megatron-Core's OptimizerParamScheduler)."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-5
    """Learning rate at the end of the decay."""
    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip."""
    warmup_steps: int = 0
    """Linear warmup from 0 to `lr`; recipes may give `warmup_tokens` instead."""
    warmup_tokens: Optional[int] = None
    """Warmup length in tokens, converted with the global batch and sequence length."""
    decay_style: str = "WSD"
    """'WSD' (warmup-stable-decay), 'cosine', 'linear' or 'constant'."""
    wsd_decay_fraction: float = 0.2
    """WSD: the final fraction of training spent decaying to `min_lr`."""
    wsd_decay_style: str = "minus_sqrt"
    """WSD decay shape: 'linear', 'cosine', 'exponential' or 'minus_sqrt'."""

    def __post_init__(self):
        if self.decay_style not in DECAY_STYLES:
            raise ConfigError("optim.decay_style", self.decay_style, f"choose one of {DECAY_STYLES}")
        if self.wsd_decay_style not in WSD_DECAY_STYLES:
            raise ConfigError("optim.wsd_decay_style", self.wsd_decay_style,
                              f"choose one of {WSD_DECAY_STYLES}")
        if not 0.0 <= self.wsd_decay_fraction <= 1.0:
            raise ConfigError("optim.wsd_decay_fraction", self.wsd_decay_fraction,
                              "choose a fraction in [0, 1]")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError("optim.min_lr", self.min_lr, f"choose 0 <= min_lr <= optim.lr={self.lr}")


@dataclass(frozen=True)
class ScheduleSteps:
    """The schedule in optimizer steps."""

    warmup: int
    decay_end: int
    wsd_decay: int


def schedule_steps(optim: OptimConfig, max_steps: int, tokens_per_step: int) -> ScheduleSteps:
    """Convert the configured schedule (steps or tokens) into optimizer steps."""
    warmup = optim.warmup_steps
    if optim.warmup_tokens is not None:
        warmup = -(-optim.warmup_tokens // tokens_per_step)
    # Megatron-Core's scheduler asserts warmup < decay steps for every decay style.
    if warmup >= max_steps:
        raise ConfigError("optim.warmup_steps", warmup,
                          f"warmup must end before train.max_steps={max_steps}")
    wsd_decay = round(optim.wsd_decay_fraction * max_steps)
    return ScheduleSteps(warmup=warmup, decay_end=max_steps, wsd_decay=min(wsd_decay, max_steps - warmup))


def build_optimizer(model_chunks, optim: OptimConfig, *, precision_fields: dict,
                    distributed_optimizer: bool, overlap_param_gather: bool = False):
    """Megatron-Core's optimizer (Adam with decoupled weight decay) over the DDP-wrapped chunks
    (`overlap_param_gather` as their DDP config has it)."""
    config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        use_distributed_optimizer=distributed_optimizer,
        overlap_param_gather=overlap_param_gather,
        **precision_fields,
    )
    return get_megatron_optimizer(config, model_chunks)


def is_torch_adam(optimizer) -> bool:
    """True for torch's Adam/AdamW, which Megatron-Core uses only when neither TransformerEngine
    nor Apex imports (otherwise their FusedAdam, which keeps no per-parameter `step`)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def build_scheduler(optimizer, optim: OptimConfig, steps: ScheduleSteps) -> OptimizerParamScheduler:
    """The learning-rate / weight-decay schedule, stepped once per optimizer step."""
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=steps.warmup,
        lr_decay_steps=steps.decay_end,
        lr_decay_style=optim.decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=steps.decay_end,
        wd_incr_style="constant",
        wsd_decay_steps=steps.wsd_decay if optim.decay_style == "WSD" else None,
        lr_wsd_decay_style=optim.wsd_decay_style if optim.decay_style == "WSD" else None,
    )
