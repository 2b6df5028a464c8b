"""The .bin/.idx pair behind a Megatron-Core indexed dataset: writing, checking, publishing.

Megatron-Core reads the pair with bare asserts ("One or both of the .idx and .bin files
cannot be found", or a failed memory map deep in GPTDataset) and never compares the .bin's
size with what the .idx describes. `check_indexed_dataset` fills that gap before training.
"""

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

from nemotron_train.data.cache import unique_temporary_path

# The .idx layout written by Megatron-Core's _IndexWriter: a 9-byte magic, a version
# (uint64, always 1), a dtype code (uint8), the sequence count and the document count
# (uint64 each), then int32 sequence lengths, int64 sequence byte offsets and int64
# document boundaries (multimodal datasets append one int8 mode per sequence).
INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
INDEX_HEADER = struct.Struct("<9sQBQQ")


@dataclass(frozen=True, kw_only=True)
class IndexedDatasetInfo:
    """What an indexed dataset's .idx says about it, once checked against its .bin."""

    path_prefix: str
    """The dataset: path_prefix.idx and path_prefix.bin."""
    sequences: int
    """Sequences (one per document for data we prepare); GPTDataset splits over these."""
    documents: int
    """Documents."""
    tokens: int
    """Tokens in the .bin, end-of-document tokens included."""
    dtype: type
    """The numpy type of the stored token ids (uint16 or int32)."""


def check_indexed_dataset(path_prefix: str) -> IndexedDatasetInfo:
    """Check that `path_prefix`.idx and .bin exist and belong together; raise naming the file.

    Raises FileNotFoundError for a missing file and ValueError for a corrupt header or a
    .bin whose size differs from the one the .idx describes (a truncated file, or files of
    two different datasets).
    """
    idx_path, bin_path = get_idx_path(path_prefix), get_bin_path(path_prefix)
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"indexed dataset {path_prefix!r}: {path} does not exist "
                "(write the .bin/.idx pair with `python -m data_prep`)"
            )
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as index_file:
        header = index_file.read(INDEX_HEADER.size)
        if len(header) < INDEX_HEADER.size:
            raise ValueError(f"{idx_path} is truncated: {idx_size} bytes, shorter than its header")
        magic, version, dtype_code, sequences, document_boundaries = INDEX_HEADER.unpack(header)
        if magic != INDEX_MAGIC or version != INDEX_VERSION:
            raise ValueError(
                f"{idx_path} is not a Megatron indexed dataset index (bad magic or version)"
            )
        try:
            dtype = DType.dtype_from_code(dtype_code)
        except ValueError:
            raise ValueError(f"{idx_path} has an unknown token dtype code {dtype_code}") from None
        arrays_size = sequences * (4 + 8) + document_boundaries * 8
        if idx_size not in (
            INDEX_HEADER.size + arrays_size,
            INDEX_HEADER.size + arrays_size + sequences,
        ):
            raise ValueError(
                f"{idx_path} is truncated or corrupt: {idx_size} bytes for {sequences} sequences "
                f"and {document_boundaries} document boundaries"
            )
        tokens = 0
        if sequences:
            last_length = _read_scalar(
                index_file, INDEX_HEADER.size + 4 * (sequences - 1), numpy.int32
            )
            last_offset = _read_scalar(
                index_file, INDEX_HEADER.size + 4 * sequences + 8 * (sequences - 1), numpy.int64
            )
            tokens = last_offset // dtype().itemsize + last_length
    expected_bin_size = tokens * dtype().itemsize
    bin_size = os.path.getsize(bin_path)
    if bin_size != expected_bin_size:
        raise ValueError(
            f"{bin_path} has {bin_size} bytes but {idx_path} describes {expected_bin_size} "
            f"({tokens} tokens of {dtype.__name__}): the .bin is truncated or the pair comes "
            "from two different datasets"
        )
    return IndexedDatasetInfo(
        path_prefix=path_prefix,
        sequences=sequences,
        documents=max(document_boundaries - 1, 0),
        tokens=tokens,
        dtype=dtype,
    )


def _read_scalar(index_file, offset: int, dtype: type) -> int:
    index_file.seek(offset)
    return int(numpy.frombuffer(index_file.read(numpy.dtype(dtype).itemsize), dtype=dtype)[0])


@contextlib.contextmanager
def atomic_indexed_dataset_builder(output_prefix: str, dtype: type) -> Iterator[IndexedDatasetBuilder]:
    """A Megatron-Core IndexedDatasetBuilder that writes under a temporary name.

    When the block ends normally the pair is finalized and published onto `output_prefix`;
    when it raises, the temporary files are removed and an earlier dataset stays as it was.
    """
    temporary_prefix = unique_temporary_path(output_prefix)
    builder = IndexedDatasetBuilder(get_bin_path(temporary_prefix), dtype=dtype)
    try:
        yield builder
        builder.finalize(get_idx_path(temporary_prefix))
        publish_indexed_dataset(temporary_prefix, output_prefix)
    finally:
        builder.data_file.close()
        for path in (get_bin_path(temporary_prefix), get_idx_path(temporary_prefix)):
            if os.path.exists(path):
                os.remove(path)


def publish_indexed_dataset(temporary_prefix: str, path_prefix: str) -> None:
    """Rename a finished temporary .bin/.idx pair onto `path_prefix`.

    Readers take the .idx as the mark of a complete dataset, so any old .idx goes first and
    the new one comes last: a crash in between leaves no .idx, never a mismatched pair.
    """
    if os.path.exists(get_idx_path(path_prefix)):
        os.remove(get_idx_path(path_prefix))
    os.replace(get_bin_path(temporary_prefix), get_bin_path(path_prefix))
    os.replace(get_idx_path(temporary_prefix), get_idx_path(path_prefix))
