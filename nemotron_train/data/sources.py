"""Readers that turn input sources into one stream of documents, counting what they skip.

Source kinds (inputs.py chooses them from the command line's paths):

- "jsonl": JSON Lines, one object per line, the text under the source's key; plain, or
  gzip/zstd compressed and read as a stream; a plain file may be read as a byte range
  (the lines that start inside it), which is how one huge file is split between shards;
- "parquet": a text column (needs pyarrow);
- "hf_dataset": a Hugging Face `datasets` directory written by `save_to_disk` (needs
  datasets), every split in name order;
- "text": a plain UTF-8 text file, possibly compressed, one document per file.

A malformed record (bad JSON, a missing or non-string text field, undecodable bytes) is
reported with its file and line (byte offset in a byte range) and skipped, or, in strict
mode, raises MalformedInputError. Documents that are empty or whitespace only are skipped
and counted. A file that cannot be read raises InputReadError naming it; corrupt
compressed data raises CorruptInputError naming the file and the byte offset.
"""

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nemotron_train.data.compressed_streams import open_input_stream
from nemotron_train.data.optional_packages import require_package

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("jsonl", "parquet", "hf_dataset", "text")
# Rows fetched per read from Parquet and Arrow files: bounded memory, few Python calls.
ROWS_PER_BATCH = 1024


class MalformedInputError(ValueError):
    """A malformed input record in strict mode; the message starts with file:line."""


class InputReadError(ValueError):
    """An input file that cannot be opened or read; the message names it and the reason."""


@dataclass(frozen=True)
class InputSource:
    """One input to read, or a byte range of one."""

    kind: str
    """How to read it: one of SOURCE_KINDS."""
    path: str
    """The file, or for "hf_dataset" the directory."""
    json_key: str = "text"
    """The JSON field (jsonl) or column (parquet, hf_dataset) holding the text."""
    codec: str | None = None
    """"gzip" or "zstd" for a compressed file read as a stream; None: plain."""
    start: int = 0
    """Plain jsonl only: read the lines that start at or after this byte offset..."""
    end: int | None = None
    """...and before this one; None: to the end of the file."""

    @property
    def is_byte_range(self) -> bool:
        """Whether this is a part of a file rather than all of it."""
        return self.start > 0 or self.end is not None


@dataclass
class ReadCounts:
    """What the readers read and skipped so far."""

    malformed: int = 0
    """Records that could not be read as text (bad JSON, missing field, undecodable bytes)."""
    empty: int = 0
    """Documents that were empty or whitespace only."""
    input_bytes: int = 0
    """Bytes of the input files consumed (compressed bytes for compressed files)."""


def iter_documents(
    sources: Iterable[InputSource], *, strict: bool, counts: ReadCounts
) -> Iterator[str]:
    """The non-empty documents of `sources` in order; skips and bytes read go to `counts`."""
    readers = {
        "jsonl": _read_json_lines,
        "parquet": _read_parquet,
        "hf_dataset": _read_hugging_face_dataset,
        "text": _read_text_file,
    }
    for source in sources:
        bytes_before = counts.input_bytes
        try:
            for location, document, consumed in readers[source.kind](source):
                counts.input_bytes = bytes_before + consumed
                if isinstance(document, _Malformed):
                    message = f"{location}: {document.reason}"
                    if strict:
                        raise MalformedInputError(message)
                    counts.malformed += 1
                    logger.warning("skipping malformed record %s", message)
                elif not document.strip():
                    counts.empty += 1
                else:
                    yield document
        except OSError as error:
            # The offset of the last record read whole: for compressed files a compressed one.
            offset = source.start + counts.input_bytes - bytes_before
            raise InputReadError(
                f"{source.path}: reading failed after byte {offset}: {error.strerror or error}"
            ) from None


@dataclass(frozen=True)
class _Malformed:
    """What a reader yields in place of a record it could not read."""

    reason: str


# The readers share one signature: source -> (location, document or _Malformed, bytes of the
# source consumed so far).


