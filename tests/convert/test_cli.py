"""The convert commands: results, and bad input named with nothing half-written left behind."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemotron_train.errors import ConfigError
from nemotron_train.convert import export_hf as export_module
from nemotron_train.convert.cli import main
from tests.convert.conftest import REPO
from tests.convert.hf_models import save_hf_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "tiny"
    save_hf_checkpoint(directory)
    return directory


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("imported") / "ours"
    assert main(["import-hf", "--hf-dir", str(hf_dir), "--output", str(output)]) == 0
    return output


def copy_of(directory, tmp_path):
    copy = tmp_path / "hf"
    copy.mkdir()
    for file in directory.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def refused(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def no_output_left(output) -> bool:
    return not output.exists() and not list(output.parent.glob(output.name + ".partial-*"))


def test_logits_command_saves_float32_logits(imported, tmp_path):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]))
    assert main(["logits", "--checkpoint", str(imported), "--input-ids", str(ids),
                 "--output", str(tmp_path / "logits.pt")]) == 0
    logits = torch.load(tmp_path / "logits.pt")
    assert logits.dtype == torch.float32 and logits.shape == (2, 5, 256)


def test_compare_hf_passes_on_a_faithful_import_and_fails_on_other_weights(hf_dir, imported, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nemotron_train.convert", "compare-hf", "--hf-dir", str(hf_dir),
               "--checkpoint", str(imported), "--seq-length", "21", "--json", str(tmp_path / "same.json")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "within tolerance 1e-04" in result.stdout
    assert json.loads((tmp_path / "same.json").read_text())["passed"]
    other = tmp_path / "other"
    save_hf_checkpoint(other, seed=1)  # same architecture, other weights
    assert main(["compare-hf", "--hf-dir", str(other), "--checkpoint", str(imported),
                 "--json", str(tmp_path / "other.json")]) == 1
    assert json.loads((tmp_path / "other.json").read_text())["max_rel_diff"] > 0.1


def test_a_missing_shard_is_named(hf_dir, tmp_path, capsys):
    copy = copy_of(hf_dir, tmp_path)
    (copy / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: "model-00002-of-00002.safetensors"
                        for name in load_file(str(copy / "model.safetensors"))}}))
    error = refused(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "out")], capsys)
    assert "model-00002-of-00002.safetensors" in error and "missing" in error
    assert no_output_left(tmp_path / "out")


def test_a_truncated_file_is_named(hf_dir, tmp_path, capsys):
    copy = copy_of(hf_dir, tmp_path)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    error = refused(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "out")], capsys)
    assert str(weights) in error and "truncated" in error
    assert no_output_left(tmp_path / "out")


def test_an_unsupported_config_field_is_named(hf_dir, tmp_path, capsys):
    copy = copy_of(hf_dir, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    error = refused(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "out")], capsys)
    assert "config.json:quantization_config" in error
    assert no_output_left(tmp_path / "out")


def test_a_pattern_that_does_not_fit_the_weights_is_named(hf_dir, tmp_path, capsys):
    copy = copy_of(hf_dir, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["layers_block_type"] = config["layers_block_type"][:-1]  # one layer fewer than stored
    (copy / "config.json").write_text(json.dumps(config))
    error = refused(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "out")], capsys)
    assert "does not account for" in error and "backbone.layers.5." in error
    assert no_output_left(tmp_path / "out")


def test_a_tensor_of_the_wrong_shape_is_named(hf_dir, tmp_path, capsys):
    copy = copy_of(hf_dir, tmp_path)
    tensors = load_file(str(copy / "model.safetensors"))
    tensors["backbone.layers.1.mixer.k_proj.weight"] = tensors["backbone.layers.1.mixer.k_proj.weight"][:16]
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    error = refused(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "out")], capsys)
    assert "backbone.layers.1.mixer.k_proj.weight" in error and "[16, 64]" in error and "[32, 64]" in error
    assert no_output_left(tmp_path / "out")


def test_a_checkpoint_without_its_config_is_refused(imported, tmp_path, capsys):
    bare = tmp_path / "bare"
    (bare / "iter_0000000").mkdir(parents=True)
    for file in (imported / "checkpoints" / "iter_0000000").iterdir():
        (bare / "iter_0000000" / file.name).write_bytes(file.read_bytes())
    (bare / "latest").write_text("iter_0000000")
    error = refused(["export-hf", "--checkpoint", str(bare), "--output", str(tmp_path / "out")], capsys)
    assert "no config.yaml found" in error and "--config" in error
    assert no_output_left(tmp_path / "out")
    assert main(["export-hf", "--checkpoint", str(bare), "--config", str(imported / "config.yaml"),
                 "--output", str(tmp_path / "out")]) == 0


def test_an_existing_output_is_never_overwritten(imported, hf_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    for argv in (["import-hf", "--hf-dir", str(hf_dir)], ["export-hf", "--checkpoint", str(imported)]):
        assert "exists and is not empty" in refused([*argv, "--output", str(tmp_path / "taken")], capsys)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_a_failure_halfway_through_an_export_leaves_nothing(imported, tmp_path, monkeypatch):
    written = []

    def failing_write(self, name, tensor):
        written.append(name)
        if len(written) == 5:
            raise OSError("disk full")
        original(self, name, tensor)

    original = export_module.SafetensorsWriter.write
    monkeypatch.setattr(export_module.SafetensorsWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        export_module.export_hf(imported, tmp_path / "out", log=lambda line: None)
    assert len(written) == 5 and no_output_left(tmp_path / "out")



def test_the_embedding_name_of_transformers_5_13_to_5_15_is_read(hf_dir, tmp_path):
    copy = copy_of(hf_dir, tmp_path)
    tensors = load_file(str(copy / "model.safetensors"))
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert main(["import-hf", "--hf-dir", str(copy), "--output", str(tmp_path / "ours")]) == 0
    assert main(["export-hf", "--checkpoint", str(tmp_path / "ours"), "--output", str(tmp_path / "back"),
                 "--dtype", "fp32"]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert torch.equal(back["backbone.embeddings.weight"], tensors["backbone.embedding.weight"])


def test_hf_load_takes_an_import_hf_output_as_is(imported):
    from nemotron_train.config.schema import load_run_config
    from nemotron_train.convert.hf_source import resolve_hf_load

    config = load_run_config(imported)
    config.checkpoint.load = f"hf:{imported}"
    assert resolve_hf_load(config) == imported / "checkpoints"
    config.model.hidden_size = 128
    with pytest.raises(ConfigError, match="model.hidden_size: recipe 128 != checkpoint 64"):
        resolve_hf_load(config)
