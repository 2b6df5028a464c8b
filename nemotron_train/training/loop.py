"""The training loop: Megatron-Core's schedules, optimizer and scheduler, step by step."""

import logging
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core.distributed import finalize_model_grads
from megatron.core.num_microbatches_calculator import init_num_microbatches_calculator
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

from nemotron_train.data.curriculum import build_train_data
from nemotron_train.data.sequence_lengths import SequenceLengthSchedule
from nemotron_train.data.tokenizer import build_tokenizer
from nemotron_train.runtime.megatron_session import megatron_session
from nemotron_train.telemetry.metrics import MetricsLogger, format_duration
from nemotron_train.training.checkpoint import LoadedCheckpoint, TrainState, checkpoint_state
from nemotron_train.training.checkpoint_saver import CheckpointSaver, resolve_save_options
from nemotron_train.training.forward_step import forward_step, mean_reported_loss
from nemotron_train.training.model_setup import build_model
from nemotron_train.training.nonfinite import StepVerdict, check_step, snapshot_expert_bias
from nemotron_train.training.optimizer import build_optimizer, build_scheduler, schedule_steps
from nemotron_train.training.seeding import seed_this_rank, use_deterministic_kernels
from nemotron_train.training.throughput import synchronized_parameters
from nemotron_train.training.resume import resume
from nemotron_train.training.rng_state import restore_rng_state
from nemotron_train.training.step_monitors import StepMonitors
from nemotron_train.training.step_performance import ModelFlops
from nemotron_train.training.validation import evaluate
from nemotron_train.precision.presets import precision_settings

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a run ended."""

    start_step: int
    final_step: int
    losses: list = field(default_factory=list)
    """(step, loss) for every step, on every rank."""
    checkpoint: Optional[Path] = None
    interrupted: bool = False
    skipped_steps: int = 0
    rollbacks: int = 0
    valid_losses: list = field(default_factory=list)
    """(step, validation loss) for every evaluation."""


class _SigtermFlag:
    """Set on SIGTERM so the loop can checkpoint before the scheduler kills the job."""

    def __init__(self):
        self.received = False

    def install(self):
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True


def train(config, run_dir: Path, on_run_dir=None, model_flops: Optional[ModelFlops] = None) -> TrainResult:
    """Train `config` (a RunConfig) and write its metrics and checkpoints under `run_dir`.

    `on_run_dir(run_dir)` runs on rank 0 once the run directory is agreed (to record the config).
    `model_flops` (from the dry-run accounting, computed by the caller) gives `tflops_per_s`
    and `mfu` in the metrics.
    """
    sigterm = _SigtermFlag()
    if config.train.exit_on_sigterm:
        sigterm.install()  # before setup, which takes minutes at scale
    with megatron_session(config.parallel) as (runtime, context):
        run_dir = _agree_on_run_dir(Path(run_dir))
        if context.rank == 0 and on_run_dir is not None:
            on_run_dir(run_dir)
        return _train(config, run_dir, runtime, context, sigterm, model_flops)


@dataclass
class _Run:
    """Everything the steps of one job use, built once by `_prepare`."""

    config: object
    context: object
    setup: object
    optimizer: object
    scheduler: object
    data: object
    checkpoint_dir: Path
    state: TrainState
    loaded: Optional[LoadedCheckpoint]
    metrics: MetricsLogger
    saver: CheckpointSaver
    step_fn: object
    model_flops: Optional[ModelFlops]


def _train(config, run_dir, runtime, context, sigterm, model_flops) -> TrainResult:
    if context.rank == 0:
        print(f"[nemotron-train] {runtime.describe()} world_size={context.world_size} "
              f"backend={context.backend} run_dir={run_dir}", flush=True)
    run = _prepare(config, run_dir, context, model_flops)
    monitors = StepMonitors.build(run, run_dir)
    try:
        result = _run_steps(run, monitors, sigterm)
    finally:
        monitors.close()
        run.saver.close()  # a background save is finished and published before exit
        run.metrics.close()
    if context.rank == 0:
        print(run_summary(result, run, run_dir), flush=True)
    return result


def _prepare(config, run_dir, context, model_flops) -> _Run:
    """Model, optimizer, schedule, resumed state, data, logger and saver of this job."""
    seed_this_rank(config.seed)
    if config.train.deterministic:
        use_deterministic_kernels()
    train_cfg = config.train
    num_microbatches = train_cfg.global_batch_size // (
        train_cfg.micro_batch_size * context.data_parallel_size)
    init_num_microbatches_calculator(context.rank, None, train_cfg.global_batch_size,
                                     train_cfg.micro_batch_size, context.data_parallel_size)

    tokenizer = build_tokenizer(config.data.tokenizer, config.data.cache_dir)
    setup = build_model(config, tokenizer.vocab_size, context.device)
    optimizer = build_optimizer(
        setup.chunks, config.optim,
        precision_fields=precision_settings(config.precision).optimizer,
        distributed_optimizer=config.parallel.distributed_optimizer,
        overlap_param_gather=setup.plan.throughput.settings["overlap_param_gather"],
    )
    tokens_per_step = train_cfg.global_batch_size * config.model.seq_length
    scheduler = build_scheduler(optimizer, config.optim,
                                schedule_steps(config.optim, train_cfg.max_steps, tokens_per_step))
    connect_megatron_hooks(setup, optimizer)

    checkpoint_dir = Path(config.checkpoint.dir or run_dir / "checkpoints")
    loaded = resume(config.checkpoint, checkpoint_dir, setup.chunks, optimizer, scheduler, context.device)
    state = loaded.train_state if loaded is not None else TrainState()
    _announce_start(loaded, state, context)
    data = build_train_data(
        config.data, tokenizer, seq_length=config.model.seq_length, seed=config.seed,
        max_steps=train_cfg.max_steps, global_batch_size=train_cfg.global_batch_size,
        micro_batch_size=train_cfg.micro_batch_size,
        valid_samples=max(1, train_cfg.eval_iters * train_cfg.micro_batch_size
                          * context.data_parallel_size * _evaluations(train_cfg)),
        consumed_samples=state.consumed_samples,
        data_parallel_rank=context.data_parallel_rank,
        data_parallel_size=context.data_parallel_size,
        lengths=SequenceLengthSchedule.from_config(
            config.model.seq_length, train_cfg.short_seq_length, train_cfg.short_step_fraction),
    )
    metrics = MetricsLogger(run_dir, config.logging, max_steps=train_cfg.max_steps,
                            enabled=context.rank == 0, start_step=state.step,
                            device_metrics=context.device.type == "cuda")
    for damage in loaded.passed_over if loaded is not None else ():
        metrics.log_event(state.step, "checkpoint_damaged", f"passed over {damage.describe()}",
                          checkpoint=str(damage.checkpoint), file=damage.file)
    step_fn = partial(
        train_step, forward_backward=get_forward_backward_func(), model_chunks=setup.chunks,
        optimizer=optimizer, scheduler=scheduler, num_microbatches=num_microbatches,
        device=context.device, moe_layers=_moe_layer_flags(config.model),
        mtp_depths=config.model.parsed_pattern.mtp_depths,
    )
    save_options = resolve_save_options(config.checkpoint)
    saver = CheckpointSaver(checkpoint_dir, save_options,
                            on_published=partial(_log_published, metrics, state, save_options.asynchronous))
    return _Run(config=config, context=context, setup=setup, optimizer=optimizer,
                scheduler=scheduler, data=data, checkpoint_dir=checkpoint_dir, state=state,
                loaded=loaded, metrics=metrics, saver=saver, step_fn=step_fn,
                model_flops=model_flops)


def _run_steps(run: _Run, monitors: "StepMonitors", sigterm) -> TrainResult:
    config, state, metrics = run.config, run.state, run.metrics
    train_cfg, device = config.train, run.context.device
    result = TrainResult(start_step=state.step, final_step=state.step)
    if config.checkpoint.save_initial and state.step == 0:
        _save(run, result)
    if run.loaded is not None and run.loaded.rng_state is not None:
        # Last, so that nothing set-up draws (data loaders seed from torch's generator)
        # moves the streams between the checkpoint and the next step.
        restore_rng_state(run.loaded.rng_state, run.setup.rounding_stream)
    while state.step < train_cfg.max_steps:
        started = time.perf_counter()
        batches = run.data.batches_for_step(state.step + 1)
        outcome = monitors.timed_step(state.step + 1, lambda: run.step_fn(
            data_iterator=batches.iterator, seq_length=batches.seq_length,
            micro_batch_size=batches.micro_batch_size))
        state.step += 1
        # Counted in long sequences: a short step has the same tokens (sequence_lengths.py).
        state.consumed_samples += train_cfg.global_batch_size
        step_metrics = outcome.metrics
        step_metrics.update(monitors.bad_steps.handle(state, step_metrics["loss"], outcome.verdict))
        seconds = time.perf_counter() - started
        tokens = train_cfg.global_batch_size * config.model.seq_length
        step_metrics["tokens_per_s"] = tokens / seconds
        step_metrics["seq_length"] = batches.seq_length
        step_metrics.update(monitors.step_report(state, tokens, batches.seq_length, seconds))
        result.losses.append((state.step, step_metrics["loss"]))
        if len(run.data.phases) > 1:
            step_metrics["data_phase"] = run.data.phase_for_step(state.step)
        if train_cfg.eval_interval and state.step % train_cfg.eval_interval == 0:
            with synchronized_parameters(run.setup.chunks):
                step_metrics.update(evaluate(config, run.setup, run.data, run.context))
            result.valid_losses.append((state.step, step_metrics["valid_loss"]))
        if metrics.should_log(state.step) or _always_logged(step_metrics):
            metrics.log_step(state.step, step_metrics)
        run.saver.poll()
        steps_this_job = state.step - result.start_step
        exit_now = bool(train_cfg.exit_interval) and steps_this_job % train_cfg.exit_interval == 0
        stop = (_any_rank(sigterm.received, device) or exit_now) and state.step < train_cfg.max_steps
        if _should_save(config.checkpoint, state.step, train_cfg.max_steps) or stop:
            with synchronized_parameters(run.setup.chunks):
                _save(run, result)
        if stop:
            run.saver.finalize()
            if run.context.rank == 0:
                reason = "SIGTERM" if sigterm.received else "train.exit_interval"
                print(f"[nemotron-train] {reason}: saved {result.checkpoint}, exiting", flush=True)
            result.interrupted = True
            break
    result.final_step = state.step
    result.skipped_steps, result.rollbacks = state.skipped_steps, state.rollbacks
    return result


def _save(run: _Run, result: TrainResult) -> None:
    sharded = checkpoint_state(run.state, run.setup.chunks, run.optimizer, run.scheduler,
                               rounding_stream=run.setup.rounding_stream,
                               optimizer_format=run.config.checkpoint.optimizer_format)
    report = run.saver.save(sharded, run.state.step)
    result.checkpoint = report.checkpoint
    how = "in the background" if run.saver.options.asynchronous else "synchronously"
    run.metrics.log_event(run.state.step, "checkpoint_saved",
                          f"saving {report.checkpoint.name} {how} (training stalled {report.stall_s:.2f} s)",
                          checkpoint=str(report.checkpoint), stall_s=report.stall_s,
                          asynchronous=run.saver.options.asynchronous)


def _log_published(metrics: MetricsLogger, state: TrainState, asynchronous: bool,
                   checkpoint: Path, write_s: float) -> None:
    # A synchronous save is published before its "saving" line: only background ones are news.
    metrics.log_event(state.step, "checkpoint_published",
                      f"{checkpoint.name} written and published as latest, {write_s:.2f} s after its save began",
                      echo=asynchronous, checkpoint=str(checkpoint), write_s=write_s)


def _always_logged(step_metrics: dict) -> bool:
    """Steps logged whatever the interval: skipped, rolled back or evaluated ones."""
    return any(key in step_metrics for key in ("skipped", "rolled_back_to", "valid_loss"))


def _announce_start(loaded: Optional[LoadedCheckpoint], state: TrainState, context) -> None:
    if loaded is None or context.rank != 0:
        return
    what = "resumed from" if loaded.train_state.step or loaded.rng_state else "loaded weights from"
    note = ""
    if loaded.rng_state is None and state.step:
        note = " (random streams re-seeded: the checkpoint holds none for this layout)"
    print(f"[nemotron-train] {what} {loaded.path} at step {state.step}{note}", flush=True)


@dataclass(frozen=True)
class StepOutcome:
    """One step's metrics and the non-finite check's verdict."""

    metrics: dict
    verdict: StepVerdict


def train_step(*, forward_backward, data_iterator, model_chunks, optimizer, scheduler,
               num_microbatches, seq_length, micro_batch_size, device, moe_layers,
               mtp_depths: int = 0) -> StepOutcome:
    """One optimizer step over `num_microbatches` micro-batches of `micro_batch_size` sequences
    of `seq_length` tokens (both may change from step to step). The update is applied only
    when every rank found the loss and the gradients finite."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    restore_expert_bias = snapshot_expert_bias(model_chunks)
    reports = forward_backward(
        forward_step_func=partial(forward_step, device=device),
        data_iterator=data_iterator,
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    loss = mean_reported_loss(reports, device)
    verdict = check_step(model_chunks, loss, device)
    grad_norm = None
    if verdict.finite:
        _, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
    else:
        restore_expert_bias()
    metrics = {"loss": loss, "lr": scheduler.get_lr(optimizer.param_groups[0]),
               "grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}
    metrics.update(_moe_metrics(moe_layers, num_microbatches))
    metrics.update(mtp_metrics(mtp_depths, num_microbatches, device))
    return StepOutcome(metrics=metrics, verdict=verdict)


def _moe_layer_flags(model_config) -> list:
    return [1 if symbol == "E" else 0 for symbol in model_config.parsed_pattern.main]


def _moe_metrics(moe_layers: list, num_microbatches: int) -> dict:
    """Megatron-Core's tracked MoE losses (the sequence balancing loss), averaged per layer."""
    if not any(moe_layers):
        return {}
    totals = {}
    get_moe_metrics_tracker().report(
        loss_scale=1.0 / num_microbatches, iteration=0, num_layers=len(moe_layers),
        moe_layer_freq=moe_layers, total_loss_dict=totals,
    )
    return {f"moe_{name}": float(value) for name, value in totals.items()}


def mtp_metrics(mtp_depths: int, num_microbatches: int, device) -> dict:
    """Per-depth MTP losses and next-token accuracies of this step, from Megatron-Core's tracker.

    `MTPLossLoggingHelper` records, per micro-batch and depth, the token-mean loss and the
    correct/total counts of the depth's greedy token against the true token t+1+k, on the
    ranks that hold the MTP block (the last pipeline stage). Its own reduction averages
    with ReduceOp.AVG, which gloo lacks, over the data-parallel group only; so every rank
    contributes here (zeros off the MTP ranks) and the mean is over the contributing ranks.
    Tensor-parallel copies carry equal values and leave the means unchanged.
    """
    if not mtp_depths:
        return {}
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    tracker = MTPLossLoggingHelper.tracker
    totals = torch.zeros(3 * mtp_depths + 1, dtype=torch.float64, device=device)
    if tracker.get("avg_group") is not None:  # set by this step's forward, cleared below
        totals[:mtp_depths] = tracker["loss_values"].to(torch.float64) / num_microbatches
        totals[mtp_depths:2 * mtp_depths] = tracker["correct_values"].to(torch.float64)
        totals[2 * mtp_depths:3 * mtp_depths] = tracker["total_values"].to(torch.float64)
        totals[-1] = 1
        MTPLossLoggingHelper.clean_metrics_in_tracker()
    dist.all_reduce(totals)
    losses = totals[:mtp_depths] / totals[-1].clamp(min=1)
    accuracies = totals[mtp_depths:2 * mtp_depths] / totals[2 * mtp_depths:3 * mtp_depths].clamp(min=1)
    metrics = {}
    for depth in range(mtp_depths):
        metrics[f"mtp_{depth + 1}_loss"] = losses[depth].item()
        metrics[f"mtp_{depth + 1}_accuracy"] = accuracies[depth].item()
    return metrics


def connect_megatron_hooks(setup, optimizer) -> None:
    """Give Megatron-Core's schedules the DDP sync, grad finalisation and loss scaling."""
    config = setup.transformer_config
    (chunk,) = setup.chunks  # one chunk per rank: the interleaved pipeline is refused in validation
    config.no_sync_func = chunk.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss


def _should_save(checkpoint_cfg, step: int, max_steps: int) -> bool:
    if checkpoint_cfg.save_interval and step % checkpoint_cfg.save_interval == 0:
        return True
    return checkpoint_cfg.save_final and step == max_steps


def _any_rank(flag: bool, device) -> bool:
    # int32 is supported by both gloo and NCCL reductions, unlike bool.
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def run_summary(result: TrainResult, run, run_dir: Path) -> str:
    """The one line a run ends with: steps, validation losses, tokens, time, where things are."""
    tokens = run.state.consumed_samples * run.config.model.seq_length
    parts = [f"steps {result.start_step + 1}-{result.final_step} of {run.config.train.max_steps}"
             if result.final_step > result.start_step else f"no step run (at {result.final_step})"]
    if result.valid_losses:
        best_step, best = min(result.valid_losses, key=lambda item: item[1])
        parts.append(f"final valid loss {result.valid_losses[-1][1]:.4f}, best {best:.4f} (step {best_step})")
    elif result.losses:
        parts.append(f"final loss {result.losses[-1][1]:.4f}")
    parts.append(f"{tokens:,} tokens")
    if result.skipped_steps or result.rollbacks:
        parts.append(f"{result.skipped_steps} skipped, {result.rollbacks} rollbacks")
    parts.append(f"wall {format_duration(time.perf_counter() - run.metrics.start_time)}")
    parts.append(f"checkpoint {result.checkpoint or 'none'}")
    parts.append(f"metrics {Path(run_dir) / 'metrics.jsonl'}")
    state = "interrupted" if result.interrupted else "done"
    return f"[nemotron-train] {state}: " + " | ".join(parts)


def _agree_on_run_dir(run_dir: Path) -> Path:
    # Each torchrun process composes its own timestamped Hydra dir; rank 0's wins.
    holder = [str(run_dir)]
    dist.broadcast_object_list(holder, src=0)
    agreed = Path(holder[0])
    if agreed != run_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()  # the empty dir Hydra made for this rank (it writes nothing there)
    return agreed


def _evaluations(train_cfg) -> int:
    return max(1, train_cfg.max_steps // train_cfg.eval_interval) if train_cfg.eval_interval else 1
