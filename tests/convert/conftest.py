import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A model transformers' NemotronH expresses, with every layer type, LatentMoE, group-limited
# routing and one shared MTP block at 2 depths; sizes divide by 2 for TP2 x EP2.
CONVERTIBLE_MODEL = [
    "recipe=tiny", "model.pattern=M*E-ME/*E/*E", "model.num_layers=6", "model.hidden_size=64",
    "model.seq_length=64", "model.vocab_size=4096", "model.head_dim=16", "model.mamba_head_dim=16",
    "model.mamba_state_dim=16", "model.mamba_chunk_size=16", "model.ffn_hidden_size=96",
    "model.num_experts=16", "model.moe_router_topk=4", "model.moe_ffn_hidden_size=32",
    "model.moe_shared_expert_intermediate_size=48", "model.moe_latent_size=32",
    "model.moe_router_num_groups=4", "model.moe_router_group_topk=2",
]


def run_train(run_dir: Path, overrides: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory of CONVERTIBLE_MODEL after 2 optimizer steps (the expert bias has moved)."""
    run_dir = tmp_path_factory.mktemp("trained")
    result = run_train(run_dir, [*CONVERTIBLE_MODEL, "train.max_steps=2", "train.global_batch_size=4",
                                 "train.micro_batch_size=2", "optim.warmup_steps=1"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return run_dir