def _read_json_lines(source: InputSource) -> Iterator[tuple[str, str | _Malformed, int]]:
    if source.is_byte_range:
        yield from _read_json_line_range(source)
        return
    with open_input_stream(source.path, source.codec) as lines:
        compressed = source.codec is not None
        consumed = 0
        for line_number, line in enumerate(lines, start=1):
            consumed = lines.raw.compressed_offset if compressed else consumed + len(line)
            yield f"{source.path}:{line_number}", _json_line_text(line, source.json_key), consumed


def _read_json_line_range(source: InputSource) -> Iterator[tuple[str, str | _Malformed, int]]:
    # A line belongs to the range its first byte lies in, so that consecutive ranges of a
    # file read every line exactly once.
    with open(source.path, "rb") as lines:
        position = source.start
        if position > 0:
            lines.seek(position - 1)
            if lines.read(1) != b"\n":
                position += len(lines.readline())
        while source.end is None or position < source.end:
            line = lines.readline()
            if not line:
                break
            text = _json_line_text(line, source.json_key)
            yield f"{source.path}:byte {position}", text, position + len(line) - source.start
            position += len(line)


def _json_line_text(line: bytes, json_key: str) -> str | _Malformed:
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return _Malformed(f"not a JSON line ({error})")
    if not isinstance(record, dict) or json_key not in record:
        return _Malformed(f"no {json_key!r} field")
    text = record[json_key]
    if text is None:
        return ""
    if not isinstance(text, str):
        return _Malformed(f"field {json_key!r} is not a string")
    return text


def _read_text_file(source: InputSource) -> Iterator[tuple[str, str | _Malformed, int]]:
    with open_input_stream(source.path, source.codec) as text_file:
        data = text_file.read()
    size = os.path.getsize(source.path)
    try:
        yield source.path, data.decode("utf-8"), size
    except UnicodeDecodeError as error:
        yield source.path, _Malformed(f"not UTF-8 text ({error})"), size


def _read_parquet(source: InputSource) -> Iterator[tuple[str, str | _Malformed, int]]:
    require_package("pyarrow", "Parquet input")
    import pyarrow.parquet

    parquet_file = pyarrow.parquet.ParquetFile(source.path)
    key = source.json_key
    if key not in parquet_file.schema_arrow.names:
        raise ValueError(
            f"{source.path} has no column {key!r}; its columns: {parquet_file.schema_arrow.names}"
        )
    size, rows = os.path.getsize(source.path), max(parquet_file.metadata.num_rows, 1)
    row_number = 0
    for batch in parquet_file.iter_batches(batch_size=ROWS_PER_BATCH, columns=[key]):
        for text in batch.column(0).to_pylist():
            row_number += 1
            location = f"{source.path}:row {row_number}"
            yield location, _text_cell(text, key), size * row_number // rows


def _read_hugging_face_dataset(source: InputSource) -> Iterator[tuple[str, str | _Malformed, int]]:
    require_package("datasets", "Hugging Face datasets directory input")
    import datasets

    loaded = datasets.load_from_disk(source.path)
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    key = source.json_key
    size, rows = directory_size(source.path), max(sum(len(split) for _, split in splits), 1)
    rows_read = 0
    for split_name, dataset in splits:
        if key not in dataset.column_names:
            raise ValueError(
                f"{source.path} {split_name} has no column {key!r}; "
                f"its columns: {dataset.column_names}"
            )
        location_prefix = f"{source.path}[{split_name}]" if split_name else source.path
        row_number = 0
        for batch in dataset.select_columns([key]).iter(batch_size=ROWS_PER_BATCH):
            for text in batch[key]:
                row_number += 1
                rows_read += 1
                location = f"{location_prefix}:row {row_number}"
                yield location, _text_cell(text, key), size * rows_read // rows


def directory_size(path: str) -> int:
    """Bytes of the files under a directory (a Hugging Face dataset's size on disk)."""
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(path)
        for name in names
    )


def _text_cell(text: object, json_key: str) -> str | _Malformed:
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    return _Malformed(f"column {json_key!r} is not text")
