"""Preparing one shard of a sharded preparation, resumably, and reporting on all of them.

Shard i of N writes PREFIX.shard-0000i-of-0000N.{bin,idx} and, once those are complete,
its manifest (.manifest.json): the plan and tokenizer it was made with, the pieces it read
and what it wrote. A shard whose manifest matches its files is finished and never redone,
so a killed or requeued array task repeats only its own shard. While it runs, a shard
writes its progress to .progress.json every PROGRESS_FILE_INTERVAL_SECONDS; `status`
reads every shard's manifest or progress to report the whole preparation.
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from nemotron_train.data.cache import write_bytes_atomically
from nemotron_train.data.config import TokenizerConfig
from nemotron_train.data.indexed_files import check_indexed_dataset
from nemotron_train.data.preparation import (
    PreparationSummary,
    ProgressReport,
    format_bytes,
    format_duration,
    prepare_indexed_dataset,
)
from nemotron_train.data.shard_plan import ShardPlan, check_shard_inputs_unchanged
from nemotron_train.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
PROGRESS_FILE_INTERVAL_SECONDS = 30.0
# A progress file this old belongs to a shard whose task has died (or is stuck).
STALE_PROGRESS_SECONDS = 10 * PROGRESS_FILE_INTERVAL_SECONDS


def shard_prefix(output_prefix: str, shard_index: int, num_shards: int) -> str:
    """The path prefix of shard `shard_index`'s .bin/.idx."""
    return f"{output_prefix}.shard-{shard_index:05d}-of-{num_shards:05d}"


def manifest_path(prefix: str) -> str:
    """Where the manifest of the shard with path prefix `prefix` lives."""
    return f"{prefix}.manifest.json"


def progress_path(prefix: str) -> str:
    """Where a running shard with path prefix `prefix` writes its progress."""
    return f"{prefix}.progress.json"


