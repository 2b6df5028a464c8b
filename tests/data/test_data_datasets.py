import itertools
import logging
import math
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemotron_train.data.config import DataConfig
from nemotron_train.data.datasets import build_data_iterator, build_datasets
from nemotron_train.data.sampler import PretrainingBatchSampler

SEQ_LENGTH = 32


def _prefixes_config(cache_dir, *blend, split="90,10,0") -> DataConfig:
    return DataConfig(
        corpus="prefixes",
        blend=[list(entry) for entry in blend],
        split=split,
        cache_dir=str(cache_dir),
    )


def _batches(dataset, count, *, micro_batch_size=4, consumed_samples=0, rank=0, size=1):
    iterator = build_data_iterator(
        dataset,
        micro_batch_size=micro_batch_size,
        consumed_samples=consumed_samples,
        data_parallel_rank=rank,
        data_parallel_size=size,
    )
    return list(itertools.islice(iterator, count))


@pytest.fixture
def single_corpus(write_indexed_dataset, random_documents) -> str:
    return write_indexed_dataset(random_documents(seed=3, count=200))


def _build(config, tokenizer, seed=1234, train_samples=400, valid_samples=40):
    return build_datasets(
        config,
        tokenizer,
        seq_length=SEQ_LENGTH,
        seed=seed,
        train_samples=train_samples,
        valid_samples=valid_samples,
    )


def test_batches_hold_next_token_labels_and_full_masks(single_corpus, builtin_tokenizer, tmp_path):
    datasets = _build(_prefixes_config(tmp_path / "cache", [1.0, single_corpus]), builtin_tokenizer)
    assert datasets.test is None  # its share of the split is 0
    assert len(datasets.train) >= 400 and len(datasets.valid) >= 40
    (batch,) = _batches(datasets.train, 1)
    assert set(batch) == {"tokens", "labels", "loss_mask", "position_ids"}
    for key, dtype in [
        ("tokens", torch.int64),
        ("labels", torch.int64),
        ("loss_mask", torch.float32),
        ("position_ids", torch.int64),
    ]:
        assert batch[key].dtype == dtype and batch[key].shape == (4, SEQ_LENGTH)
    assert torch.equal(batch["labels"][:, :-1], batch["tokens"][:, 1:])
    assert torch.equal(batch["loss_mask"], torch.ones(4, SEQ_LENGTH))
    assert torch.equal(batch["position_ids"], torch.arange(SEQ_LENGTH).expand(4, -1))


def test_same_seed_gives_the_same_order_and_another_seed_another(
    single_corpus, builtin_tokenizer, tmp_path
):
    # Separate cache directories: each build computes Megatron-Core's indices from scratch.
    first = _batches(
        _build(_prefixes_config(tmp_path / "a", [1, single_corpus]), builtin_tokenizer).train, 10
    )
    again = _batches(
        _build(_prefixes_config(tmp_path / "b", [1, single_corpus]), builtin_tokenizer).train, 10
    )
    other = _batches(
        _build(
            _prefixes_config(tmp_path / "c", [1, single_corpus]), builtin_tokenizer, seed=99
        ).train,
        10,
    )
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize("consumed_samples", [12, 7])
def test_resuming_after_k_samples_continues_the_uninterrupted_stream(
    single_corpus, builtin_tokenizer, tmp_path, consumed_samples
):
    train = _build(_prefixes_config(tmp_path, [1, single_corpus]), builtin_tokenizer).train
    uninterrupted = torch.cat([batch["tokens"] for batch in _batches(train, 20)])
    resumed_batches = _batches(train, 10, consumed_samples=consumed_samples)
    resumed = torch.cat([batch["tokens"] for batch in resumed_batches])
    assert torch.equal(resumed, uninterrupted[consumed_samples : consumed_samples + len(resumed)])


def test_data_parallel_ranks_split_each_global_micro_batch_in_rank_order(
    single_corpus, builtin_tokenizer, tmp_path
):
    train = _build(_prefixes_config(tmp_path, [1, single_corpus]), builtin_tokenizer).train
    single = _batches(train, 6, micro_batch_size=4, consumed_samples=8)
    rank0 = _batches(train, 6, micro_batch_size=2, consumed_samples=8, rank=0, size=2)
    rank1 = _batches(train, 6, micro_batch_size=2, consumed_samples=8, rank=1, size=2)
    for whole, first_half, second_half in zip(single, rank0, rank1, strict=True):
        assert torch.equal(
            torch.cat([first_half["tokens"], second_half["tokens"]]), whole["tokens"]
        )


@pytest.mark.parametrize(
    "total, consumed, micro_batch_size, data_parallel_size",
    [(103, 5, 3, 4), (64, 0, 4, 2), (10, 9, 1, 1), (1000, 333, 2, 8), (12, 0, 4, 4)],
)
def test_sampler_gives_ranks_disjoint_indices_covering_each_micro_step(
    total, consumed, micro_batch_size, data_parallel_size
):
    # The order Megatron-LM's MegatronPretrainingSampler (which the sampler iterates) is
    # documented to give: micro step m covers the next micro_batch_size * dp indices after
    # consumed + m * micro_batch_size * dp, split among the ranks in rank order.
    def indices(rank):
        sampler = PretrainingBatchSampler(
            total_samples=total,
            consumed_samples=consumed,
            micro_batch_size=micro_batch_size,
            data_parallel_rank=rank,
            data_parallel_size=data_parallel_size,
        )
        assert len(sampler) == (total - consumed) // (micro_batch_size * data_parallel_size)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        return batches

    per_rank = [indices(rank) for rank in range(data_parallel_size)]
    step_size = micro_batch_size * data_parallel_size
    for step, batches in enumerate(zip(*per_rank, strict=True)):
        flattened = [index for batch in batches for index in batch]
        assert flattened == list(range(consumed + step_size * step, consumed + step_size * (step + 1)))


