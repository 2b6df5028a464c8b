"""Bad steps: a NaN or Inf in the loss or the gradients, found on every rank in the same step,
and loss spikes.

Megatron-Core's DDP can check each gradient bucket before its reduction
(`check_for_nan_in_grad`), but the check raises on the rank that sees it, through the rerun
state machine, while the others wait in the next collective; and nothing in Megatron-Core
skips an update or goes back to a checkpoint. This module checks the finalised gradients (after
the data-parallel reduction, so an overflow in the reduction shows too) and the loss, agrees
on the verdict with one all-reduce before the optimizer steps, and names the parameters whose
gradients went non-finite. The loop applies the policy (`train.on_nonfinite`):

- halt: raise `NonFiniteStep` before anything is saved, naming the step and the module;
- skip: no optimizer or scheduler step (as Megatron-LM's skipped iterations), the step is
  logged with `skipped: true`;
- rollback: reload the newest intact checkpoint and go on with the next batch, at most
  `train.max_rollbacks` times, then halt.
"""

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from nemotron_train.precision.policy import global_module_name, stage_first_layer_index
from nemotron_train.training.resume import NoIntactCheckpoint


class NonFiniteStep(RuntimeError):
    """A step's loss or gradients went non-finite and the policy says stop."""

    def __init__(self, step: int, verdict: "StepVerdict", reason: str = ""):
        self.step, self.verdict = step, verdict
        where = (f"first non-finite gradient in {verdict.first_module}"
                 if verdict.first_module else "gradients finite")
        super().__init__(f"step {step}: {verdict.describe()} ({where}){reason}")


@dataclass(frozen=True)
class StepVerdict:
    """What the check found, the same on every rank."""

    loss_finite: bool
    grads_finite: bool
    bad_parameters: tuple[str, ...] = ()
    """Parameters with a non-finite gradient, nearest the output first (the order backward
    reaches them, so the first is where the non-finite values entered)."""

    @property
    def finite(self) -> bool:
        return self.loss_finite and self.grads_finite

    @property
    def first_module(self) -> Optional[str]:
        """The module holding the first bad parameter."""
        if not self.bad_parameters:
            return None
        return self.bad_parameters[0].rsplit(".", 1)[0]

    def describe(self) -> str:
        parts = []
        if not self.loss_finite:
            parts.append("non-finite loss")
        if not self.grads_finite:
            parts.append(f"non-finite gradients in {len(self.bad_parameters)} parameter(s)")
        return " and ".join(parts) or "finite"


