"""Sharded preparation: shards merged equal one unsharded run byte for byte, resume after a
kill redoes only the unfinished shard, and merge/blend refuse what does not fit."""

import gzip
import itertools
import json
import multiprocessing
import os
import signal

import numpy
import pytest
import zstandard
from omegaconf import OmegaConf

from nemotron_train.data.config import DataConfig, TokenizerConfig
from nemotron_train.data.datasets import build_datasets
from nemotron_train.data.indexed_files import check_indexed_dataset
from nemotron_train.data.inputs import expand_inputs
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.shard_outputs import merge_shards, write_blend
from nemotron_train.data.shard_plan import load_or_make_shard_plan, make_shard_plan
from nemotron_train.data.shards import (
    manifest_path,
    prepare_shard,
    preparation_status,
    shard_prefix,
)
from nemotron_train.data.sources import ReadCounts, iter_documents
from nemotron_train.data.tokenizer import build_tokenizer


def _json_lines(documents):
    return "".join(json.dumps({"text": document}) + "\n" for document in documents).encode()


@pytest.fixture
def corpus(tmp_path, random_documents):
    """A directory of every kind the planner treats differently: a large plain JSONL file
    (cut into byte ranges), gzip and zstd files and a text file (kept whole)."""
    root = tmp_path / "corpus"
    root.mkdir()
    documents = random_documents(seed=20, count=400)
    (root / "a_large.jsonl").write_bytes(_json_lines(documents[:250]))
    (root / "b.jsonl.gz").write_bytes(gzip.compress(_json_lines(documents[250:300])))
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    (root / "c.jsonl.zst").write_bytes(compressor.compress(_json_lines(documents[300:380])))
    (root / "d.txt").write_text("a plain text document\nof two lines\n")
    (root / "e.jsonl").write_bytes(_json_lines(documents[380:]))
    return root


def _prepare_all_shards(plan, output_prefix, tokenizer, workers=1):
    for index in range(plan.num_shards):
        prepare_shard(
            plan,
            index,
            output_prefix=output_prefix,
            tokenizer=tokenizer,
            tokenizer_config=TokenizerConfig(),
            workers=workers,
        )


def _files(prefix):
    return [open(prefix + suffix, "rb").read() for suffix in (".bin", ".idx")]


@pytest.fixture
def unsharded(corpus, tmp_path, builtin_tokenizer):
    summary = prepare_indexed_dataset(
        expand_inputs([str(corpus)]),
        tokenizer=builtin_tokenizer,
        output_prefix=str(tmp_path / "single" / "corpus"),
    )
    return summary.output_prefix


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("num_shards, workers", [(1, 1), (2, 2), (3, 1), (8, 1)])
def test_shards_merged_are_byte_identical_to_one_unsharded_run(
    corpus, tmp_path, builtin_tokenizer, unsharded, num_shards, workers
):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], num_shards)
    if num_shards > 1:
        # The large plain file is cut between shards; the compressed ones are not.
        cut = [piece for shard in plan.shards for piece in shard if piece.is_byte_range]
        assert cut and all(piece.path.endswith("a_large.jsonl") for piece in cut)
    _prepare_all_shards(plan, output_prefix, builtin_tokenizer, workers)
    merged = merge_shards(output_prefix)
    assert _files(output_prefix) == _files(unsharded)
    assert merged.documents == check_indexed_dataset(unsharded).documents


def test_every_shard_count_reads_every_document_once_in_order(corpus):
    whole = list(iter_documents(expand_inputs([str(corpus)]), strict=True, counts=ReadCounts()))
    for num_shards in range(1, 41):  # more shards than lines of some files: empty shards
        plan = make_shard_plan([str(corpus)], ["text"], num_shards)
        sharded = [
            document
            for shard in plan.shards
            for document in iter_documents(shard, strict=True, counts=ReadCounts())
        ]
        assert sharded == whole, f"{num_shards} shards"
        planned = [plan.planned_bytes(index) for index in range(num_shards)]
        assert sum(planned) == sum(os.path.getsize(corpus / name) for name in os.listdir(corpus))


def _kill_during_shard(plan, output_prefix, tokenizer, kill_at_document):
    encode, encoded = tokenizer.encode, itertools.count()

    def encode_until_killed(text):
        if next(encoded) == kill_at_document:
            os.kill(os.getpid(), signal.SIGKILL)
        return encode(text)

    tokenizer.encode = encode_until_killed
    _prepare_all_shards(plan, output_prefix, tokenizer)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_killed_run_resumes_redoing_only_unfinished_shards_with_identical_bytes(
    corpus, tmp_path, builtin_tokenizer, unsharded, caplog
):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 3)
    first_shard_documents = sum(
        1 for _ in iter_documents(plan.shards[0], strict=True, counts=ReadCounts())
    )
    # SIGKILL in the middle of shard 1: no handler or finally block runs.
    child = multiprocessing.get_context("fork").Process(
        target=_kill_during_shard,
        args=(plan, output_prefix, builtin_tokenizer, first_shard_documents + 20),
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    first, second = (shard_prefix(output_prefix, index, 3) for index in (0, 1))
    assert os.path.exists(manifest_path(first)) and not os.path.exists(manifest_path(second))
    assert any(".tmp-" in name for name in os.listdir(tmp_path / "sharded"))  # killed mid-write
    finished_before = {path: os.stat(path).st_mtime_ns for path in _shard_files(first)}
    # A new process's view: the plan from its file; the child's patched encode stayed there.
    with caplog.at_level("INFO"):
        _prepare_all_shards(load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 3),
                            output_prefix, builtin_tokenizer)
    assert "shard 0/3: finished earlier" in caplog.text and "shard 1/3: finished earlier" not in caplog.text
    assert {path: os.stat(path).st_mtime_ns for path in _shard_files(first)} == finished_before
    assert not any(".tmp-" in name for name in os.listdir(tmp_path / "sharded"))
    merge_shards(output_prefix)
    assert _files(output_prefix) == _files(unsharded)


