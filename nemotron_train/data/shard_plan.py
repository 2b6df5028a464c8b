"""Splitting one preparation into shards: which input bytes each shard reads, decided once.

The inputs, in their command-line order, are laid end to end as one stream of B bytes;
shard i of N covers bytes [i*B//N, (i+1)*B//N). A plain JSONL file is cut at those
boundaries (each part reads the lines that start inside it, so no line is lost or read
twice); a file that cannot be cut (compressed, Parquet, text, a datasets directory) goes
whole to the shard its middle byte falls in. Each shard thus reads a consecutive run of the
input, and the shards' outputs concatenated in shard order are byte for byte what one
unsharded run writes.

The plan is written once to PREFIX.plan.json and read by every shard, so that array tasks
starting hours apart, requeued ones included, agree on it without each listing thousands
of files again; each shard checks that its files still have their planned sizes.
"""

import bisect
import dataclasses
import json
import logging
import os
from dataclasses import dataclass

from nemotron_train.data.cache import write_bytes_atomically
from nemotron_train.data.inputs import INPUT_LIST_PREFIX, STDLIB_INPUT, expand_inputs
from nemotron_train.data.sources import InputSource, directory_size

logger = logging.getLogger(__name__)

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ShardPlan:
    """Every shard's input pieces, and what the plan was made from."""

    inputs: list[str]
    """The command-line inputs, absolute (stdlib as it is)."""
    json_keys: list[str]
    """The JSON keys given with them (one for all, or one per input)."""
    num_shards: int
    """How many shards the input is split into."""
    file_sizes: dict[str, int]
    """Size in bytes of every input file (directory, for a datasets directory) when planned."""
    shards: list[list[InputSource]]
    """For each shard, the files and byte ranges it reads, in order."""

    def planned_bytes(self, shard_index: int) -> int:
        """Input bytes shard `shard_index` reads."""
        return sum(self._piece_size(piece) for piece in self.shards[shard_index])

    def _piece_size(self, piece: InputSource) -> int:
        size = self.file_sizes[piece.path]
        return (size if piece.end is None else piece.end) - piece.start

    def to_json(self) -> str:
        """The plan as PREFIX.plan.json holds it."""
        document = {
            "format": PLAN_FORMAT_VERSION,
            "inputs": self.inputs,
            "json_keys": self.json_keys,
            "num_shards": self.num_shards,
            "file_sizes": self.file_sizes,
            "shards": [[dataclasses.asdict(piece) for piece in shard] for shard in self.shards],
        }
        return json.dumps(document, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str) -> "ShardPlan":
        """The plan in `text`, read from `path` (named in errors)."""
        try:
            document = json.loads(text)
            if document.get("format") != PLAN_FORMAT_VERSION:
                raise ValueError(f"format {document.get('format')!r}")
            return cls(
                inputs=document["inputs"],
                json_keys=document["json_keys"],
                num_shards=document["num_shards"],
                file_sizes=document["file_sizes"],
                shards=[[InputSource(**piece) for piece in shard] for shard in document["shards"]],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} is not a shard plan of format {PLAN_FORMAT_VERSION} ({error}); "
                "remove it to plan again"
            ) from None


def plan_path(output_prefix: str) -> str:
    """Where the plan of the sharded preparation into `output_prefix` lives."""
    return f"{output_prefix}.plan.json"


def make_shard_plan(
    inputs: list[str], json_keys: list[str], num_shards: int, stdlib_max_files: int | None = None
) -> ShardPlan:
    """Expand `inputs` and split them into `num_shards` shards of about equal bytes."""
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} is invalid; allowed: >= 1")
    files = expand_inputs(inputs, json_keys=json_keys, stdlib_max_files=stdlib_max_files)
    files = [dataclasses.replace(file, path=os.path.abspath(file.path)) for file in files]
    sizes = {file.path: _size_on_disk(file) for file in files}
    return ShardPlan(
        inputs=[_absolute_input(spec) for spec in inputs],
        json_keys=list(json_keys),
        num_shards=num_shards,
        file_sizes=sizes,
        shards=_assign_to_shards(files, [sizes[file.path] for file in files], num_shards),
    )


