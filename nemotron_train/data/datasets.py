"""Pretraining datasets through Megatron-Core, and the iterator that feeds the trainer.

Megatron-Core's BlendedMegatronDatasetBuilder builds the GPTDatasets (documents shuffled
and packed into samples of seq_length + 1 tokens, the samples shuffled, the indices cached
under cache_dir) and, for a weighted blend, the BlendedDataset over them. What we add:
preparing the stdlib corpus on first use, checking .bin/.idx pairs and splits before
Megatron-Core sees them, a lock around its cache writes, and the sampler.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import get_idx_path

from nemotron_train.data.cache import exclusive_file_lock, resolve_cache_dir, short_hash
from nemotron_train.data.config import DataConfig
from nemotron_train.data.indexed_files import IndexedDatasetInfo, check_indexed_dataset
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.sampler import PretrainingBatchSampler
from nemotron_train.data.inputs import STDLIB_INPUT, expand_inputs
from nemotron_train.data.stdlib_corpus import stdlib_corpus_fingerprint
from nemotron_train.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
SOURCE_KEY = "dataset_id"
"""A BlendedDataset sample's source index, kept in validation batches for per-source losses."""
SPLIT_NAMES = ("train", "valid", "test")

PretrainingDataset = GPTDataset | BlendedDataset


@dataclass(frozen=True)
class PretrainingDatasets:
    """The train, validation and test datasets; a split with a zero share is None."""

    train: PretrainingDataset
    valid: PretrainingDataset | None
    test: PretrainingDataset | None


def build_datasets(
    config: DataConfig,
    tokenizer: Tokenizer,
    *,
    seq_length: int,
    seed: int,
    train_samples: int,
    valid_samples: int,
    test_samples: int = 0,
) -> PretrainingDatasets:
    """Megatron-Core datasets of at least the given numbers of samples of seq_length tokens.

    The sample order depends on `seed` and on the requested sizes (they decide how many
    epochs are shuffled together), so a resumed run must request the same sizes. With
    torch.distributed initialized, every rank must call this: Megatron-Core builds on
    global rank 0 first while the others wait at barriers, then they read its caches.
    """
    if seq_length < 1 or train_samples < 1 or min(valid_samples, test_samples) < 0:
        raise ValueError(
            f"seq_length={seq_length}, train_samples={train_samples}, valid_samples="
            f"{valid_samples}, test_samples={test_samples} are invalid; allowed: seq_length "
            ">= 1, train_samples >= 1, valid_samples >= 0, test_samples >= 0"
        )
    cache_dir = resolve_cache_dir(config.cache_dir)
    if config.corpus == "stdlib":
        path_prefixes = [
            ensure_stdlib_dataset(
                cache_dir,
                tokenizer,
                max_files=config.stdlib_max_files,
                workers=config.preparation_workers,
            )
        ]
        weights = None
    else:
        path_prefixes = [os.path.abspath(os.path.expanduser(prefix)) for _, prefix in config.blend]
        # Megatron-Core builds a plain GPTDataset only for a single prefix without weight.
        weights = [float(weight) for weight, _ in config.blend] if len(config.blend) > 1 else None
    for path_prefix in path_prefixes:
        _check_every_split_has_documents(check_indexed_dataset(path_prefix), config.split)
    gpt_config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(path_prefixes, weights),
        split=config.split,
        path_to_cache=os.path.join(cache_dir, "megatron_indices"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The model's causal attention builds its own mask; a [seq, seq] one per sample
        # would be the largest tensor of the batch at long sequence lengths.
        create_attention_mask=False,
    )
    builder = BlendedMegatronDatasetBuilder(
        GPTDataset,
        [train_samples, valid_samples, test_samples],
        lambda: True,  # every rank holds its own datasets (they are memory maps)
        gpt_config,
    )
    with _index_cache_lock(gpt_config.path_to_cache):
        train, valid, test = builder.build()
    return PretrainingDatasets(train=train, valid=valid, test=test)


