import itertools
import shutil

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from nemotron_train.errors import ConfigError
from nemotron_train.data.config import DataConfig, DataPhaseConfig
from nemotron_train.data.curriculum import build_train_data, plan_data_phases
from nemotron_train.data.datasets import build_data_iterator, build_datasets

SEQ_LENGTH = 16
GLOBAL_BATCH_SIZE = 8
MAX_STEPS = 10
# 0.7 * 10 is 7.000000000000001 in floating point: a naive ceil would switch a step late.
SWITCH_FRACTION = 0.7
SWITCH_STEP = 7
# Token ids of the two corpora: disjoint ranges, so every sample tells where it came from.
PHASE_ONE_TOKENS = range(10, 500)
PHASE_TWO_TOKENS = range(500, 1000)


def _write_token_dataset(path_prefix, token_range, eod, seed, documents=80):
    """An indexed dataset of random documents with ids from `token_range`, each ended by eod."""
    generator = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{path_prefix}.bin", dtype=numpy.uint16)
    for _ in range(documents):
        tokens = generator.integers(token_range.start, token_range.stop, generator.integers(4, 40))
        document = numpy.append(tokens, eod).astype(numpy.uint16)
        builder.add_document(document, [document.size])
    builder.finalize(f"{path_prefix}.idx")
    return str(path_prefix)


@pytest.fixture
def corpora(tmp_path, builtin_tokenizer):
    eod = builtin_tokenizer.eod
    return {
        "one": _write_token_dataset(tmp_path / "one", PHASE_ONE_TOKENS, eod, seed=1),
        "two": _write_token_dataset(tmp_path / "two", PHASE_TWO_TOKENS, eod, seed=2),
        "three": _write_token_dataset(tmp_path / "three", PHASE_TWO_TOKENS, eod, seed=3),
    }


def _two_phases(corpora, cache_dir, fraction=SWITCH_FRACTION) -> DataConfig:
    """Phase 1 reads corpus one; phase 2 a weighted blend of corpora two and three."""
    return DataConfig(
        corpus="prefixes",
        phases=[
            DataPhaseConfig(blend=[[1.0, corpora["one"]]], until_fraction=fraction),
            DataPhaseConfig(
                blend=[[0.6, corpora["two"]], [0.4, corpora["three"]]], until_fraction=1.0
            ),
        ],
        split="90,10,0",
        cache_dir=str(cache_dir),
    )


def _train_data(config, tokenizer, *, consumed_samples=0, micro_batch_size=4, rank=0, size=1):
    return build_train_data(
        config,
        tokenizer,
        seq_length=SEQ_LENGTH,
        seed=1234,
        max_steps=MAX_STEPS,
        global_batch_size=GLOBAL_BATCH_SIZE,
        micro_batch_size=micro_batch_size,
        valid_samples=8,
        consumed_samples=consumed_samples,
        data_parallel_rank=rank,
        data_parallel_size=size,
    )


def _samples(train_data) -> torch.Tensor:
    """Every sample the iterator yields, in order, as one [samples, seq] tensor."""
    return torch.cat([batch["tokens"] for batch in train_data.iterator])


def _origin(sample: torch.Tensor, eod: int) -> str:
    tokens = set(sample[sample != eod].tolist())
    if tokens <= set(PHASE_ONE_TOKENS):
        return "one"
    assert tokens <= set(PHASE_TWO_TOKENS), "a sample mixes the two corpora"
    return "two"


@pytest.mark.parametrize(
    "fraction, max_steps, switch_step",
    [(0.94, 100, 94), (0.94, 1000, 940), (0.94, 17, 16), (0.7, 10, 7), (0.1, 10, 1), (0.5, 3, 2)],
)
def test_phase_one_ends_at_the_first_step_count_reaching_its_fraction(
    fraction, max_steps, switch_step
):
    config = _two_phases({"one": "/a", "two": "/b", "three": "/c"}, "/cache", fraction)
    first, second = plan_data_phases(config, max_steps)
    assert (first.number, first.first_step, first.last_step) == (1, 1, switch_step)
    assert (second.number, second.first_step, second.last_step) == (2, switch_step + 1, max_steps)


