"""One job's Megatron-Core runtime in this process, and the process-wide state Megatron-Core
keeps between jobs (reset so that a second job in one process, a test say, starts clean)."""

from contextlib import contextmanager

import torch
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

from nemotron_train.runtime.distributed import destroy_distributed, initialize_distributed
from nemotron_train.runtime.setup import prepare_runtime


@contextmanager
def megatron_session(parallel):
    """One job's Megatron-Core runtime in this process: the machine's runtime (CPU stand-ins
    where there is no CUDA), Megatron-Core's globals reset, the process groups of `parallel`
    (a ParallelConfig). Yields `(runtime, context)`; on exit the globals are reset and the
    groups destroyed, so a later session in the same process starts clean."""
    runtime = prepare_runtime()
    reset_megatron_globals()
    context = initialize_distributed(parallel)
    try:
        yield runtime, context
    finally:
        reset_megatron_globals()
        destroy_distributed()


def reset_megatron_globals() -> None:
    """Process-wide state Megatron-Core keeps between runs (a second run in one process
    would inherit it): the microbatch calculator, the MoE/MTP metric trackers sized by the
    first model, and the aux-loss scales aliased to the first run's loss-scale tensor."""
    from megatron.core.transformer.moe.moe_logging import destroy_moe_metrics_tracker
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler
    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler, MTPLossLoggingHelper

    destroy_num_microbatches_calculator()
    destroy_moe_metrics_tracker()
    MTPLossLoggingHelper.tracker.clear()
    MoEAuxLossAutoScaler.main_loss_backward_scale = None
    MTPLossAutoScaler.main_loss_backward_scale = torch.tensor(1.0)  # its class default