def build_data_iterator(
    dataset: torch.utils.data.Dataset,
    *,
    micro_batch_size: int,
    consumed_samples: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int = 0,
    with_source: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's micro batches, resuming after `consumed_samples` (counted over all ranks).

    `with_source` adds each sample's blend source (`dataset_id`, [micro_batch]) to the batch,
    for validation losses per source.

    `dataset` is a PretrainingDataset or a stream of them (curriculum.py). Each batch maps tokens, labels, position_ids (int64) and loss_mask (float32) to
    [micro_batch_size, seq_length] tensors. Order: see sampler.py. The iterator stops when
    the dataset is exhausted.
    """
    sampler = PretrainingBatchSampler(
        total_samples=len(dataset),
        consumed_samples=consumed_samples,
        micro_batch_size=micro_batch_size,
        data_parallel_rank=data_parallel_rank,
        data_parallel_size=data_parallel_size,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_with_source if with_source else collate_pretraining_batch,
        persistent_workers=num_workers > 0,
    )
    return iter(loader)


def collate_pretraining_batch(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the samples' BATCH_KEYS into [micro_batch, seq] tensors.

    Other keys (a BlendedDataset's dataset_id) are left out, so that every corpus gives the
    trainer the same batch.
    """
    return {key: torch.stack([sample[key] for sample in samples]) for key in BATCH_KEYS}


def collate_with_source(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`collate_pretraining_batch` plus each sample's `dataset_id` in a BlendedDataset."""
    batch = collate_pretraining_batch(samples)
    batch[SOURCE_KEY] = torch.tensor([int(sample[SOURCE_KEY]) for sample in samples])
    return batch


def blend_source_names(dataset: PretrainingDataset) -> list[str]:
    """The names of a BlendedDataset's sources in `dataset_id` order (the file names of their
    path prefixes); [] for a single dataset."""
    if not isinstance(dataset, BlendedDataset):
        return []
    return [os.path.basename(part.dataset_path).removesuffix("_text_document") for part in dataset.datasets]


def ensure_stdlib_dataset(
    cache_dir: str, tokenizer: Tokenizer, *, max_files: int | None, workers: int
) -> str:
    """The path prefix of the stdlib corpus tokenized with `tokenizer`, prepared on first use.

    The cache key covers the interpreter's stdlib files, the tokenizer and `max_files`. A
    lock makes concurrent first runs prepare it once; the others wait and reuse it.
    """
    key = short_hash(stdlib_corpus_fingerprint(max_files), tokenizer.fingerprint, max_files)
    path_prefix = os.path.join(cache_dir, "datasets", f"stdlib-{key}", "stdlib_text_document")
    # The .idx is published last, so it marks a complete dataset.
    if os.path.exists(get_idx_path(path_prefix)):
        return path_prefix
    with exclusive_file_lock(path_prefix + ".lock"):
        if not os.path.exists(get_idx_path(path_prefix)):
            summary = prepare_indexed_dataset(
                expand_inputs([STDLIB_INPUT], stdlib_max_files=max_files),
                tokenizer=tokenizer,
                output_prefix=path_prefix,
                workers=workers,
            )
            logger.info("prepared the stdlib corpus: %s", summary.describe())
    return path_prefix


def _check_every_split_has_documents(info: IndexedDatasetInfo, split: str) -> None:
    # Megatron-Core's GPTDataset loops forever looking for enough tokens in a split that
    # received no document (this happens with small corpora and shares like 98,2,0).
    split_matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for name, bounds in zip(SPLIT_NAMES, split_matrix, strict=True):
        if bounds is None:
            continue
        first = int(round(bounds[0] * info.sequences))
        end = int(round(bounds[1] * info.sequences))
        if end <= first:
            raise ValueError(
                f"DataConfig.split={split!r} gives the {name} split no document of "
                f"{info.path_prefix} ({info.sequences} documents); raise its share, set it "
                "to 0, or use more data"
            )


def _index_cache_lock(path_to_cache: str) -> contextlib.AbstractContextManager:
    # Megatron-Core writes its sample-index .npy files in place and unlocked, and without
    # torch.distributed every process writes them: the lock keeps concurrent first runs
    # from reading each other's half-written files. Under torch.distributed only global
    # rank 0 writes while the others wait at Megatron-Core's barriers, so only rank 0
    # locks (the others taking the lock would deadlock against those barriers).
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return contextlib.nullcontext()
    return exclusive_file_lock(os.path.join(path_to_cache, "build.lock"))
