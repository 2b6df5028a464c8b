"""Run Megatron-Core's own modules on a machine without CUDA.

Megatron-Core has no CPU path: it allocates on `torch.cuda.current_device()`,
names `device="cuda"` in literals, keeps its tensor-parallel RNG states in the
CUDA generator, creates CUDA streams and events, and copies MoE split sizes
device-to-host expecting a CUDA source. `activate()` gives each of those a CPU
stand-in, in this one module, and only when CUDA is absent; the model's modules,
the training loop and the state-dict keys stay exactly those of a GPU run.
Pinned to megatron-core 0.19.2 (see pyproject.toml); tests cover every patch.
"""

import contextlib
import logging
import time

import torch

from nemotron_train.runtime.device_redirect import CudaRedirectMode

_active = False


def activate() -> bool:
    """Install the CPU stand-ins once; return True if this machine needed them."""
    global _active
    if torch.cuda.is_available():
        return False
    if not _active:
        CudaRedirectMode(torch.device("cpu")).__enter__()  # entered for the life of the process
        _install_cuda_module_standins()
        _install_megatron_patches()
        # Megatron-Core's `jit_fuser` is torch.compile, applied at import time to small
        # elementwise fusions meant for GPU kernels; on CPU, inductor would spend the
        # first steps compiling C++ for them. Run them eagerly instead.
        torch._dynamo.config.disable = True
        _active = True
    return True


class _Stream:
    """A CUDA stream stand-in: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _Event()

    def synchronize(self):
        pass

    def query(self):
        return True


class _Event:
    """A CUDA event stand-in that records wall time for `elapsed_time`."""

    def __init__(self, *args, **kwargs):
        self._time = None

    def record(self, stream=None):
        self._time = time.perf_counter()

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end):
        return (end._time - self._time) * 1000.0


_DEFAULT_STREAM = _Stream()


def _install_cuda_module_standins():
    cuda = torch.cuda
    # A device, not the index 0: autograd runs backward functions outside torch-function
    # modes, so allocations there (`device=torch.cuda.current_device()`) must already
    # name the CPU.
    cuda.current_device = lambda: torch.device("cpu")
    cuda.device_count = lambda: 1
    cuda.set_device = lambda device: None
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.set_stream = lambda stream: None
    cuda.is_current_stream_capturing = lambda: False
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.memory_reserved = lambda device=None: 0
    cuda.max_memory_reserved = lambda device=None: 0
    cuda.reset_peak_memory_stats = lambda device=None: None
    cuda.memory_stats = lambda device=None: {}
    # The "CUDA generator" is the CPU default generator, so Megatron-Core's RNG
    # tracker forks (per-TP-rank and per-EP-rank seeds) govern the CPU draws.
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # torch.manual_seed itself calls cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None


def _install_megatron_patches():
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    tp_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state()
    )
    tp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: (
        torch.set_rng_state(new_state)
    )
    # The tracker warns when the CPU state moves inside a fork; here that is the design.
    logging.getLogger(tp_random.__name__).addFilter(
        lambda record: "CPU RNG state changed" not in record.getMessage()
    )

    def move_split_sizes_to_host(tensor, as_numpy=False, record_stream=False):
        # Megatron-Core converts to numpy only for CUDA sources; the all-to-all needs it always.
        if torch.is_tensor(tensor) and as_numpy:
            return tensor.numpy()
        return tensor

    moe_utils.maybe_move_tensor_to_cpu = move_split_sizes_to_host
    token_dispatcher.maybe_move_tensor_to_cpu = move_split_sizes_to_host
    _install_uneven_collectives()
    # Activation recompute re-runs forward code inside autograd's backward, where
    # torch-function modes are inactive: redirect CUDA allocations there too.
    for function in (tp_random.CheckpointFunction, tp_random.CheckpointWithoutOutputFunction):
        function.backward = _with_cpu_redirect(function.backward)


def _with_cpu_redirect(backward):
    def backward_on_cpu(ctx, *grads):
        with CudaRedirectMode(torch.device("cpu")):
            return backward(ctx, *grads)

    return staticmethod(backward_on_cpu)


def _install_uneven_collectives():
    """Uneven all-gather / reduce-scatter over gloo, which accepts equal sizes only.

    The MoE dispatchers gather and scatter per-rank token counts that differ across
    the expert-tensor-parallel group; NCCL takes uneven lists, gloo does not. Pad each
    rank's block to the largest, use the equal-size collective, then cut the padding.
    """
    import torch.distributed as dist
    from megatron.core.tensor_parallel import mappings

    gather_equal = mappings._gather_along_first_dim
    reduce_scatter_equal = mappings._reduce_scatter_along_first_dim

    def gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or len(set(output_split_sizes)) <= 1:
            return gather_equal(input_, group, output_split_sizes, use_global_buffer)
        width = max(output_split_sizes)
        padded = input_.new_zeros((width, *input_.shape[1:]))
        padded[: input_.size(0)] = input_
        gathered = input_.new_empty((width * group.size(), *input_.shape[1:]))
        dist.all_gather_into_tensor(gathered, padded.contiguous(), group=group)
        return torch.cat([gathered[rank * width: rank * width + size]
                          for rank, size in enumerate(output_split_sizes)])

    def reduce_scatter_along_first_dim(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or len(set(input_split_sizes)) <= 1:
            return reduce_scatter_equal(input_, group, input_split_sizes, use_global_buffer)
        width = max(input_split_sizes)
        blocks = []
        for block in torch.split(input_, input_split_sizes, dim=0):
            padded = input_.new_zeros((width, *input_.shape[1:]))
            padded[: block.size(0)] = block
            blocks.append(padded)
        output = input_.new_empty((width, *input_.shape[1:]))
        dist.reduce_scatter_tensor(output, torch.cat(blocks), group=group)
        return output[: input_split_sizes[group.rank()]]

    mappings._gather_along_first_dim = gather_along_first_dim
    mappings._reduce_scatter_along_first_dim = reduce_scatter_along_first_dim
