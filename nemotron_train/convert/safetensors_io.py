"""Hugging Face safetensors checkpoints, read through memory maps and written shard by shard.

The format (https://github.com/huggingface/safetensors): 8 bytes of little-endian header
length, a JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
then the raw little-endian tensor bytes (offsets relative to the end of the header). A sharded
checkpoint adds `model.safetensors.index.json` with a `weight_map` from name to file.

Written here rather than through the `safetensors` package because conversion must stream:
its reader copies every tensor it returns and its writer takes a whole dict at once. Here a
tensor read is a view of the file's pages (nothing is copied until it is used) and a tensor
written goes straight to disk, so converting a model never holds a copy of it in memory.
"""

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from nemotron_train.errors import ConfigError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_HEADER_LIMIT = 100 * 2**20  # the format's own limit on the JSON header


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: its file, dtype, shape and byte range in the file's data."""

    file: Path
    dtype: torch.dtype
    shape: tuple
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _file_error(path: Path, problem: str) -> ConfigError:
    return ConfigError("file", str(path), f"{problem}; re-download or re-export the checkpoint")


def read_header(path: Path) -> tuple[dict, int]:
    """The parsed header of one .safetensors file and the offset where its data starts."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _file_error(path, f"not a safetensors file ({size} bytes, no header length)")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > min(_HEADER_LIMIT, size - 8):
            raise _file_error(path, f"header length {header_size} exceeds the file ({size} bytes)")
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _file_error(path, f"corrupt header ({error})") from None
    if not isinstance(header, dict):
        raise _file_error(path, "corrupt header (not a JSON object)")
    return header, 8 + header_size


def _tensor_infos(path: Path) -> dict[str, TensorInfo]:
    header, data_start = read_header(path)
    data_size = path.stat().st_size - data_start
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _file_error(path, f"tensor {name!r} has a malformed header entry {entry!r}") from None
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected or begin < 0 or end > data_size:
            raise _file_error(path, f"tensor {name!r} needs {expected} bytes at [{begin}, {end}) of "
                                    f"{data_size} data bytes: the file is truncated or corrupt")
        infos[name] = TensorInfo(path, dtype, shape, data_start + begin, data_start + end)
    return infos


class SafetensorsReader:
    """Every tensor of a Hugging Face checkpoint directory, memory-mapped.

    `tensor(name)` returns a tensor over the file's pages (copy-on-write, so a stray write
    never reaches the file); the operating system pages it in when it is read and may drop
    it again afterwards, so reading a whole model costs page cache, not process memory.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self._maps: dict[Path, mmap.mmap] = {}
        self.infos: dict[str, TensorInfo] = {}
        for file in self._files():
            for name, info in _tensor_infos(file).items():
                if name in self.infos:
                    raise _file_error(file, f"tensor {name!r} is also in {self.infos[name].file.name}")
                self.infos[name] = info
        self._check_index()

    def _files(self) -> list[Path]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise _file_error(index, "corrupt index (no weight_map)") from None
            self._weight_map = weight_map
            files = sorted({self.directory / name for name in weight_map.values()})
            for file in files:
                if not file.is_file():
                    raise _file_error(file, f"missing: {INDEX_FILE} lists it")
            return files
        self._weight_map = None
        single = self.directory / SINGLE_FILE
        if single.is_file():
            return [single]
        raise ConfigError("--hf-dir", str(self.directory),
                          f"holds neither {SINGLE_FILE} nor {INDEX_FILE}: name a Hugging Face "
                          "checkpoint directory")

    def _check_index(self) -> None:
        if self._weight_map is None:
            return
        for name, file in self._weight_map.items():
            info = self.infos.get(name)
            if info is None or info.file.name != file:
                raise _file_error(self.directory / file, f"tensor {name!r} is listed in {INDEX_FILE} "
                                                         "but not stored in this file")

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, viewing the file's memory map (no copy)."""
        info = self.infos[name]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        mapped = self._maps.get(info.file)
        if mapped is None:
            with open(info.file, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[info.file] = mapped
        flat = torch.frombuffer(mapped, dtype=info.dtype, count=info.nbytes // info.dtype.itemsize,
                                offset=info.begin)
        return flat.view(info.shape)

    def close(self) -> None:
        """Drop the memory maps; tensors returned earlier must no longer be used."""
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # a tensor still views it; the map closes when that tensor goes
                pass
        self._maps.clear()


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor the writer expects: its name, dtype and shape, in writing order."""

    name: str
    dtype: torch.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Split `tensors` (in writing order) into shards of at most `max_shard_bytes` each.

    A tensor larger than the bound gets a shard of its own.
    """
    shards, current, current_bytes = [], [], 0
    for tensor in tensors:
        if current and current_bytes + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(tensor)
        current_bytes += tensor.nbytes
    if current:
        shards.append(current)
    return shards


def shard_file_names(count: int) -> list[str]:
    """Hugging Face's names: model.safetensors alone, else model-0000k-of-0000n.safetensors."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{index:05d}-of-{count:05d}.safetensors" for index in range(1, count + 1)]


class SafetensorsWriter:
    """Writes a planned list of tensors into bounded .safetensors shards as they arrive.

    The plan fixes every shard's header before its data, so each `write` goes straight to
    disk; tensors must come in the planned order. `finish` writes the index (for more than
    one shard) and returns the file names.
    """

    def __init__(self, directory, tensors: list[PlannedTensor], max_shard_bytes: int,
                 metadata: dict | None = None):
        self.directory = Path(directory)
        self._shards = plan_shards(tensors, max_shard_bytes)
        self._names = shard_file_names(len(self._shards))
        self._metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(shard_index, planned) for shard_index, shard in enumerate(self._shards)
                       for planned in shard]
        self._position = 0
        self._open_index = -1
        self._handle = None
        self.bytes_written = 0

    def _open_shard(self, shard_index: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header, offset = {"__metadata__": self._metadata}, 0
        for planned in self._shards[shard_index]:
            header[planned.name] = {"dtype": DTYPE_NAMES[planned.dtype], "shape": list(planned.shape),
                                    "data_offsets": [offset, offset + planned.nbytes]}
            offset += planned.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data aligned to 8 bytes, as the reference writer does
        self._handle = open(self.directory / self._names[shard_index], "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._open_index = shard_index

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor."""
        if self._position >= len(self._queue):
            raise ValueError(f"{name!r}: every planned tensor was already written")
        shard_index, planned = self._queue[self._position]
        if name != planned.name or tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise ValueError(f"expected {planned.name!r} {planned.dtype} {list(planned.shape)} next, "
                             f"got {name!r} {tensor.dtype} {list(tensor.shape)}")
        if shard_index != self._open_index:
            self._open_shard(shard_index)
        if tensor.numel():
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._handle.write(memoryview(data.numpy()))
        self.bytes_written += planned.nbytes
        self._position += 1

    def finish(self) -> list[str]:
        """Close the last shard and write the index; every planned tensor must have come."""
        if self._position != len(self._queue):
            missing = self._queue[self._position][1].name
            raise ValueError(f"{len(self._queue) - self._position} planned tensors not written "
                             f"(next: {missing!r})")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if len(self._names) > 1:
            weight_map = {planned.name: self._names[index] for index, planned in self._queue}
            index = {"metadata": {"total_size": self.bytes_written}, "weight_map": weight_map}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return list(self._names)
