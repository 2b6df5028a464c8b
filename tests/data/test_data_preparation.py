import itertools
import json
import multiprocessing
import os
import shutil
import signal

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from nemotron_train.data import datasets as data_datasets
from nemotron_train.data import indexed_files
from nemotron_train.data.datasets import ensure_stdlib_dataset
from nemotron_train.data.indexed_files import check_indexed_dataset
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.sources import InputSource, MalformedInputError
from nemotron_train.data.stdlib_corpus import stdlib_root, stdlib_source_files


def test_round_trip_through_megatron_indexed_dataset_equals_tokens_plus_eod(
    write_indexed_dataset, builtin_tokenizer, random_documents
):
    documents = random_documents(seed=0, count=150)
    path_prefix = write_indexed_dataset(documents)
    dataset = IndexedDataset(path_prefix)
    assert len(dataset) == len(documents)
    for index, document in enumerate(documents):
        expected = builtin_tokenizer.encode(document) + [builtin_tokenizer.eod]
        assert dataset[index].tolist() == expected
    # Megatron-LM's choice: uint16 when the vocabulary fits.
    assert dataset.index.dtype == numpy.uint16


# Workers are forked (as Megatron-LM's preprocess_data and torch's DataLoader do) from a
# process whose tokenizers/torch thread pools exist; they only tokenize, touching no lock.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_worker_processes_write_the_same_files_as_one_process(
    write_indexed_dataset, random_documents
):
    documents = random_documents(seed=1, count=300)
    serial = write_indexed_dataset(documents, name="serial", workers=1)
    parallel = write_indexed_dataset(documents, name="parallel", workers=2)
    for suffix in (".bin", ".idx"):
        with (
            open(serial + suffix, "rb") as serial_file,
            open(parallel + suffix, "rb") as parallel_file,
        ):
            assert serial_file.read() == parallel_file.read()


def test_a_failed_preparation_leaves_no_output_and_keeps_the_previous_dataset(
    tmp_path, builtin_tokenizer, write_indexed_dataset
):
    path_prefix = write_indexed_dataset(["an earlier, complete dataset"])
    before = check_indexed_dataset(path_prefix)
    bad_input = tmp_path / "bad.jsonl"
    bad_input.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(MalformedInputError, match="bad.jsonl:2"):
        prepare_indexed_dataset(
            [InputSource("jsonl", str(bad_input))],
            tokenizer=builtin_tokenizer,
            output_prefix=path_prefix,
            strict=True,
        )
    assert check_indexed_dataset(path_prefix) == before
    assert sorted(os.listdir(os.path.dirname(path_prefix))) == [
        "corpus_text_document.bin",
        "corpus_text_document.idx",
    ]