def test_iterating_the_sampler_leaves_the_root_logger_alone():
    # Importing megatron.training (where the sampler lives) configures the root logger.
    probe = (
        "import logging\n"
        "from nemotron_train.data.sampler import PretrainingBatchSampler\n"
        "sampler = PretrainingBatchSampler(total_samples=8, consumed_samples=0, micro_batch_size=2,"
        " data_parallel_rank=0, data_parallel_size=1)\n"
        "assert list(sampler)[0] == [0, 1]\n"
        "import megatron.training\n"
        "print(len(logging.root.handlers), logging.root.level)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", str(logging.WARNING)]


def test_sampler_rejects_an_exhausted_dataset():
    with pytest.raises(ValueError, match="consumed_samples=10"):
        PretrainingBatchSampler(
            total_samples=10,
            consumed_samples=10,
            micro_batch_size=1,
            data_parallel_rank=0,
            data_parallel_size=1,
        )


def test_blend_weights_set_the_share_of_samples_from_each_dataset(
    write_indexed_dataset, random_documents, builtin_tokenizer, tmp_path
):
    first_letters, second_letters = set("abcdefghijklm"), set("nopqrstuvwxyz")
    first = write_indexed_dataset(
        random_documents(seed=4, count=100, alphabet="".join(sorted(first_letters))), name="first"
    )
    second = write_indexed_dataset(
        random_documents(seed=5, count=100, alphabet="".join(sorted(second_letters))), name="second"
    )
    samples = 2000
    config = _prefixes_config(tmp_path / "cache", [0.7, first], [0.3, second])
    train = _build(config, builtin_tokenizer, train_samples=samples).train
    from_first = []
    for batch in _batches(train, samples // 4):
        for tokens in batch["tokens"]:
            letters = set(
                builtin_tokenizer.decode([t for t in tokens.tolist() if t != builtin_tokenizer.eod])
            )
            assert letters <= first_letters or letters <= second_letters
            from_first.append(letters <= first_letters)
    # A sampler drawing each sample independently would land within 4 binomial standard
    # deviations of 0.7 with probability 1 - 6e-5.
    tolerance = 4 * math.sqrt(0.7 * 0.3 / samples)
    assert abs(sum(from_first) / samples - 0.7) <= tolerance
    # Megatron-Core's blending is tighter: it picks, sample by sample, the dataset furthest
    # behind its weight, so every prefix of the stream is within one sample of 70 %.
    running = list(itertools.accumulate(from_first))
    assert all(abs(count - 0.7 * (n + 1)) <= 1 for n, count in enumerate(running))


def test_a_split_left_without_documents_is_an_error_not_a_hang(
    write_indexed_dataset, builtin_tokenizer, tmp_path
):
    tiny = write_indexed_dataset(["one document", "another", "a third"])
    with pytest.raises(ValueError, match="gives the valid split no document"):
        _build(_prefixes_config(tmp_path, [1, tiny], split="98,2,0"), builtin_tokenizer)


def test_a_missing_blend_prefix_names_the_missing_file(single_corpus, builtin_tokenizer, tmp_path):
    missing = str(tmp_path / "nowhere" / "corpus_text_document")
    with pytest.raises(FileNotFoundError, match=f"{missing}.idx does not exist"):
        _build(_prefixes_config(tmp_path, [0.5, single_corpus], [0.5, missing]), builtin_tokenizer)


def _stdlib_subset_config(cache_dir) -> DataConfig:
    return DataConfig(
        cache_dir=str(cache_dir), stdlib_max_files=40, split="90,10,0", preparation_workers=1
    )


def _run_data_parallel_rank(rank, world_size, store, cache_dir, tokenizer, output):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size
    )
    config = _stdlib_subset_config(cache_dir)
    train = build_datasets(
        config, tokenizer, seq_length=64, seed=7, train_samples=200, valid_samples=20
    ).train
    batches = _batches(train, 5, micro_batch_size=2, consumed_samples=4, rank=rank, size=world_size)
    torch.save([batch["tokens"] for batch in batches], output)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# The ranks are forked from this process (Megatron-Core already imported) rather than
# started afresh, which would cost each one seconds of imports; they run no parallel kernels.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_two_gloo_ranks_build_together_and_split_the_single_process_batches(
    session_cache_dir, builtin_tokenizer, tmp_path
):
    # A fresh cache (the trained tokenizer copied in): rank 0 prepares the stdlib subset and
    # builds Megatron-Core's indices while rank 1 waits at the barriers, then reads them.
    cache_dir = tmp_path / "cache"
    shutil.copytree(Path(session_cache_dir) / "tokenizers", cache_dir / "tokenizers")
    context = multiprocessing.get_context("fork")
    ranks = [
        context.Process(
            target=_run_data_parallel_rank,
            args=(
                rank,
                2,
                tmp_path / "store",
                cache_dir,
                builtin_tokenizer,
                tmp_path / f"{rank}.pt",
            ),
        )
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in ranks] == [0, 0]
    train = build_datasets(
        _stdlib_subset_config(cache_dir),
        builtin_tokenizer,
        seq_length=64,
        seed=7,
        train_samples=200,
        valid_samples=20,
    ).train
    single = _batches(train, 5, micro_batch_size=4, consumed_samples=4)
    rank0, rank1 = (torch.load(tmp_path / f"{rank}.pt") for rank in range(2))
    for whole, first_half, second_half in zip(single, rank0, rank1, strict=True):
        assert torch.equal(torch.cat([first_half, second_half]), whole["tokens"])
