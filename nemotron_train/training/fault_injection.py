"""Injected faults, to drill the failure handling on a real run before it is needed.

Two faults, both off by default: a non-finite gradient (one parameter's gradient in one
micro-batch of chosen steps becomes NaN or Inf, through a tensor hook on the parameter, so
the poison enters exactly where real overflow would: before Megatron-Core's DDP accumulates
and reduces it) and a stall (one rank sleeps inside a chosen step, as a hung kernel or
collective would hold it). The tests drive every `train.on_nonfinite` policy and the
watchdog through these; Megatron-Core's `RerunErrorInjector` only perturbs values its rerun
state machine validates, not gradients or time.
"""

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from nemotron_train.errors import ConfigError
from nemotron_train.precision.policy import global_module_name, stage_first_layer_index

FAULT_VALUES = {"nan": float("nan"), "inf": float("inf")}


@dataclass(kw_only=True)
class FaultInjectionConfig:
    """Faults to inject (all off by default)."""

    nonfinite_grad_steps: list[int] = field(default_factory=list)
    """Steps (numbered from 1) at which one micro-batch's gradient of `parameter` is poisoned."""
    parameter: Optional[str] = None
    """Name (a glob over the bare model's parameter names with global layer numbers, e.g.
    'decoder.layers.2.mlp.router.weight') of the parameter whose gradient is poisoned; None:
    the first parameter of the rank's model."""
    micro_batch: int = 1
    """Which micro-batch of the step (from 1) is poisoned."""
    value: str = "nan"
    """'nan' or 'inf'."""
    rank: int = 0
    """The global rank that injects (gradient poison and stall)."""
    stall_step: int = 0
    """Step at which `rank` sleeps for `stall_seconds` inside the step (0: never)."""
    stall_seconds: float = 0.0
    """How long the stall at `stall_step` lasts."""

    def __post_init__(self):
        if self.value not in FAULT_VALUES:
            raise ConfigError("faults.value", self.value, f"choose one of {tuple(FAULT_VALUES)}")
        if self.micro_batch < 1:
            raise ConfigError("faults.micro_batch", self.micro_batch, "must be at least 1")
        if any(step < 1 for step in self.nonfinite_grad_steps):
            raise ConfigError("faults.nonfinite_grad_steps", self.nonfinite_grad_steps,
                              "steps are numbered from 1")
        if self.stall_step < 0:
            raise ConfigError("faults.stall_step", self.stall_step, "must be >= 0 (0: never)")
        if self.stall_seconds < 0:
            raise ConfigError("faults.stall_seconds", self.stall_seconds, "must be >= 0")


class FaultInjector:
    """Arms the configured faults on this rank's model; `begin_step` before every step."""

    def __init__(self, config: FaultInjectionConfig, model_chunks, rank: int):
        self.config = config
        self.active = rank == config.rank
        self._step = 0
        self._backward_calls = 0
        self.poisoned = None
        """The poisoned parameter's name, once a hook is armed."""
        if self.active and config.nonfinite_grad_steps:
            name, param = _find_parameter(model_chunks, config.parameter)
            param.register_hook(self._poison)
            self.poisoned = name

    def begin_step(self, step: int) -> None:
        """Note the step about to run; stall in it if so configured."""
        self._step, self._backward_calls = step, 0
        if self.active and step == self.config.stall_step and self.config.stall_seconds:
            time.sleep(self.config.stall_seconds)

    def _poison(self, grad: torch.Tensor) -> torch.Tensor:
        # Called once per micro-batch's backward through the parameter.
        self._backward_calls += 1
        if self._step in self.config.nonfinite_grad_steps and self._backward_calls == self.config.micro_batch:
            return grad * FAULT_VALUES[self.config.value]
        return grad


def _find_parameter(model_chunks, pattern: Optional[str]):
    for chunk in model_chunks:
        bare = _bare_model(chunk)
        first_layer = stage_first_layer_index(bare)
        for local_name, param in bare.named_parameters():
            name = global_module_name(local_name, first_layer)
            if param.requires_grad and (pattern is None or fnmatch.fnmatchcase(name, pattern)):
                return name, param
    raise ConfigError("faults.parameter", pattern,
                      "no parameter of this rank's model matches; name one of the model's "
                      "parameters (e.g. 'decoder.layers.0.mixer.in_proj.weight')")


def _bare_model(chunk):
    """The HybridModel inside DDP (and Float16Module), whose names the pattern uses."""
    model = chunk.module
    return getattr(model, "module", model)
