"""Tokenize documents into a Megatron-Core indexed dataset (.bin/.idx): parallel, streaming,
atomic.

The main process reads documents and writes them with Megatron-Core's
IndexedDatasetBuilder in input order; worker processes tokenize chunks of documents and
append the end-of-document id. At most a few chunks are in flight, so memory stays bounded
whatever the input size. The output appears under its final name only when complete.
"""

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.pool
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy
from megatron.core.datasets.indexed_dataset import DType

from nemotron_train.data.indexed_files import atomic_indexed_dataset_builder
from nemotron_train.data.sources import InputSource, ReadCounts, iter_documents
from nemotron_train.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

DOCUMENTS_PER_CHUNK = 64
CHUNKS_IN_FLIGHT_PER_WORKER = 4
PROGRESS_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True, kw_only=True)
class PreparationSummary:
    """What one preparation wrote and skipped."""

    output_prefix: str
    """The dataset written: output_prefix.bin and output_prefix.idx."""
    documents: int
    """Documents written."""
    tokens: int
    """Tokens written, end-of-document tokens included."""
    skipped_malformed: int
    """Records skipped as malformed (bad JSON, missing text field, undecodable bytes)."""
    skipped_empty: int
    """Documents skipped as empty or whitespace only."""
    input_bytes: int
    """Bytes of input read (compressed bytes for compressed files)."""
    seconds: float
    """Wall time of the whole preparation."""

    def describe(self) -> str:
        """A one-line human summary."""
        return (
            f"wrote {self.documents:,} documents, {self.tokens:,} tokens to "
            f"{self.output_prefix}.{{bin,idx}} in {self.seconds:.1f} s; skipped "
            f"{self.skipped_malformed:,} malformed and {self.skipped_empty:,} empty documents"
        )


@dataclass(frozen=True, kw_only=True)
class ProgressReport:
    """How far a preparation has come, as its progress line reports it."""

    documents: int
    """Documents written so far."""
    tokens: int
    """Tokens written so far."""
    input_bytes: int
    """Input bytes read so far (compressed bytes for compressed files)."""
    seconds: float
    """Time since the preparation started."""


def prepare_indexed_dataset(
    sources: Iterable[InputSource],
    *,
    tokenizer: Tokenizer,
    output_prefix: str,
    workers: int = 1,
    strict: bool = False,
    allow_empty: bool = False,
    progress_label: str = "",
    planned_input_bytes: int | None = None,
    on_progress: Callable[[ProgressReport], None] | None = None,
) -> PreparationSummary:
    """Tokenize every document of `sources` into `output_prefix`.bin/.idx, EOD after each.

    Token ids are stored as uint16 when the vocabulary fits, else int32 (Megatron-LM's
    choice). `workers` > 1 tokenizes in that many processes; the output is the same.
    Every few seconds a progress line (prefixed with `progress_label`; with the share of
    `planned_input_bytes` read and the time left when given) is logged and `on_progress`
    called. Raises MalformedInputError on a malformed record if `strict`, and ValueError if
    no document is left unless `allow_empty`; then nothing is written under `output_prefix`.
    """
    start = time.perf_counter()
    output_prefix = os.path.abspath(output_prefix)
    os.makedirs(os.path.dirname(output_prefix), exist_ok=True)
    counts = ReadCounts()
    documents = iter_documents(sources, strict=strict, counts=counts)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    progress = _Progress(start, counts, progress_label, planned_input_bytes, on_progress)
    with (
        atomic_indexed_dataset_builder(output_prefix, dtype) as builder,
        _tokenized_chunks(_chunked(documents), tokenizer, dtype, workers) as tokenized,
    ):
        for chunk in tokenized:
            for token_ids in chunk:
                builder.add_document(token_ids, [token_ids.size])
                progress.add(token_ids.size)
        if progress.documents == 0 and not allow_empty:
            raise ValueError(
                f"no documents to write to {output_prefix}: {counts.malformed} malformed "
                f"and {counts.empty} empty ones were skipped"
            )
    return PreparationSummary(
        output_prefix=output_prefix,
        documents=progress.documents,
        tokens=progress.tokens,
        skipped_malformed=counts.malformed,
        skipped_empty=counts.empty,
        input_bytes=counts.input_bytes,
        seconds=time.perf_counter() - start,
    )