def _shard_files(prefix):
    return [prefix + ".bin", prefix + ".idx", manifest_path(prefix)]


def test_a_damaged_shard_is_refused_by_merge_and_redone_on_the_next_run(
    corpus, tmp_path, builtin_tokenizer, unsharded
):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 2)
    _prepare_all_shards(plan, output_prefix, builtin_tokenizer)
    damaged = shard_prefix(output_prefix, 1, 2) + ".bin"
    with open(damaged, "r+b") as shard_file:
        shard_file.truncate(os.path.getsize(damaged) - 2)
    with pytest.raises(ValueError, match=r"1 of 2 shards .* are not finished .*: 1; run them"):
        merge_shards(output_prefix)
    assert not os.path.exists(output_prefix + ".idx")
    assert preparation_status(plan, output_prefix).count("finished") == 1
    _prepare_all_shards(plan, output_prefix, builtin_tokenizer)
    merge_shards(output_prefix)
    assert _files(output_prefix) == _files(unsharded)


def test_an_input_changed_since_planning_stops_its_shard(corpus, tmp_path, builtin_tokenizer):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 2)
    with open(corpus / "e.jsonl", "ab") as grown:
        grown.write(_json_lines(["one more"]))
    last = plan.num_shards - 1
    with pytest.raises(ValueError, match=f"input {corpus / 'e.jsonl'} has .* bytes but had"):
        prepare_shard(plan, last, output_prefix=output_prefix, tokenizer=builtin_tokenizer,
                      tokenizer_config=TokenizerConfig())


def test_a_plan_is_reused_only_for_the_same_arguments(corpus, tmp_path):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 4)
    (corpus / "f.jsonl").write_bytes(_json_lines(["added after planning"]))
    # The same arguments read the stored plan: tasks agree even if the directory changed.
    assert load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 4) == plan
    with pytest.raises(ValueError, match="was made with num_shards=4, not 5"):
        load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 5)
    with pytest.raises(ValueError, match="was made with json_keys"):
        load_or_make_shard_plan(output_prefix, [str(corpus)], ["content"], 4)


def test_a_finished_shard_from_another_tokenizer_is_refused(corpus, tmp_path, builtin_tokenizer, tokenizer_json):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 2)
    _prepare_all_shards(plan, output_prefix, builtin_tokenizer)
    other = TokenizerConfig(type="huggingface", path=tokenizer_json, eod_token="</s>")
    with pytest.raises(ValueError, match="prepared with another tokenizer"):
        prepare_shard(plan, 0, output_prefix=output_prefix, tokenizer=build_tokenizer(other),
                      tokenizer_config=other)


def test_the_blend_weights_shards_by_tokens_and_trains(corpus, tmp_path, builtin_tokenizer):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    # More shards than the small corpus fills evenly: some hold no document and are left out.
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 12)
    _prepare_all_shards(plan, output_prefix, builtin_tokenizer)
    status = preparation_status(plan, output_prefix)
    assert status.count("finished") == 12
    summary = write_blend(output_prefix, str(tmp_path / "configs" / "data" / "shards.yaml"))
    loaded = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(summary.path))
    )
    tokens = {
        shard_prefix(output_prefix, index, 12): check_indexed_dataset(
            shard_prefix(output_prefix, index, 12)
        ).tokens
        for index in range(12)
    }
    non_empty = {prefix: count for prefix, count in tokens.items() if count}
    assert len(non_empty) < 12 and summary.shards == len(non_empty)
    assert [prefix for _, prefix in loaded.blend] == list(non_empty)
    total = sum(tokens.values())
    assert numpy.allclose([weight for weight, _ in loaded.blend], [c / total for c in non_empty.values()])
    assert loaded.tokenizer == TokenizerConfig()
    loaded.cache_dir, loaded.split = str(tmp_path / "index_cache"), "100,0,0"
    datasets = build_datasets(loaded, builtin_tokenizer, seq_length=16, seed=1, train_samples=64,
                              valid_samples=0)
    assert len(datasets.train) >= 64


def test_merge_and_blend_name_the_shards_still_missing(corpus, tmp_path, builtin_tokenizer):
    output_prefix = str(tmp_path / "sharded" / "corpus")
    plan = load_or_make_shard_plan(output_prefix, [str(corpus)], ["text"], 4)
    prepare_shard(plan, 2, output_prefix=output_prefix, tokenizer=builtin_tokenizer,
                  tokenizer_config=TokenizerConfig())
    status = preparation_status(plan, output_prefix)
    assert [shard.state for shard in status.shards] == ["waiting", "waiting", "finished", "waiting"]
    assert "all shards: 1/4 finished, 0 running" in status.total_line()
    assert "time left unknown: no shard is running" in status.total_line()
    for action in (lambda: merge_shards(output_prefix), lambda: write_blend(output_prefix, str(tmp_path / "b.yaml"))):
        with pytest.raises(ValueError, match=r"3 of 4 shards .* not finished .*: 0, 1, 3;"):
            action()
