"""The random seeds of one rank (the run's seed, offset per pipeline stage as Megatron-LM does),
and deterministic kernels where a run asks for them.

Megatron-LM (`megatron.training.initialize._set_random_seed`) adds 100 x the pipeline rank to
the seed before seeding Python, NumPy, torch and Megatron-Core's tensor-parallel RNG tracker
(which adds its own tensor- and expert-parallel offsets). Without the stage offset every stage
starts from the same RNG state, so the repeated layer blocks of an even pipeline split (Ultra's
PP4) would be initialised with identical weights.
"""

import os
import random

import numpy
import torch

PIPELINE_SEED_STRIDE = 100
"""Megatron-LM's seed offset per pipeline rank."""


def stage_seed(seed: int, pipeline_rank: int) -> int:
    """The seed pipeline stage `pipeline_rank` draws from."""
    return seed + PIPELINE_SEED_STRIDE * pipeline_rank


def seed_this_rank(seed: int) -> int:
    """Seed Python, NumPy, torch and Megatron-Core's RNG tracker for this rank's pipeline stage
    (Megatron-Core's groups must exist); return the stage seed."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    seeded = stage_seed(seed, parallel_state.get_pipeline_model_parallel_rank())
    random.seed(seeded)
    numpy.random.seed(seeded)
    torch.manual_seed(seeded)
    model_parallel_cuda_manual_seed(seeded)
    return seeded


def use_deterministic_kernels() -> None:
    """Make every CUDA kernel of this process deterministic (`train.deterministic`): torch's
    deterministic algorithms (flash attention's backward among them; index_add for the MoE
    unpermute), cuBLAS's fixed workspace, which it reads when its first handle is made, and
    TransformerEngine's deterministic attention, which Megatron-Core's deterministic_mode
    requires and TE reads when its attention is built."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    torch.use_deterministic_algorithms(True)