def load_or_make_shard_plan(
    output_prefix: str, inputs: list[str], json_keys: list[str], num_shards: int
) -> ShardPlan:
    """The plan in PREFIX.plan.json if it exists and was made from the same arguments, else
    a new one, written there.

    Raises ValueError when the existing plan was made from other inputs, keys or a shard
    count: its shards would not fit together with new ones.
    """
    path = plan_path(output_prefix)
    if os.path.exists(path):
        with open(path) as plan_file:
            plan = ShardPlan.from_json(plan_file.read(), path)
        wanted = {
            "inputs": [_absolute_input(spec) for spec in inputs],
            "json_keys": list(json_keys),
            "num_shards": num_shards,
        }
        for name, value in wanted.items():
            if getattr(plan, name) != value:
                raise ValueError(
                    f"{path} was made with {name}={getattr(plan, name)!r}, not {value!r}: use "
                    "another --output-prefix, or remove that plan and its shard files to start over"
                )
        return plan
    plan = make_shard_plan(inputs, json_keys, num_shards)
    # Every task computes the same plan from the same arguments, so concurrent writers agree.
    write_bytes_atomically(path, plan.to_json().encode())
    logger.info(
        "planned %d shards over %d files (%s bytes): %s",
        num_shards,
        len(plan.file_sizes),
        f"{sum(plan.file_sizes.values()):,}",
        path,
    )
    return plan


def load_shard_plan(output_prefix: str) -> ShardPlan:
    """The plan of an existing sharded preparation; FileNotFoundError if there is none."""
    path = plan_path(output_prefix)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: no sharded preparation was started with --output-prefix "
            f"{output_prefix} (python -m data_prep ... --num-shards N writes it)"
        )
    with open(path) as plan_file:
        return ShardPlan.from_json(plan_file.read(), path)


def check_shard_inputs_unchanged(plan: ShardPlan, shard_index: int) -> None:
    """Raise ValueError if a file of this shard is gone or changed size since planning."""
    for path in dict.fromkeys(piece.path for piece in plan.shards[shard_index]):
        planned = plan.file_sizes[path]
        try:
            size = directory_size(path) if os.path.isdir(path) else os.path.getsize(path)
        except OSError as error:
            raise ValueError(f"input {path}: cannot read it ({error.strerror or error})") from None
        if size != planned:
            raise ValueError(
                f"input {path} has {size:,} bytes but had {planned:,} when the shards were "
                "planned: the shards would no longer fit together; restore the file, or start "
                "over with another --output-prefix"
            )


def _absolute_input(spec: str) -> str:
    if spec == STDLIB_INPUT:
        return spec
    if spec.startswith(INPUT_LIST_PREFIX):
        return INPUT_LIST_PREFIX + os.path.abspath(spec[len(INPUT_LIST_PREFIX) :])
    return os.path.abspath(spec)


def _size_on_disk(source: InputSource) -> int:
    if source.kind == "hf_dataset":
        return directory_size(source.path)
    return os.path.getsize(source.path)


def _assign_to_shards(
    files: list[InputSource], sizes: list[int], num_shards: int
) -> list[list[InputSource]]:
    total = sum(sizes)
    bounds = [total * index // num_shards for index in range(num_shards + 1)]
    shards: list[list[InputSource]] = [[] for _ in range(num_shards)]
    offset = 0
    for file, size in zip(files, sizes, strict=True):
        end = offset + size
        if file.kind == "jsonl" and file.codec is None and size > 0:
            first = min(bisect.bisect_right(bounds, offset) - 1, num_shards - 1)
            for index in range(first, num_shards):
                if bounds[index] >= end:
                    break
                low, high = max(offset, bounds[index]), min(end, bounds[index + 1])
                if low < high:
                    whole = (low, high) == (offset, end)
                    shards[index].append(
                        file
                        if whole
                        else dataclasses.replace(file, start=low - offset, end=high - offset)
                    )
        else:
            middle = offset + size // 2
            shards[min(bisect.bisect_right(bounds, middle) - 1, num_shards - 1)].append(file)
        offset = end
    return shards
