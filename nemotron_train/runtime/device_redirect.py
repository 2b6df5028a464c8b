"""Send every allocation or move that names a CUDA device to another device.

Megatron-Core allocates on `torch.cuda.current_device()` and in `device="cuda"`
literals. The CPU runtime redirects those to the CPU for the life of the
process; the dry run redirects them to the meta device to build full-size
modules without memory.
"""

import contextlib

import torch
from torch.overrides import TorchFunctionMode


def names_cuda(device) -> bool:
    """True for 'cuda', 'cuda:N', a CUDA torch.device, or a bare int (how Megatron names a GPU)."""
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class CudaRedirectMode(TorchFunctionMode):
    """A TorchFunctionMode rewriting CUDA device arguments to `target`."""

    def __init__(self, target: torch.device):
        super().__init__()
        self.target = target

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.record_stream:
            return None
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # The optimizers sort parameters by CUDA type names ('torch.cuda.FloatTensor').
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and names_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": self.target}
        if func is torch.Tensor.to and len(args) > 1 and names_cuda(args[1]):
            args = (args[0], self.target, *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def allocate_on(device: torch.device):
    """Within this block, both default and CUDA-named allocations land on `device`."""
    with torch.device(device), CudaRedirectMode(device):
        yield
