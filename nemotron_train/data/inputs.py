"""From command-line inputs to the list of sources to read, in a fixed order.

An input is one of:

- `stdlib`: the embedded corpus (see stdlib_corpus.py); pass ./stdlib for a file of that name;
- `@FILE`: a file of inputs, one per line (paths, directories or globs; blank lines and
  lines starting with # left out; relative paths are relative to FILE's directory);
- a glob (`shards/*.jsonl.zst`, `web/**/*.parquet`): the matching paths in sorted order;
- a directory holding `dataset_info.json` or `dataset_dict.json`: a Hugging Face `datasets`
  directory written by `save_to_disk`;
- any other directory: its files, recursively in sorted order, hidden ones left out;
- a file, read by its name: `.jsonl`/`.ndjson`/`.json` as JSON Lines, `.parquet` as Parquet,
  anything else as one plain-text document; a `.gz`, `.zst` or `.zstd` suffix after that
  means the file is compressed and read as a stream.

Each input has its own JSON key (field or column of the text); an @FILE, glob or directory
gives its key to every file it stands for.
"""

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from nemotron_train.data.compressed_streams import codec_of, strip_codec_suffix
from nemotron_train.data.sources import InputSource
from nemotron_train.data.stdlib_corpus import stdlib_source_files

STDLIB_INPUT = "stdlib"
INPUT_LIST_PREFIX = "@"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
HUGGING_FACE_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")
GLOB_CHARACTERS = frozenset("*?[")


def expand_inputs(
    inputs: Sequence[str],
    *,
    json_keys: Sequence[str] = ("text",),
    stdlib_max_files: int | None = None,
) -> list[InputSource]:
    """The sources behind command-line `inputs`, in the order given.

    `json_keys` holds one key for every input or one per input. Raises FileNotFoundError
    for a path that does not exist, a glob that matches nothing or a broken link, and
    ValueError for an input list or key count that makes no sense.
    """
    if len(json_keys) not in (1, len(inputs)):
        raise ValueError(
            f"{len(json_keys)} JSON keys for {len(inputs)} inputs; give one key for all "
            "inputs or one per input"
        )
    keys = list(json_keys) * len(inputs) if len(json_keys) == 1 else list(json_keys)
    sources = []
    for spec, json_key in zip(inputs, keys, strict=True):
        if spec == STDLIB_INPUT:
            sources.extend(
                InputSource("text", str(file), json_key)
                for file in stdlib_source_files(stdlib_max_files)
            )
        elif spec.startswith(INPUT_LIST_PREFIX):
            for listed in _read_input_list(spec[len(INPUT_LIST_PREFIX) :]):
                sources.extend(_expand_pattern(listed, json_key, f" (listed in {spec})"))
        else:
            sources.extend(_expand_pattern(spec, json_key, ""))
    return sources


def _read_input_list(path: str) -> list[str]:
    try:
        with open(path) as listing:
            lines = [line.strip() for line in listing]
    except OSError as error:
        raise FileNotFoundError(
            f"input list {path!r}: cannot read it ({error.strerror or error})"
        ) from None
    base = os.path.dirname(os.path.abspath(path))
    return [
        os.path.join(base, line) for line in lines if line and not line.startswith("#")
    ]


def _expand_pattern(spec: str, json_key: str, origin: str) -> list[InputSource]:
    if not GLOB_CHARACTERS.intersection(spec):
        return _expand_path(spec, json_key, origin)
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        raise FileNotFoundError(f"input {spec!r}{origin}: the pattern matches no file")
    return [source for match in matches for source in _expand_path(match, json_key, origin)]


def _expand_path(path: str, json_key: str, origin: str) -> list[InputSource]:
    if os.path.isdir(path):
        if any(
            os.path.isfile(os.path.join(path, marker)) for marker in HUGGING_FACE_DATASET_MARKERS
        ):
            return [InputSource("hf_dataset", path, json_key)]
        return [source_for_file(str(file), json_key) for file in _visible_files(Path(path))]
    if os.path.isfile(path):
        return [source_for_file(path, json_key)]
    if os.path.islink(path):
        raise FileNotFoundError(f"input {path!r}{origin}: a link to a missing file")
    raise FileNotFoundError(f"input {path!r}{origin}: no such file or directory")


def _visible_files(directory: Path) -> list[Path]:
    files = []
    for path in directory.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        if path.is_file():
            files.append(path)
        elif path.is_symlink() and not path.exists():
            # Left out silently, a dangling link would drop its data from the corpus.
            raise FileNotFoundError(f"input {str(path)!r}: a link to a missing file")
    return sorted(files, key=lambda path: path.as_posix())


def source_for_file(path: str, json_key: str = "text") -> InputSource:
    """How to read one file, from its name."""
    codec = codec_of(path)
    name = strip_codec_suffix(path)
    if name.endswith(JSON_LINES_SUFFIXES):
        return InputSource("jsonl", path, json_key, codec)
    if name.endswith(".parquet"):
        if codec is not None:
            raise ValueError(
                f"input {path!r}: a compressed Parquet file; Parquet compresses its own "
                "columns, so give the .parquet file itself"
            )
        return InputSource("parquet", path, json_key)
    return InputSource("text", path, json_key, codec)