def check_step(model_chunks, loss: float, device) -> StepVerdict:
    """Check the loss (already reduced over all ranks) and this rank's finalised gradients,
    and agree on the result over all ranks. One isfinite pass per gradient buffer and one
    all-reduce per step; the parameter names are gathered only when something is wrong."""
    grads_finite = all(bool(torch.isfinite(buffer.grad_data).all()) for buffer in _grad_buffers(model_chunks))
    # int32 is supported by both gloo and NCCL reductions, unlike bool.
    flags = torch.tensor([int(not math.isfinite(loss)), int(not grads_finite)], dtype=torch.int32,
                         device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    loss_bad, grads_bad = (bool(v) for v in flags.tolist())
    bad = ()
    if grads_bad:
        local = _nonfinite_parameters(model_chunks) if not grads_finite else []
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        bad = tuple(dict.fromkeys(name for names in gathered for name in names))
    return StepVerdict(loss_finite=not loss_bad, grads_finite=not grads_bad, bad_parameters=bad)


def snapshot_expert_bias(model_chunks):
    """A function that puts every router's expert bias back as it is now.

    Megatron-Core updates the bias inside `finalize_model_grads`, before the optimizer step
    the check can still cancel; a skipped step must leave it unchanged too."""
    saved = [(module.expert_bias, module.expert_bias.clone())
             for chunk in model_chunks for module in chunk.modules()
             if getattr(module, "expert_bias", None) is not None]

    def restore():
        with torch.no_grad():
            for bias, value in saved:
                bias.copy_(value)

    return restore


def _grad_buffers(model_chunks):
    for chunk in model_chunks:
        yield from chunk.buffers
        yield from chunk.expert_parallel_buffers


def _nonfinite_parameters(model_chunks) -> list[str]:
    """Names (the bare model's, with global layer numbers) of this rank's parameters with a
    non-finite gradient, in reverse definition order (nearest the output first)."""
    names = []
    for chunk in model_chunks:
        model = chunk.module
        model = getattr(model, "module", model)  # under Float16Module
        first_layer = stage_first_layer_index(model)
        for name, param in reversed(list(model.named_parameters())):
            grad = getattr(param, "main_grad", None)
            if grad is not None and not bool(torch.isfinite(grad).all()):
                names.append(global_module_name(name, first_layer))
    return names


class LossSpikeDetector:
    """Flags a loss above `factor` times the mean of the last `window` finite losses."""

    def __init__(self, factor: float, window: int):
        self.factor = factor
        self.recent = deque(maxlen=window)

    def observe(self, loss: float) -> Optional[float]:
        """Record `loss`; return the running mean it spiked above, or None."""
        if not math.isfinite(loss):
            return None
        spiked = None
        if self.factor > 0 and len(self.recent) >= max(1, self.recent.maxlen // 2):
            mean = sum(self.recent) / len(self.recent)
            if loss > self.factor * mean:
                spiked = mean
        self.recent.append(loss)
        return spiked


class BadStepHandler:
    """Applies `train.on_nonfinite` to a checked step and logs loss spikes.

    `rollback()` reloads the newest intact checkpoint and returns its path; `log_event` is
    MetricsLogger.log_event.
    """

    def __init__(self, train_cfg, *, rollback, log_event):
        self.policy, self.max_rollbacks = train_cfg.on_nonfinite, train_cfg.max_rollbacks
        self.spikes = LossSpikeDetector(train_cfg.loss_spike_factor, train_cfg.loss_spike_window)
        self.rollback, self.log_event = rollback, log_event

    def handle(self, state, loss: float, verdict: StepVerdict) -> dict:
        """What the step's metrics record gains; raises NonFiniteStep when the run must stop.
        `state` (a TrainState) counts skipped steps and rollbacks."""
        mean = self.spikes.observe(loss)
        if mean is not None:
            self.log_event(state.step, "loss_spike",
                           f"loss spike: {loss:.4f} is {loss / mean:.2f}x the mean {mean:.4f} of "
                           f"the last {len(self.spikes.recent) - 1} steps", loss=loss, running_mean=mean)
        if verdict.finite:
            return {}
        where = f" (first in {verdict.first_module})" if verdict.first_module else ""
        if self.policy == "halt":
            self.log_event(state.step, "halt", f"{verdict.describe()}{where}: halting, nothing saved",
                           bad_parameters=list(verdict.bad_parameters))
            raise NonFiniteStep(state.step, verdict, "; train.on_nonfinite=halt")
        if self.policy == "skip":
            state.skipped_steps += 1
            self.log_event(state.step, "skipped_step", f"{verdict.describe()}{where}: update skipped",
                           bad_parameters=list(verdict.bad_parameters))
            return {"skipped": True}
        if state.rollbacks >= self.max_rollbacks:
            raise NonFiniteStep(state.step, verdict,
                                f"; gave up after train.max_rollbacks={self.max_rollbacks} rollbacks")
        try:
            checkpoint = self.rollback()
        except NoIntactCheckpoint as error:
            raise NonFiniteStep(state.step, verdict, f"; cannot roll back: {error}") from error
        state.rollbacks += 1
        self.log_event(state.step, "rollback",
                       f"{verdict.describe()}{where}: rolled back to {checkpoint.name} "
                       f"(rollback {state.rollbacks} of at most {self.max_rollbacks}), "
                       "continuing with the next batch",
                       checkpoint=str(checkpoint), bad_parameters=list(verdict.bad_parameters))
        return {"rolled_back_to": checkpoint.name}
