"""Two processes of one job: each pipeline stage draws its own weights, and only rank 0 writes
Hydra's files into the run directory.

One real PP2 run (torchrun, gloo) of a pattern whose two stages repeat the same block
(`M*E|M*E` split evenly); each rank's Hydra directory is named after its RANK, so a rank that
wrote Hydra's files would leave them under its own name.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_train.config.hydra_output import rank_zero_only_overrides
from nemotron_train.training.seeding import stage_seed

REPO = Path(__file__).resolve().parents[2]
# Layer l on stage 0 and layer l + 3 on stage 1 are the same module type at the same position.
REPEATED_BLOCK = ["model.pattern=M*EM*E", "model.num_layers=6"]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp2")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py",
        "recipe=tiny", *REPEATED_BLOCK, "parallel.pipeline=2", "train.max_steps=1",
        "optim.warmup_steps=0", "logging.log_interval=1", "checkpoint.save_initial=true",
        "checkpoint.save_final=false", f"hydra.run.dir={root}/rank${{oc.env:RANK}}",
    ]
    python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root


def test_only_rank_zero_writes_hydra_files(pipeline_run):
    rank0 = pipeline_run / "rank0"
    assert (rank0 / ".hydra" / "config.yaml").is_file() and (rank0 / "train.log").is_file()
    assert (rank0 / "metrics.jsonl").is_file() and (rank0 / "config.yaml").is_file()
    assert not (pipeline_run / "rank1").exists()  # neither .hydra/, a log, nor an empty dir


def test_pipeline_stages_initialise_repeated_blocks_differently(pipeline_run, single_process):
    from megatron.core.dist_checkpointing import load_plain_tensors

    tensors = load_plain_tensors(str(pipeline_run / "rank0" / "checkpoints" / "iter_0000000"))
    drawn = 0
    for name, stage0 in tensors.items():
        match = re.fullmatch(r"(.*decoder\.layers\.)([012])(\..*)", name)
        if match is None or stage0.unique().numel() < 2:  # constant inits (norms, D) are equal
            continue
        stage1 = tensors[f"{match[1]}{int(match[2]) + 3}{match[3]}"]
        # The same RNG state on both stages drew identical conv, bias and weight values.
        assert not torch.equal(stage0, stage1), f"{name} equals its copy on stage 1"
        drawn += 1
    assert drawn >= 10  # every layer type's random parameters were compared


def test_stage_seeds_are_distinct_and_stage_zero_keeps_the_run_seed():
    seeds = [stage_seed(1234, rank) for rank in range(8)]
    assert seeds[0] == 1234 and len(set(seeds)) == 8


def test_hydra_overrides_only_off_rank_zero():
    assert rank_zero_only_overrides({}) == [] == rank_zero_only_overrides({"RANK": "0"})
    assert "hydra.output_subdir=null" in rank_zero_only_overrides({"RANK": "1"})
