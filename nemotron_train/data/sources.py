"""Readers that turn input files into one stream of documents, counting what they skip.

Input kinds, chosen per path:

- `stdlib`: the embedded corpus (see stdlib_corpus.py); pass ./stdlib for a file of that name;
- `.jsonl`, `.ndjson`, `.json`: JSON Lines, one object per line, text under a key;
- `.parquet`: a text column (needs pyarrow);
- a directory holding `dataset_info.json` or `dataset_dict.json`: a Hugging Face `datasets`
  directory written by `save_to_disk` (needs datasets), every split in name order;
- any other directory: its files, recursively in sorted order, hidden ones left out;
- any other file: plain UTF-8 text, one document per file.

A malformed record (bad JSON, a missing or non-string text field, undecodable bytes) is
reported with its file and line and skipped, or, in strict mode, raises MalformedInputError.
Documents that are empty or whitespace only are skipped and counted.
"""

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nemotron_train.data.optional_packages import require_package
from nemotron_train.data.stdlib_corpus import stdlib_source_files

logger = logging.getLogger(__name__)

STDLIB_INPUT = "stdlib"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
HUGGING_FACE_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")
# Rows fetched per read from Parquet and Arrow files: bounded memory, few Python calls.
ROWS_PER_BATCH = 1024


class MalformedInputError(ValueError):
    """A malformed input record in strict mode; the message starts with file:line."""


@dataclass(frozen=True)
class InputSource:
    """One input to read."""

    kind: str
    """How to read it: "jsonl", "parquet", "hf_dataset" or "text"."""
    path: str
    """The file, or for "hf_dataset" the directory."""


@dataclass
class SkipCounts:
    """How many records the readers skipped, by reason."""

    malformed: int = 0
    """Records that could not be read as text (bad JSON, missing field, undecodable bytes)."""
    empty: int = 0
    """Documents that were empty or whitespace only."""


def expand_inputs(
    paths: Iterable[str], *, stdlib_max_files: int | None = None
) -> list[InputSource]:
    """The input sources behind command-line paths, directories expanded in sorted order."""
    sources = []
    for path in paths:
        if path == STDLIB_INPUT:
            sources.extend(
                InputSource("text", str(file)) for file in stdlib_source_files(stdlib_max_files)
            )
        elif os.path.isdir(path):
            if any(
                os.path.isfile(os.path.join(path, marker))
                for marker in HUGGING_FACE_DATASET_MARKERS
            ):
                sources.append(InputSource("hf_dataset", path))
            else:
                sources.extend(_source_for_file(str(file)) for file in _visible_files(Path(path)))
        elif os.path.isfile(path):
            sources.append(_source_for_file(path))
        else:
            raise FileNotFoundError(f"input {path!r}: no such file or directory")
    return sources


def _visible_files(directory: Path) -> list[Path]:
    files = []
    for path in directory.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(directory).parts)
        if path.is_file() and not hidden:
            files.append(path)
    return sorted(files, key=lambda path: path.as_posix())


def _source_for_file(path: str) -> InputSource:
    if path.endswith(JSON_LINES_SUFFIXES):
        return InputSource("jsonl", path)
    if path.endswith(".parquet"):
        return InputSource("parquet", path)
    return InputSource("text", path)


def iter_documents(
    sources: Iterable[InputSource], *, json_key: str, strict: bool, skip_counts: SkipCounts
) -> Iterator[str]:
    """The non-empty documents of `sources` in order; skipped ones are added to `skip_counts`."""
    readers = {
        "jsonl": _read_json_lines,
        "parquet": _read_parquet,
        "hf_dataset": _read_hugging_face_dataset,
        "text": _read_text_file,
    }
    for source in sources:
        for location, document in readers[source.kind](source.path, json_key):
            if isinstance(document, _Malformed):
                message = f"{location}: {document.reason}"
                if strict:
                    raise MalformedInputError(message)
                skip_counts.malformed += 1
                logger.warning("skipping malformed record %s", message)
            elif not document.strip():
                skip_counts.empty += 1
            else:
                yield document


@dataclass(frozen=True)
class _Malformed:
    """What a reader yields in place of a record it could not read."""

    reason: str


# The readers share one signature, (path, json_key) -> (location, document or _Malformed).


def _read_json_lines(path: str, json_key: str) -> Iterator[tuple[str, str | _Malformed]]:
    with open(path, "rb") as lines:
        for line_number, line in enumerate(lines, start=1):
            location = f"{path}:{line_number}"
            if not line.strip():
                yield location, ""
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield location, _Malformed(f"not a JSON line ({error})")
                continue
            if not isinstance(record, dict) or json_key not in record:
                yield location, _Malformed(f"no {json_key!r} field")
            elif record[json_key] is None:
                yield location, ""
            elif not isinstance(record[json_key], str):
                yield location, _Malformed(f"field {json_key!r} is not a string")
            else:
                yield location, record[json_key]


def _read_text_file(path: str, json_key: str) -> Iterator[tuple[str, str | _Malformed]]:
    with open(path, "rb") as text_file:
        data = text_file.read()
    try:
        yield path, data.decode("utf-8")
    except UnicodeDecodeError as error:
        yield path, _Malformed(f"not UTF-8 text ({error})")


def _read_parquet(path: str, json_key: str) -> Iterator[tuple[str, str | _Malformed]]:
    require_package("pyarrow", "Parquet input")
    import pyarrow.parquet

    parquet_file = pyarrow.parquet.ParquetFile(path)
    if json_key not in parquet_file.schema_arrow.names:
        raise ValueError(
            f"{path} has no column {json_key!r}; its columns: {parquet_file.schema_arrow.names}"
        )
    row_number = 0
    for batch in parquet_file.iter_batches(batch_size=ROWS_PER_BATCH, columns=[json_key]):
        for text in batch.column(0).to_pylist():
            row_number += 1
            yield from _text_cell(f"{path}:row {row_number}", text, json_key)


def _read_hugging_face_dataset(path: str, json_key: str) -> Iterator[tuple[str, str | _Malformed]]:
    require_package("datasets", "Hugging Face datasets directory input")
    import datasets

    loaded = datasets.load_from_disk(path)
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split_name, dataset in splits:
        if json_key not in dataset.column_names:
            raise ValueError(
                f"{path} {split_name} has no column {json_key!r}; "
                f"its columns: {dataset.column_names}"
            )
        location_prefix = f"{path}[{split_name}]" if split_name else path
        row_number = 0
        for batch in dataset.select_columns([json_key]).iter(batch_size=ROWS_PER_BATCH):
            for text in batch[json_key]:
                row_number += 1
                yield from _text_cell(f"{location_prefix}:row {row_number}", text, json_key)


def _text_cell(
    location: str, text: object, json_key: str
) -> Iterator[tuple[str, str | _Malformed]]:
    if text is None:
        yield location, ""
    elif isinstance(text, str):
        yield location, text
    else:
        yield location, _Malformed(f"column {json_key!r} is not text")