def test_a_phase_left_without_a_step_is_a_config_error_naming_the_fraction():
    config = _two_phases({"one": "/a", "two": "/b", "three": "/c"}, "/cache", 0.94)
    with pytest.raises(ConfigError, match=r"data\.phases\.0\.until_fraction=0\.94.*max_steps=10"):
        plan_data_phases(config, 10)


def test_steps_before_the_switch_read_only_phase_one_and_after_only_phase_two(
    corpora, builtin_tokenizer, tmp_path
):
    train_data = _train_data(_two_phases(corpora, tmp_path / "cache"), builtin_tokenizer)
    assert train_data.switch_steps == (SWITCH_STEP,)
    samples = _samples(train_data)
    assert len(samples) == MAX_STEPS * GLOBAL_BATCH_SIZE
    for step in range(1, MAX_STEPS + 1):
        step_samples = samples[(step - 1) * GLOBAL_BATCH_SIZE : step * GLOBAL_BATCH_SIZE]
        expected = "one" if step <= SWITCH_STEP else "two"
        assert {_origin(sample, builtin_tokenizer.eod) for sample in step_samples} == {expected}
        assert train_data.phase_for_step(step) == (1 if step <= SWITCH_STEP else 2)
    with pytest.raises(ValueError, match="step=11"):
        train_data.phase_for_step(MAX_STEPS + 1)
    # The validation set comes from the first phase's blend.
    valid = train_data.valid_dataset
    origins = {_origin(valid[index]["tokens"], builtin_tokenizer.eod) for index in range(8)}
    assert origins == {"one"}


@pytest.mark.parametrize(
    "consumed_steps, data_parallel_size",
    [(3, 1), (SWITCH_STEP - 1, 1), (SWITCH_STEP, 1), (SWITCH_STEP + 1, 1), (SWITCH_STEP, 2)],
)
def test_a_resumed_run_continues_the_uninterrupted_stream_across_the_switch(
    corpora, builtin_tokenizer, tmp_path, consumed_steps, data_parallel_size
):
    config = _two_phases(corpora, tmp_path / "cache")
    uninterrupted = _samples(_train_data(config, builtin_tokenizer))
    consumed_samples = consumed_steps * GLOBAL_BATCH_SIZE
    # Each resumed rank builds everything afresh, as a restarted job does.
    micro_batch_size = 4 // data_parallel_size
    per_rank = [
        list(
            _train_data(
                config,
                builtin_tokenizer,
                consumed_samples=consumed_samples,
                micro_batch_size=micro_batch_size,
                rank=rank,
                size=data_parallel_size,
            ).iterator
        )
        for rank in range(data_parallel_size)
    ]
    resumed = torch.cat(
        [batch["tokens"] for micro_step in zip(*per_rank, strict=True) for batch in micro_step]
    )
    assert torch.equal(resumed, uninterrupted[consumed_samples:])


def test_a_finished_run_resumed_reads_nothing(corpora, builtin_tokenizer, tmp_path):
    config = _two_phases(corpora, tmp_path / "cache")
    finished = _train_data(
        config, builtin_tokenizer, consumed_samples=MAX_STEPS * GLOBAL_BATCH_SIZE
    )
    assert list(finished.iterator) == []


def test_a_blend_repeated_in_a_later_phase_is_not_replayed_in_the_same_order(
    corpora, builtin_tokenizer, tmp_path
):
    same_blend = [[1.0, corpora["one"]]]
    config = DataConfig(
        corpus="prefixes",
        phases=[
            DataPhaseConfig(blend=same_blend, until_fraction=0.5),
            DataPhaseConfig(blend=same_blend, until_fraction=1.0),
        ],
        split="90,10,0",
        cache_dir=str(tmp_path / "cache"),
    )
    samples = _samples(_train_data(config, builtin_tokenizer))
    half = len(samples) // 2
    assert not torch.equal(samples[:half], samples[half:])


