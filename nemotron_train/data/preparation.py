"""Tokenize documents into a Megatron-Core indexed dataset (.bin/.idx): parallel, streaming,
atomic.

The main process reads documents and writes them with Megatron-Core's
IndexedDatasetBuilder in input order; worker processes tokenize chunks of documents and
append the end-of-document id. At most a few chunks are in flight, so memory stays bounded
whatever the input size. The output appears under its final name only when complete.
"""

import contextlib
import logging
import multiprocessing
import multiprocessing.pool
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

from nemotron_train.data.cache import unique_temporary_path
from nemotron_train.data.indexed_files import publish_indexed_dataset
from nemotron_train.data.sources import InputSource, SkipCounts, iter_documents
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
    seconds: float
    """Wall time of the whole preparation."""

    def describe(self) -> str:
        """A one-line human summary."""
        return (
            f"wrote {self.documents:,} documents, {self.tokens:,} tokens to "
            f"{self.output_prefix}.{{bin,idx}} in {self.seconds:.1f} s; skipped "
            f"{self.skipped_malformed:,} malformed and {self.skipped_empty:,} empty documents"
        )


def prepare_indexed_dataset(
    sources: Iterable[InputSource],
    *,
    tokenizer: Tokenizer,
    output_prefix: str,
    workers: int = 1,
    json_key: str = "text",
    strict: bool = False,
) -> PreparationSummary:
    """Tokenize every document of `sources` into `output_prefix`.bin/.idx, EOD after each.

    Token ids are stored as uint16 when the vocabulary fits, else int32 (Megatron-LM's
    choice). `workers` > 1 tokenizes in that many processes; the output is the same.
    Raises MalformedInputError on a malformed record if `strict`, and ValueError if no
    document is left; in both cases nothing is written under `output_prefix`.
    """
    start = time.perf_counter()
    output_prefix = os.path.abspath(output_prefix)
    os.makedirs(os.path.dirname(output_prefix), exist_ok=True)
    skip_counts = SkipCounts()
    documents = iter_documents(sources, json_key=json_key, strict=strict, skip_counts=skip_counts)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    temporary_prefix = unique_temporary_path(output_prefix)
    builder = IndexedDatasetBuilder(get_bin_path(temporary_prefix), dtype=dtype)
    progress = _Progress(start)
    try:
        with _tokenized_chunks(_chunked(documents), tokenizer, dtype, workers) as tokenized:
            for chunk in tokenized:
                for token_ids in chunk:
                    builder.add_document(token_ids, [token_ids.size])
                    progress.add(token_ids.size)
        if progress.documents == 0:
            raise ValueError(
                f"no documents to write to {output_prefix}: {skip_counts.malformed} malformed "
                f"and {skip_counts.empty} empty ones were skipped"
            )
        builder.finalize(get_idx_path(temporary_prefix))
        publish_indexed_dataset(temporary_prefix, output_prefix)
    finally:
        builder.data_file.close()
        for path in (get_bin_path(temporary_prefix), get_idx_path(temporary_prefix)):
            if os.path.exists(path):
                os.remove(path)
    return PreparationSummary(
        output_prefix=output_prefix,
        documents=progress.documents,
        tokens=progress.tokens,
        skipped_malformed=skip_counts.malformed,
        skipped_empty=skip_counts.empty,
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
    """Counts what was written and logs documents/s and tokens/s every few seconds."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.last_report = start
        self.documents = 0
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.documents += 1
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last_report >= PROGRESS_INTERVAL_SECONDS:
            self.last_report = now
            elapsed = now - self.start
            logger.info(
                "%s documents, %s tokens | %.0f documents/s, %.0f tokens/s",
                f"{self.documents:,}",
                f"{self.tokens:,}",
                self.documents / elapsed,
                self.tokens / elapsed,
            )


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