def plan_digest(plan: ShardPlan) -> str:
    """SHA-256 of the plan: a manifest names the plan its shard belongs to."""
    return hashlib.sha256(plan.to_json().encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ShardResult:
    """What preparing one shard did."""

    shard_index: int
    manifest: dict
    """The shard's manifest (see the module docstring)."""
    skipped: bool
    """True when the shard had been finished before and was left as it was."""


def prepare_shard(
    plan: ShardPlan,
    shard_index: int,
    *,
    output_prefix: str,
    tokenizer: Tokenizer,
    tokenizer_config: TokenizerConfig,
    workers: int = 1,
    strict: bool = False,
) -> ShardResult:
    """Prepare shard `shard_index` of `plan` into its .bin/.idx unless it is finished.

    Raises ValueError when a finished shard was made with another tokenizer, or when one
    of its input files changed since planning.
    """
    if not 0 <= shard_index < plan.num_shards:
        raise ValueError(
            f"shard_index={shard_index} is invalid; allowed: 0 <= shard_index < "
            f"num_shards={plan.num_shards}"
        )
    output_prefix = os.path.abspath(output_prefix)
    prefix = shard_prefix(output_prefix, shard_index, plan.num_shards)
    label = f"shard {shard_index}/{plan.num_shards}"
    finished = read_finished_manifest(prefix, plan)
    if finished is not None:
        if finished["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
            raise ValueError(
                f"{manifest_path(prefix)}: {label} was prepared with another tokenizer "
                f"({finished['tokenizer']['config']}); shards of one dataset need one tokenizer: "
                "use another --output-prefix"
            )
        logger.info("%s: finished earlier (%s), not redone", label, manifest_path(prefix))
        return ShardResult(shard_index=shard_index, manifest=finished, skipped=True)
    check_shard_inputs_unchanged(plan, shard_index)
    _remove_unfinished_files(prefix)
    started_at = time.time()
    planned_bytes = plan.planned_bytes(shard_index)
    write_progress = _ProgressFileWriter(progress_path(prefix), started_at, planned_bytes)
    write_progress(ProgressReport(documents=0, tokens=0, input_bytes=0, seconds=0.0))
    summary = prepare_indexed_dataset(
        plan.shards[shard_index],
        tokenizer=tokenizer,
        output_prefix=prefix,
        workers=workers,
        strict=strict,
        allow_empty=True,
        progress_label=label,
        planned_input_bytes=planned_bytes,
        on_progress=write_progress,
    )
    manifest = _manifest(plan, shard_index, summary, tokenizer, tokenizer_config, started_at)
    # Written last: a manifest marks a shard whose .bin/.idx are complete.
    write_bytes_atomically(manifest_path(prefix), (json.dumps(manifest, indent=1) + "\n").encode())
    if os.path.exists(progress_path(prefix)):
        os.remove(progress_path(prefix))
    logger.info("%s: %s", label, summary.describe())
    return ShardResult(shard_index=shard_index, manifest=manifest, skipped=False)


def read_finished_manifest(prefix: str, plan: ShardPlan) -> dict | None:
    """The manifest of a finished shard of `plan`, or None if the shard is not finished.

    Finished means: a manifest of this plan, and .bin/.idx files holding exactly the
    documents and tokens it records (a truncated or replaced file makes the shard unfinished).
    """
    try:
        with open(manifest_path(prefix)) as manifest_file:
            manifest = json.load(manifest_file)
        if manifest.get("format") != MANIFEST_FORMAT_VERSION:
            return None
        if manifest["plan_sha256"] != plan_digest(plan):
            return None
        info = check_indexed_dataset(prefix)
    except (OSError, ValueError, KeyError):
        return None
    if (info.documents, info.tokens) != (manifest["documents"], manifest["tokens"]):
        return None
    return manifest


def _remove_unfinished_files(prefix: str) -> None:
    # Left by a killed attempt at this shard: temporary .bin/.idx, a stale manifest or
    # progress file. A shard runs in one task at a time, so none of them is in use.
    leftovers = glob.glob(glob.escape(prefix) + ".tmp-*")
    leftovers += [manifest_path(prefix), progress_path(prefix)]
    for path in leftovers:
        if os.path.exists(path):
            os.remove(path)


def _manifest(
    plan: ShardPlan,
    shard_index: int,
    summary: PreparationSummary,
    tokenizer: Tokenizer,
    tokenizer_config: TokenizerConfig,
    started_at: float,
) -> dict:
    tokenizer_settings = dataclasses.asdict(tokenizer_config)
    if tokenizer_settings["path"]:
        tokenizer_settings["path"] = os.path.abspath(tokenizer_settings["path"])
    return {
        "format": MANIFEST_FORMAT_VERSION,
        "shard_index": shard_index,
        "num_shards": plan.num_shards,
        "plan_sha256": plan_digest(plan),
        "tokenizer": {"fingerprint": tokenizer.fingerprint, "config": tokenizer_settings},
        "pieces": [dataclasses.asdict(piece) for piece in plan.shards[shard_index]],
        "documents": summary.documents,
        "tokens": summary.tokens,
        "skipped_malformed": summary.skipped_malformed,
        "skipped_empty": summary.skipped_empty,
        "input_bytes": plan.planned_bytes(shard_index),
        "seconds": round(summary.seconds, 3),
        "started_at": started_at,
        "finished_at": time.time(),
        "host": socket.gethostname(),
    }


class _ProgressFileWriter:
    """Writes a running shard's progress to its .progress.json, at most every interval."""

    def __init__(self, path: str, started_at: float, planned_bytes: int) -> None:
        self.path = path
        self.started_at = started_at
        self.planned_bytes = planned_bytes
        self.last_write = 0.0

    def __call__(self, report: ProgressReport) -> None:
        now = time.time()
        if now - self.last_write < PROGRESS_FILE_INTERVAL_SECONDS:
            return
        self.last_write = now
        record = dataclasses.asdict(report) | {
            "planned_bytes": self.planned_bytes,
            "started_at": self.started_at,
            "updated_at": now,
            "host": socket.gethostname(),
        }
        write_bytes_atomically(self.path, json.dumps(record).encode())


@dataclass(frozen=True, kw_only=True)
class ShardState:
    """One shard as `status` sees it."""

    shard_index: int
    state: str
    """"finished", "running", "stopped" (its progress file stopped changing) or "waiting"."""
    documents: int
    tokens: int
    input_bytes: int
    """Input bytes read so far (all planned bytes once finished)."""
    planned_bytes: int
    seconds: float
    """Time the shard has run (its whole run once finished)."""
    started_at: float | None
    last_seen: float | None
    """When it finished, or last wrote its progress."""


@dataclass(frozen=True, kw_only=True)
class PreparationStatus:
    """Every shard of a sharded preparation, and the totals."""

    output_prefix: str
    shards: list[ShardState]

    def count(self, state: str) -> int:
        """Shards in `state`."""
        return sum(shard.state == state for shard in self.shards)

    def total_line(self) -> str:
        """Documents, tokens, throughput and the time left over all shards, on one line."""
        shards, running = self.shards, [s for s in self.shards if s.state == "running"]
        tokens = sum(shard.tokens for shard in shards)
        read, planned = sum(s.input_bytes for s in shards), sum(s.planned_bytes for s in shards)
        started = [s.started_at for s in shards if s.started_at is not None]
        seen = [s.last_seen for s in shards if s.last_seen is not None]
        span = max(seen) - min(started) if started and seen else 0.0
        throughput = f"{tokens / span:,.0f} tokens/s over {format_duration(span)}" if span > 0 else "-"
        done = read / planned if planned else 1.0
        byte_rate = sum(s.input_bytes / s.seconds for s in running if s.seconds > 0)
        if done >= 1.0:
            left = "done"
        elif byte_rate > 0:
            left = f"{format_duration((planned - read) / byte_rate)} left at {len(running)} running"
        else:
            left = "time left unknown: no shard is running"
        return (
            f"all shards: {self.count('finished')}/{len(shards)} finished, {len(running)} running"
            f" | {sum(s.documents for s in shards):,} documents, {tokens:,} tokens | "
            f"{throughput} | {done:.1%} of {format_bytes(planned)} read, {left}"
        )

    def table(self) -> str:
        """One line per shard, then the total line."""
        lines = []
        for shard in self.shards:
            rate = shard.tokens / shard.seconds if shard.seconds > 0 else 0.0
            done = shard.input_bytes / shard.planned_bytes if shard.planned_bytes else 1.0
            lines.append(
                f"shard {shard.shard_index}/{len(self.shards)}: {shard.state:8s} | "
                f"{shard.documents:,} documents, {shard.tokens:,} tokens | {rate:,.0f} tokens/s | "
                f"{done:.1%} of {format_bytes(shard.planned_bytes)}"
            )
        return "\n".join(lines + [self.total_line()])


def preparation_status(plan: ShardPlan, output_prefix: str) -> PreparationStatus:
    """The state of every shard of `plan` written under `output_prefix`, from its files."""
    output_prefix = os.path.abspath(output_prefix)
    now = time.time()
    shards = []
    for index in range(plan.num_shards):
        prefix = shard_prefix(output_prefix, index, plan.num_shards)
        planned = plan.planned_bytes(index)
        manifest = read_finished_manifest(prefix, plan)
        progress = _read_progress(prefix)
        if manifest is not None:
            state, record = "finished", manifest | {"last_seen": manifest["finished_at"]}
        elif progress is not None:
            stale = now - progress["updated_at"] > STALE_PROGRESS_SECONDS
            state, record = ("stopped" if stale else "running"), progress | {
                "last_seen": progress["updated_at"]
            }
        else:
            state, record = "waiting", {}
        shards.append(
            ShardState(
                shard_index=index,
                state=state,
                documents=record.get("documents", 0),
                tokens=record.get("tokens", 0),
                input_bytes=record.get("input_bytes", 0),
                planned_bytes=planned,
                seconds=record.get("seconds", 0.0),
                started_at=record.get("started_at"),
                last_seen=record.get("last_seen"),
            )
        )
    return PreparationStatus(output_prefix=output_prefix, shards=shards)


def _read_progress(prefix: str) -> dict | None:
    try:
        with open(progress_path(prefix)) as progress_file:
            return json.load(progress_file)
    except (OSError, ValueError):
        return None


def finished_shard_manifests(plan: ShardPlan, output_prefix: str) -> list[dict]:
    """Every shard's manifest, in shard order; ValueError naming the unfinished shards."""
    output_prefix = os.path.abspath(output_prefix)
    manifests, unfinished = [], []
    for index in range(plan.num_shards):
        manifest = read_finished_manifest(shard_prefix(output_prefix, index, plan.num_shards), plan)
        if manifest is None:
            unfinished.append(index)
        manifests.append(manifest)
    if unfinished:
        listed = ", ".join(map(str, unfinished[:20])) + (" ..." if len(unfinished) > 20 else "")
        raise ValueError(
            f"{len(unfinished)} of {plan.num_shards} shards of {output_prefix} are not finished "
            f"(missing, incomplete or not matching their manifest): {listed}; run them with "
            "--shard-index (finished shards are skipped) and try again"
        )
    fingerprints = {manifest["tokenizer"]["fingerprint"] for manifest in manifests}
    if len(fingerprints) > 1:
        raise ValueError(
            f"the shards of {output_prefix} were prepared with {len(fingerprints)} different "
            "tokenizers; prepare them all with one"
        )
    return manifests