def _prepare_until_killed(jsonl_path, tokenizer, output_prefix, documents_before_kill):
    encode = tokenizer.encode
    encoded = itertools.count()

    def encode_until_killed(text):
        if next(encoded) == documents_before_kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return encode(text)

    tokenizer.encode = encode_until_killed
    prepare_indexed_dataset(
        [InputSource("jsonl", jsonl_path)], tokenizer=tokenizer, output_prefix=output_prefix
    )


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_killed_preparation_leaves_no_dataset_that_looks_complete(
    tmp_path, builtin_tokenizer, write_indexed_dataset, random_documents
):
    path_prefix = write_indexed_dataset(["an earlier, complete dataset"])
    before = check_indexed_dataset(path_prefix)
    fresh_prefix = str(tmp_path / "fresh" / "corpus")
    jsonl_path = tmp_path / "large.jsonl"
    documents = random_documents(seed=2, count=400)
    jsonl_path.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    context = multiprocessing.get_context("fork")
    for output_prefix in (path_prefix, fresh_prefix):
        # SIGKILL mid-write: no exception handler, no finally block runs.
        child = context.Process(
            target=_prepare_until_killed,
            args=(str(jsonl_path), builtin_tokenizer, output_prefix, 300),
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == -signal.SIGKILL
        written = [name for name in os.listdir(os.path.dirname(output_prefix)) if ".tmp-" in name]
        assert any(name.endswith(".bin") for name in written)  # it died while writing
    # Being replaced, the earlier dataset is untouched; started afresh, none appears.
    assert check_indexed_dataset(path_prefix) == before
    assert not os.path.exists(fresh_prefix + ".idx") and not os.path.exists(fresh_prefix + ".bin")
    with pytest.raises(FileNotFoundError, match=f"{fresh_prefix}.idx does not exist"):
        check_indexed_dataset(fresh_prefix)


def test_a_crash_between_the_renames_of_a_publication_leaves_no_idx(
    write_indexed_dataset, monkeypatch
):
    path_prefix = write_indexed_dataset(["the dataset being replaced"], name="old")
    replacement = write_indexed_dataset(["a longer replacement dataset, written"], name="new")
    renames = []

    def replace_then_crash(source, destination):
        if renames:
            raise OSError("killed between the two renames")
        renames.append(destination)
        os.rename(source, destination)

    monkeypatch.setattr(indexed_files.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="killed"):
        indexed_files.publish_indexed_dataset(replacement, path_prefix)
    assert renames == [path_prefix + ".bin"]
    with pytest.raises(FileNotFoundError, match=f"{path_prefix}.idx does not exist"):
        check_indexed_dataset(path_prefix)


def test_missing_idx_is_reported_by_name(write_indexed_dataset):
    path_prefix = write_indexed_dataset(["some text"])
    os.remove(path_prefix + ".idx")
    with pytest.raises(FileNotFoundError, match=f"{path_prefix}.idx does not exist"):
        check_indexed_dataset(path_prefix)


def test_truncated_bin_is_reported_by_name(write_indexed_dataset):
    path_prefix = write_indexed_dataset(["some text", "more text"])
    with open(path_prefix + ".bin", "r+b") as bin_file:
        bin_file.truncate(os.path.getsize(path_prefix + ".bin") - 2)
    with pytest.raises(ValueError, match=f"{path_prefix}.bin has"):
        check_indexed_dataset(path_prefix)


def test_bin_of_another_dataset_is_reported_as_mismatched(write_indexed_dataset):
    first = write_indexed_dataset(["a short document"], name="first")
    second = write_indexed_dataset(["a different and rather longer document"], name="second")
    shutil.copy(second + ".bin", first + ".bin")
    with pytest.raises(ValueError, match="two different datasets"):
        check_indexed_dataset(first)


def test_check_reports_what_the_idx_describes(write_indexed_dataset, builtin_tokenizer):
    documents = ["one", "two words", "three more words"]
    info = check_indexed_dataset(write_indexed_dataset(documents))
    assert info.documents == info.sequences == 3
    assert info.tokens == sum(len(builtin_tokenizer.encode(document)) + 1 for document in documents)


def test_stdlib_corpus_leaves_out_tests_applications_and_third_party_code():
    files = stdlib_source_files()
    relative = [path.relative_to(stdlib_root()).as_posix() for path in files]
    assert relative == sorted(relative)
    assert "os.py" in relative and "json/decoder.py" in relative
    directories = {directory for path in relative for directory in path.split("/")[:-1]}
    assert not directories & {"test", "tests", "idlelib", "site-packages", "__pycache__"}
    assert not any(path.startswith("_sysconfigdata") for path in relative)
    assert stdlib_source_files(max_files=5) == files[:5]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_stdlib_subset_goes_through_the_pipeline_once(
    session_cache_dir, builtin_tokenizer, monkeypatch
):
    path_prefix = ensure_stdlib_dataset(
        session_cache_dir, builtin_tokenizer, max_files=12, workers=2
    )
    dataset = IndexedDataset(path_prefix)
    non_empty = [path for path in stdlib_source_files(12) if path.read_text().strip()]
    assert len(dataset) == len(non_empty)
    assert dataset[0].tolist() == builtin_tokenizer.encode(non_empty[0].read_text()) + [
        builtin_tokenizer.eod
    ]

    def fail_if_prepared(*args, **kwargs):
        raise AssertionError("the prepared corpus should have been reused")

    monkeypatch.setattr(data_datasets, "prepare_indexed_dataset", fail_if_prepared)
    assert (
        ensure_stdlib_dataset(session_cache_dir, builtin_tokenizer, max_files=12, workers=2)
        == path_prefix
    )


def _prepare_in_child(cache_dir, tokenizer, preparations, prefixes):
    prepare = data_datasets.prepare_indexed_dataset

    def counted_prepare(*args, **kwargs):
        preparations.put(os.getpid())
        return prepare(*args, **kwargs)

    data_datasets.prepare_indexed_dataset = counted_prepare
    prefixes.put(ensure_stdlib_dataset(cache_dir, tokenizer, max_files=8, workers=1))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_concurrent_first_runs_prepare_one_valid_dataset(tmp_path, builtin_tokenizer):
    context = multiprocessing.get_context("fork")
    preparations, prefixes = context.Queue(), context.Queue()
    children = [
        context.Process(
            target=_prepare_in_child,
            args=(str(tmp_path), builtin_tokenizer, preparations, prefixes),
        )
        for _ in range(3)
    ]
    for child in children:
        child.start()
    (path_prefix,) = {prefixes.get(timeout=120) for _ in children}
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert preparations.qsize() == 1
    assert check_indexed_dataset(path_prefix).documents > 0
    leftovers = [name for name in os.listdir(os.path.dirname(path_prefix)) if ".tmp-" in name]
    assert leftovers == []