@pytest.mark.parametrize("corpus", ["stdlib", "prefixes"])
def test_one_blend_reads_what_build_datasets_and_build_data_iterator_read(
    corpora, builtin_tokenizer, session_cache_dir, corpus
):
    if corpus == "stdlib":
        config = DataConfig(
            cache_dir=session_cache_dir, stdlib_max_files=12, split="90,10,0", preparation_workers=1
        )
    else:
        config = DataConfig(
            corpus="prefixes",
            blend=[[1.0, corpora["one"]]],
            split="90,10,0",
            cache_dir=session_cache_dir,
        )
    train_data = _train_data(config, builtin_tokenizer, consumed_samples=16)
    assert len(train_data.phases) == 1 and train_data.switch_steps == ()
    assert {train_data.phase_for_step(step) for step in range(1, MAX_STEPS + 1)} == {1}
    datasets = build_datasets(
        config,
        builtin_tokenizer,
        seq_length=SEQ_LENGTH,
        seed=1234,
        train_samples=MAX_STEPS * GLOBAL_BATCH_SIZE,
        valid_samples=8,
    )
    reference = build_data_iterator(
        datasets.train,
        micro_batch_size=4,
        consumed_samples=16,
        data_parallel_rank=0,
        data_parallel_size=1,
    )
    expected = list(itertools.islice(reference, (MAX_STEPS * GLOBAL_BATCH_SIZE - 16) // 4))
    actual = list(train_data.iterator)
    assert len(actual) == len(expected)
    for batch, reference_batch in zip(actual, expected, strict=True):
        assert all(torch.equal(batch[key], reference_batch[key]) for key in batch)
    assert len(train_data.valid_dataset) == len(datasets.valid)


def test_a_missing_file_of_a_later_phase_fails_at_start_naming_it(
    corpora, builtin_tokenizer, tmp_path
):
    missing = str(tmp_path / "elsewhere" / "two")
    config = _two_phases({**corpora, "two": missing}, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=f"{missing}.idx does not exist"):
        _train_data(config, builtin_tokenizer)


def test_an_idx_of_another_dataset_fails_at_start_naming_the_pair(
    corpora, builtin_tokenizer, tmp_path
):
    shutil.copy(corpora["one"] + ".idx", corpora["two"] + ".idx")
    config = _two_phases(corpora, tmp_path / "cache")
    two = corpora["two"]
    with pytest.raises(ValueError, match=f"{two}.bin has .* bytes but {two}.idx describes"):
        _train_data(config, builtin_tokenizer)


def test_mixed_lengths_resume_each_stream_where_the_uninterrupted_run_was(corpora, builtin_tokenizer, tmp_path):
    from nemotron_train.data.sequence_lengths import SequenceLengthSchedule

    config = _two_phases(corpora, tmp_path / "cache")
    lengths = SequenceLengthSchedule.from_config(SEQ_LENGTH, 4, 0.5)

    def step_batches(consumed_steps):
        data = build_train_data(
            config, builtin_tokenizer, seq_length=SEQ_LENGTH, seed=1234, max_steps=MAX_STEPS,
            global_batch_size=GLOBAL_BATCH_SIZE, micro_batch_size=4, valid_samples=8,
            consumed_samples=consumed_steps * GLOBAL_BATCH_SIZE, data_parallel_rank=0,
            data_parallel_size=1, lengths=lengths)
        steps = {}
        for step in range(consumed_steps + 1, MAX_STEPS + 1):
            batches = data.batches_for_step(step)
            micro = [next(batches.iterator)["tokens"] for _ in range(GLOBAL_BATCH_SIZE // 4)]
            steps[step] = torch.cat(micro)
        return steps

    straight = step_batches(0)
    # Same tokens every step: 8 x 16 long, or 8 x 4 = 32 sequences of 4 on short (even) steps.
    assert [tuple(straight[s].shape) for s in (1, 2)] == [(8, 16), (32, 4)]
    for resumed_after in (3, 4, SWITCH_STEP):  # long, short and the phase switch
        resumed = step_batches(resumed_after)
        assert all(torch.equal(resumed[s], straight[s]) for s in resumed)
