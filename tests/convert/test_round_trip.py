"""Conversions round-trip bit for bit, and an export loads in transformers with our logits.

HF -> ours -> HF and ours -> HF -> ours, both with an MTP block, LatentMoE, group-limited
routing and the router's fp32 expert bias; a checkpoint saved under TP2 x EP2 exports to
the same bytes as the single-process one (dist_checkpointing reshards, expert numbering
included).
"""

import os
import subprocess
import sys

import pytest
import torch
from megatron.core import dist_checkpointing
from safetensors.torch import load_file

from nemotron_train.convert.checkpoint_source import resolve_source
from nemotron_train.convert.checkpoint_tensors import (
    EMBEDDING,
    CheckpointTensorReader,
    build_meta_model,
    conversion_session,
    parameter_shapes,
)
from nemotron_train.convert.compare import compare_logits
from nemotron_train.convert.export_hf import export_hf
from nemotron_train.convert.hf_config import model_from_hf
from nemotron_train.convert.import_hf import import_hf
from nemotron_train.convert.logits import model_logits
from nemotron_train.convert.safetensors_io import INDEX_FILE
from tests.convert.conftest import CONVERTIBLE_MODEL, REPO
from tests.convert.hf_models import PARITY_CONFIGS, read_config, save_hf_checkpoint


def quiet(line: str) -> None:
    pass


def hf_tensors(directory) -> dict:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def our_tensors(path) -> dict:
    """Every parameter of a checkpoint of ours, by state-dict name."""
    source = resolve_source(path)
    with conversion_session():
        vocab_size = dist_checkpointing.load_tensors_metadata(str(source.iteration))[EMBEDDING].global_shape[0]
        meta_model = build_meta_model(source.config.model, vocab_size)
        return CheckpointTensorReader(source.iteration, meta_model).read(list(parameter_shapes(meta_model)))


def assert_same_bits(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), name


@pytest.mark.parametrize("dtype, export_dtype", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_hf_to_ours_to_hf_is_bit_exact(tmp_path, dtype, export_dtype):
    save_hf_checkpoint(tmp_path / "hf", PARITY_CONFIGS["latent_grouped_mtp"], dtype=dtype)
    import_hf(tmp_path / "hf", tmp_path / "ours", log=quiet)
    export_hf(tmp_path / "ours", tmp_path / "back", dtype=export_dtype, log=quiet)
    original = hf_tensors(tmp_path / "hf")
    assert any(name.startswith("mtp.layers.1.mixer.experts.") for name in original)
    assert original["backbone.layers.2.mixer.gate.e_score_correction_bias"].dtype == torch.float32
    assert_same_bits(hf_tensors(tmp_path / "back"), original)
    assert model_from_hf(read_config(tmp_path / "back")) == model_from_hf(read_config(tmp_path / "hf"))


def test_ours_to_hf_to_ours_is_bit_exact(tmp_path, trained_run):
    export_hf(trained_run, tmp_path / "hf", dtype="fp32", max_shard_bytes=200_000, log=quiet)
    assert (tmp_path / "hf" / INDEX_FILE).is_file()  # several bounded shards
    import_hf(tmp_path / "hf", tmp_path / "again", mtp_depths=2, log=quiet)
    original = our_tensors(trained_run)
    assert original["decoder.layers.2.mlp.router.expert_bias"].abs().max() > 0  # trained, not zeros
    assert_same_bits(our_tensors(tmp_path / "again"), original)


def test_an_export_loads_in_transformers_with_our_logits(tmp_path, trained_run):
    from transformers import AutoModelForCausalLM

    export_hf(trained_run, tmp_path / "hf", dtype="fp32", log=quiet)
    rows = torch.randint(0, 4096, (2, 37), generator=torch.Generator().manual_seed(5)).tolist()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(rows)).logits.float()
    ours = model_logits(resolve_source(trained_run), rows)
    comparison = compare_logits(ours, theirs, tolerance=1e-5)  # as tests/convert/test_parity.py says
    assert comparison.passed, comparison.summary()


def test_an_export_from_a_tp2_ep2_checkpoint_equals_the_single_process_export(tmp_path, trained_run):
    resharded = tmp_path / "tp2_ep2"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PROBE_OUT": str(tmp_path / "logits.pt"), "PROBE_SAVE": str(resharded)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "tests.parallel.logits_probe", *CONVERTIBLE_MODEL, "parallel.tensor=2",
               "parallel.sequence_parallel=true", "parallel.expert=2", "parallel.expert_tensor=1",
               f"checkpoint.load={trained_run / 'checkpoints'}", f"hydra.run.dir={tmp_path / 'probe'}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    export_hf(trained_run, tmp_path / "single", log=quiet)
    export_hf(resharded, tmp_path / "parallel", config_file=trained_run / "config.yaml", log=quiet)
    files = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "parallel").iterdir())
    for name in files:
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes(), name