def _chunked(documents: Iterator[str]) -> Iterator[list[str]]:
    chunk = []
    for document in documents:
        chunk.append(document)
        if len(chunk) == DOCUMENTS_PER_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Progress:
    """Counts what was written; every few seconds logs the rates and the time left."""

    def __init__(
        self,
        start: float,
        counts: ReadCounts,
        label: str,
        planned_input_bytes: int | None,
        on_progress: Callable[[ProgressReport], None] | None,
    ) -> None:
        self.start = start
        self.last_report = start
        self.counts = counts
        self.label = f"{label}: " if label else ""
        self.planned_input_bytes = planned_input_bytes
        self.on_progress = on_progress
        self.documents = 0
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.documents += 1
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last_report >= PROGRESS_INTERVAL_SECONDS:
            self.last_report = now
            self.report(now - self.start)

    def report(self, elapsed: float) -> None:
        line = (
            f"{self.label}{self.documents:,} documents, {self.tokens:,} tokens | "
            f"{self.documents / elapsed:,.0f} documents/s, {self.tokens / elapsed:,.0f} tokens/s"
        )
        if self.planned_input_bytes:
            done = min(self.counts.input_bytes / self.planned_input_bytes, 1.0)
            left = format_duration(elapsed * (1 - done) / done) if done > 0 else "unknown"
            line += f" | {done:.1%} of {format_bytes(self.planned_input_bytes)} read, {left} left"
        logger.info("%s", line)
        if self.on_progress is not None:
            self.on_progress(
                ProgressReport(
                    documents=self.documents,
                    tokens=self.tokens,
                    input_bytes=self.counts.input_bytes,
                    seconds=elapsed,
                )
            )


def format_duration(seconds: float) -> str:
    """`seconds` as H:MM:SS (hours unbounded)."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def format_bytes(size: float) -> str:
    """A byte count with a decimal unit (B, kB, MB, GB, TB)."""
    exponent = min(int(math.log10(max(size, 1)) // 3), 4)
    if exponent == 0:
        return f"{size:,.0f} B"
    return f"{size / 1000**exponent:,.1f} {('kB', 'MB', 'GB', 'TB')[exponent - 1]}"


# The tokenizer of a worker process, set once by _initialize_worker: handing it to every
# task instead would pickle it once per chunk.
_worker_tokenizer: Tokenizer | None = None
_worker_dtype: type | None = None


def _initialize_worker(tokenizer: Tokenizer, dtype: type) -> None:
    global _worker_tokenizer, _worker_dtype
    _worker_tokenizer, _worker_dtype = tokenizer, dtype


def _tokenize_chunk(documents: list[str]) -> list[numpy.ndarray]:
    return [
        _tokenize_document(_worker_tokenizer, _worker_dtype, document) for document in documents
    ]


def _tokenize_document(tokenizer: Tokenizer, dtype: type, document: str) -> numpy.ndarray:
    token_ids = tokenizer.encode(document)
    tokens = numpy.empty(len(token_ids) + 1, dtype=dtype)
    tokens[:-1] = token_ids
    tokens[-1] = tokenizer.eod
    return tokens


@contextlib.contextmanager
def _tokenized_chunks(
    chunks: Iterator[list[str]], tokenizer: Tokenizer, dtype: type, workers: int
) -> Iterator[Iterator[list[numpy.ndarray]]]:
    """The tokenized chunks in input order, computed in `workers` processes if > 1."""
    if workers == 1:
        yield (
            [_tokenize_document(tokenizer, dtype, document) for document in chunk]
            for chunk in chunks
        )
        return
    # Fork: workers inherit the loaded tokenizer and imported modules instead of
    # re-importing torch and Megatron-Core (seconds and a GiB each) as spawn would.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_initialize_worker, initargs=(tokenizer, dtype)) as pool:
        yield _ordered_bounded_map(
            pool, _tokenize_chunk, chunks, workers * CHUNKS_IN_FLIGHT_PER_WORKER
        )


def _ordered_bounded_map(
    pool: multiprocessing.pool.Pool, function: Callable, items: Iterator, max_in_flight: int
) -> Iterator:
    """`pool.imap` with at most `max_in_flight` items submitted ahead of the consumer.

    Pool.imap reads its whole input ahead into the task queue, which for a large corpus
    means holding it all in memory.
    """
    pending = deque()
    for item in items:
        pending.append(pool.apply_async(function, (item,)))
        if len(pending) >= max_in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
