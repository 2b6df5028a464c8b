"""What each step achieved: model TFLOP/s per GPU, MFU, peak memory, and MoE expert load.

The model FLOPs come from the dry-run accounting, computed where the run starts (entry.py)
and handed in as a `ModelFlops`; training only multiplies it by the tokens of a step.
Megatron-Core counts routed tokens per expert only for the expert-bias update (and zeroes
them in `finalize_model_grads`), so the expert load is counted here, from the routing map
every router returns, on the steps that log it.
"""

import math
import resource
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state

from nemotron_train.precision.policy import global_module_name, stage_first_layer_index
from nemotron_train.runtime.backends import cuda_available

# Dense BF16 tensor-core peaks (TFLOP/s per GPU) by device name; MFU is quoted against BF16
# whatever the run's precision, as the Nemotron and Megatron-LM reports do.
BF16_PEAK_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class ModelFlops:
    """Training FLOPs (forward + backward) of the model per token."""

    per_token: float
    """At `seq_length`."""
    seq_length: int
    attention_per_context_token: float = 0.0
    """d per_token / d seq_length (the attention core), so that steps at another sequence
    length (mixed-length training) are counted right."""

    def per_step(self, tokens: int, seq_length: int) -> float:
        """FLOPs of a step of `tokens` tokens in sequences of `seq_length`."""
        per_token = self.per_token + self.attention_per_context_token * (seq_length - self.seq_length)
        return tokens * per_token


def device_peak_tflops() -> Optional[float]:
    """This GPU's dense BF16 peak from its name (None on CPU or an unknown GPU)."""
    if not cuda_available():
        return None
    name = torch.cuda.get_device_name()
    for marker, peak in BF16_PEAK_TFLOPS:
        if marker in name:
            return peak
    return None


def step_throughput(flops: Optional[ModelFlops], tokens: int, seq_length: int, seconds: float,
                    world_size: int, peak_tflops: Optional[float]) -> dict:
    """`tflops_per_s` (model FLOPs per GPU) and `mfu` against `peak_tflops` (when known)."""
    if flops is None or seconds <= 0:
        return {}
    tflops = flops.per_step(tokens, seq_length) / seconds / world_size / 1e12
    metrics = {"tflops_per_s": tflops}
    if peak_tflops:
        metrics["mfu"] = tflops / peak_tflops
    return metrics


def peak_memory_gb() -> float:
    """Peak memory of this process so far: CUDA's max allocated, or the peak RSS on CPU."""
    if cuda_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


class ExpertLoadCounter:
    """Tokens routed to each expert of every MoE layer, over the steps it is enabled for."""

    def __init__(self, model_chunks):
        from megatron.core.transformer.moe.router import TopKRouter

        self.enabled = False
        self._counts: dict[str, torch.Tensor] = {}
        for chunk in model_chunks:
            model = getattr(chunk.module, "module", chunk.module)  # under Float16Module
            first_layer = stage_first_layer_index(model)
            for name, module in model.named_modules():
                if isinstance(module, TopKRouter):
                    module.register_forward_hook(self._hook(_global_layer_name(name, first_layer)))

    def _hook(self, layer: str):
        def count(module, inputs, output):
            # Under no_grad it is evaluation; training forwards count once per micro-batch.
            if self.enabled and torch.is_grad_enabled():
                routed = output[1].sum(dim=0, dtype=torch.float32)
                self._counts[layer] = self._counts.get(layer, 0) + routed.detach()
        return count

    def collect(self, device) -> dict:
        """Per layer: tokens per expert (over data, context and tensor ranks) and their min,
        max and coefficient of variation; then reset. Every rank must call this."""
        local = {}
        group = parallel_state.get_tensor_and_data_parallel_group(with_context_parallel=True)
        for layer in sorted(self._counts):
            counts = self._counts[layer].to(device)
            dist.all_reduce(counts, group=group)
            local[layer] = counts.tolist()
        self._counts.clear()
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)  # pipeline stages hold different layers
        merged = {layer: tokens for stage in gathered for layer, tokens in stage.items()}
        return {layer: _load_summary(tokens) for layer, tokens in sorted(merged.items())}


def _load_summary(tokens: list) -> dict:
    mean = sum(tokens) / len(tokens)
    variance = sum((t - mean) ** 2 for t in tokens) / len(tokens)
    return {"tokens": [int(t) for t in tokens], "min": int(min(tokens)), "max": int(max(tokens)),
            "cv": math.sqrt(variance) / mean if mean else 0.0}


def _global_layer_name(router_name: str, first_layer: int) -> str:
    """'decoder.layers.<global i>' (or 'mtp.layers.<d>...') for a router's module name."""
    return global_module_name(router_name, first_layer).removesuffix(".mlp.router")
