"""Our streaming safetensors reader and writer against the `safetensors` package itself."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemotron_train.errors import ConfigError
from nemotron_train.convert.safetensors_io import (
    INDEX_FILE,
    PlannedTensor,
    SafetensorsReader,
    SafetensorsWriter,
    plan_shards,
)


def sample_tensors() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(33, 7, generator=generator),
        "b.bf16": torch.randn(5, 3, 2, generator=generator).to(torch.bfloat16),
        "c.int": torch.arange(11, dtype=torch.int64),
        "d.scalar": torch.tensor(3.5),
        "e.empty": torch.empty(0, 4),
        "f.half": torch.randn(64, generator=generator).half(),
    }


def write_all(directory, tensors: dict, max_shard_bytes: int) -> list[str]:
    plan = [PlannedTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    writer = SafetensorsWriter(directory, plan, max_shard_bytes)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    return writer.finish()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def test_single_file_is_read_by_safetensors(tmp_path):
    tensors = sample_tensors()
    assert write_all(tmp_path, tensors, 10**9) == ["model.safetensors"]
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert loaded.keys() == tensors.keys()
    assert all(same_bits(loaded[name], tensors[name]) for name in tensors)
    assert not (tmp_path / INDEX_FILE).exists()


def test_shards_stay_within_the_bound_and_the_index_is_right(tmp_path):
    tensors = sample_tensors()
    names = write_all(tmp_path, tensors, max_shard_bytes=300)
    assert len(names) > 1 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for name in names:
        shard = load_file(str(tmp_path / name))
        data_bytes = sum(t.numel() * t.element_size() for t in shard.values())
        # 33 x 7 fp32 is 924 bytes, over the bound: a shard of its own; the rest stay within it.
        assert data_bytes <= 300 or len(shard) == 1
        assert all(index["weight_map"][k] == name and same_bits(v, tensors[k]) for k, v in shard.items())


def test_reader_reads_what_safetensors_writes_without_copying(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reader = SafetensorsReader(tmp_path)
    assert set(reader.infos) == set(tensors)
    for name, tensor in tensors.items():
        read = reader.tensor(name)
        assert same_bits(read, tensor)
        if tensor.numel():  # a view of the file's memory map, exactly its own bytes
            assert read.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    reader.close()


def test_reader_follows_an_index(tmp_path):
    tensors = sample_tensors()
    write_all(tmp_path, tensors, max_shard_bytes=300)
    reader = SafetensorsReader(tmp_path)
    assert all(same_bits(reader.tensor(name), tensors[name]) for name in tensors)


def test_plan_keeps_order_and_puts_an_oversized_tensor_alone():
    plan = [PlannedTensor(f"t{i}", torch.float32, (n,)) for i, n in enumerate([10, 10, 100, 10])]
    shards = plan_shards(plan, max_shard_bytes=80)
    assert [[t.name for t in shard] for shard in shards] == [["t0", "t1"], ["t2"], ["t3"]]


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    writer = SafetensorsWriter(tmp_path, [PlannedTensor("x", torch.float32, (2,))], 10**9)
    with pytest.raises(ValueError, match="expected 'x'"):
        writer.write("x", torch.zeros(3))
    with pytest.raises(ValueError, match="1 planned tensors not written"):
        writer.finish()


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:-5]), "truncated or corrupt"),
    (lambda path: path.write_bytes(path.read_bytes()[:8] + b"{not json" + path.read_bytes()[17:]), "corrupt header"),
    (lambda path: path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:]), "header length"),
    (lambda path: path.write_bytes(b"abc"), "not a safetensors file"),
])
def test_damaged_files_are_named(tmp_path, damage, message):
    save_file(sample_tensors(), str(tmp_path / "model.safetensors"))
    damage(tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=message) as raised:
        SafetensorsReader(tmp_path)
    assert raised.value.value == str(tmp_path / "model.safetensors")


def test_a_shard_the_index_lists_must_exist(tmp_path):
    names = write_all(tmp_path, sample_tensors(), max_shard_bytes=300)
    missing = tmp_path / names[1]
    missing.unlink()
    with pytest.raises(ConfigError, match="missing") as raised:
        SafetensorsReader(tmp_path)
    assert raised.value.value == str(missing)


def test_a_directory_without_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="neither model.safetensors nor"):
        SafetensorsReader(tmp_path)
