import base64
import json
import logging
import os
import re

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_prep.__main__ import build_parser, main
from nemotron_train.data import preparation
from nemotron_train.data.config import TokenizerConfig
from nemotron_train.data.inputs import expand_inputs
from nemotron_train.data.stdlib_corpus import stdlib_source_files
from nemotron_train.data.tokenizer import build_tokenizer


def _run(capsys, tokenizer_json, inputs, output_prefix, *extra):
    """Run the command in this process, one worker unless `extra` says otherwise."""
    arguments = ["--input", *map(str, inputs), "--output-prefix", str(output_prefix)]
    arguments += ["--tokenizer-type", "huggingface", "--tokenizer-path", tokenizer_json]
    arguments += ["--eod-token", "</s>", "--workers", "1"]
    exit_code = main(arguments + list(extra))
    return exit_code, capsys.readouterr().err


def _expected_tokens(tokenizer_json, documents):
    tokenizer = build_tokenizer(
        TokenizerConfig(type="huggingface", path=tokenizer_json, eod_token="</s>")
    )
    return [tokenizer.encode(document) + [tokenizer.eod] for document in documents]


def _read_back(output_prefix):
    dataset = IndexedDataset(str(output_prefix))
    return [dataset[index].tolist() for index in range(len(dataset))]


def _write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# Workers are forked from a process whose tokenizers thread pool exists; they only tokenize.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_jsonl_round_trip_reads_back_through_megatron(tmp_path, capsys, tokenizer_json):
    documents = [
        "the quick brown fox",
        "jumps over\nthe lazy dog",
        "ünïcödé text 🙂",
        "a",
        "x " * 500,
    ]
    first = _write_jsonl(
        tmp_path / "first.jsonl",
        [json.dumps({"content": d, "id": i}) for i, d in enumerate(documents[:2])],
    )
    second = _write_jsonl(
        tmp_path / "second.jsonl", [json.dumps({"content": d}) for d in documents[2:]]
    )
    output_prefix = tmp_path / "out" / "corpus"
    exit_code, stderr = _run(
        capsys,
        tokenizer_json,
        [first, second],
        output_prefix,
        "--json-key",
        "content",
        "--workers",
        "2",
    )
    assert exit_code == 0
    assert _read_back(output_prefix) == _expected_tokens(tokenizer_json, documents)
    assert "wrote 5 documents" in stderr


def test_malformed_json_lines_are_reported_with_file_and_line_skipped_and_counted(
    tmp_path, capsys, caplog, tokenizer_json
):
    lines = [
        '{"text": "good one"}',
        "{not json",
        '{"text": "good two"}',
        '{"other": "x"}',
        '{"text": 5}',
        "[1, 2]",
    ]
    bad = _write_jsonl(tmp_path / "bad.jsonl", lines)
    output_prefix = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        exit_code, stderr = _run(capsys, tokenizer_json, [bad], output_prefix)
    assert exit_code == 0
    assert _read_back(output_prefix) == _expected_tokens(tokenizer_json, ["good one", "good two"])
    assert "skipped 4 malformed and 0 empty documents" in stderr
    for line_number in (2, 4, 5, 6):
        assert f"bad.jsonl:{line_number}:" in caplog.text


def test_strict_mode_stops_at_the_first_malformed_line_and_writes_nothing(
    tmp_path, capsys, tokenizer_json
):
    bad = _write_jsonl(tmp_path / "bad.jsonl", ['{"text": "good"}', '{"text": "unterminated'])
    exit_code, stderr = _run(capsys, tokenizer_json, [bad], tmp_path / "out", "--strict")
    assert exit_code == 1
    assert "bad.jsonl:2:" in stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_empty_documents_are_skipped_and_counted(tmp_path, capsys, tokenizer_json):
    lines = ['{"text": ""}', '{"text": "  \\n\\t"}', "", '{"text": null}', '{"text": "kept"}']
    inputs = _write_jsonl(tmp_path / "empties.jsonl", lines)
    exit_code, stderr = _run(capsys, tokenizer_json, [inputs], tmp_path / "out")
    assert exit_code == 0
    assert _read_back(tmp_path / "out") == _expected_tokens(tokenizer_json, ["kept"])
    assert "wrote 1 documents" in stderr and "skipped 0 malformed and 4 empty documents" in stderr


def test_text_files_and_directories_give_one_document_per_file_in_sorted_order(
    tmp_path, capsys, tokenizer_json
):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.md").write_text("second file")
    (corpus / "a.txt").write_text("first file")
    (corpus / "sub" / "c.txt").write_text("third file")
    (corpus / ".hidden").write_text("never read")
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    exit_code, stderr = _run(capsys, tokenizer_json, [corpus], tmp_path / "out")
    assert exit_code == 0
    assert _read_back(tmp_path / "out") == _expected_tokens(
        tokenizer_json, ["first file", "second file", "third file"]
    )
    assert "skipped 1 malformed" in stderr


def test_parquet_text_column(tmp_path, capsys, tokenizer_json):
    import pyarrow
    import pyarrow.parquet as parquet

    table = pyarrow.table({"text": ["row one", None, "row three"], "score": [1, 2, 3]})
    parquet.write_table(table, tmp_path / "data.parquet", row_group_size=2)
    exit_code, stderr = _run(capsys, tokenizer_json, [tmp_path / "data.parquet"], tmp_path / "out")
    assert exit_code == 0
    assert _read_back(tmp_path / "out") == _expected_tokens(
        tokenizer_json, ["row one", "row three"]
    )
    assert "1 empty" in stderr


def test_hugging_face_datasets_directories_with_and_without_splits(
    tmp_path, capsys, tokenizer_json
):
    datasets = pytest.importorskip("datasets")
    pyarrow = pytest.importorskip("pyarrow")

    def dataset(texts, fingerprint):
        # An explicit fingerprint skips datasets' own hashing, which some pyarrow versions break.
        return datasets.Dataset(pyarrow.table({"text": texts}), fingerprint=fingerprint)

    dataset(["saved one", None], "plain").save_to_disk(str(tmp_path / "plain"))
    splits = {
        "validation": dataset(["valid one"], "valid"),
        "train": dataset(["train one"], "train"),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "splits"))
    exit_code, stderr = _run(
        capsys, tokenizer_json, [tmp_path / "plain", tmp_path / "splits"], tmp_path / "out"
    )
    assert exit_code == 0
    expected = _expected_tokens(tokenizer_json, ["saved one", "train one", "valid one"])
    assert _read_back(tmp_path / "out") == expected
    assert "1 empty" in stderr


def test_stdlib_input_is_the_embedded_corpus_as_text_files():
    sources = expand_inputs(["stdlib"], stdlib_max_files=3)
    assert [(source.kind, source.path) for source in sources] == [
        ("text", str(path)) for path in stdlib_source_files(3)
    ]


def test_progress_reports_documents_and_tokens_per_second(
    tmp_path, capsys, caplog, tokenizer_json, monkeypatch
):
    monkeypatch.setattr(preparation, "PROGRESS_INTERVAL_SECONDS", 0.0)
    inputs = _write_jsonl(tmp_path / "in.jsonl", ['{"text": "some words"}'] * 3)
    with caplog.at_level(logging.INFO):
        exit_code, _ = _run(capsys, tokenizer_json, [inputs], tmp_path / "out")
    assert exit_code == 0
    assert "documents/s" in caplog.text and "tokens/s" in caplog.text


@pytest.mark.parametrize(
    "contents, message",
    [(None, "no such file or directory"), ('{"text": ""}\n', "no documents to write")],
)
def test_unusable_input_fails_with_a_message(tmp_path, capsys, tokenizer_json, contents, message):
    path = tmp_path / "input.jsonl"
    if contents is not None:
        path.write_text(contents)
    exit_code, stderr = _run(capsys, tokenizer_json, [path], tmp_path / "out")
    assert exit_code == 1
    assert message in stderr
    assert not os.path.exists(tmp_path / "out.idx")


def test_help_documents_every_option():
    parser = build_parser()
    help_text = parser.format_help()
    options = [action for action in parser._actions if action.option_strings != ["-h", "--help"]]
    assert len(options) == 15
    for action in options:
        assert action.help, f"{action.option_strings} has no help text"
        assert all(option in help_text for option in action.option_strings)
        if action.default not in (None, False):
            assert f"(default: {action.default}" in " ".join(help_text.split())
    assert "example:" in help_text


def test_tiktoken_options_reach_the_tokenizer(tmp_path, capsys):
    pytest.importorskip("tiktoken")
    ranks = [bytes([byte]) for byte in range(256)]
    vocabulary = [
        {"rank": rank, "token_bytes": base64.b64encode(token).decode(), "token_str": ""}
        for rank, token in enumerate(ranks)
    ]
    (tmp_path / "vocabulary.json").write_text(json.dumps(vocabulary))
    inputs = _write_jsonl(tmp_path / "in.jsonl", ['{"text": "abc"}'])
    arguments = ["--input", str(inputs), "--output-prefix", str(tmp_path / "out")]
    vocabulary_path = str(tmp_path / "vocabulary.json")
    arguments += ["--tokenizer-type", "tiktoken", "--tokenizer-path", vocabulary_path]
    arguments += ["--eod-token", "</s>", "--tiktoken-num-special-tokens", "10", "--workers", "1"]
    assert main(arguments + ["--tiktoken-pattern", "v1"]) == 0, capsys.readouterr().err
    # Byte b has rank b, shifted past the 10 reserved ids; </s> is Megatron-Core's special 2.
    assert _read_back(tmp_path / "out") == [[10 + ord("a"), 10 + ord("b"), 10 + ord("c"), 2]]


def test_sharded_run_merge_blend_and_status_through_the_command_line(
    tmp_path, capsys, caplog, tokenizer_json
):
    documents = [f"document number {index} " * (index % 7 + 1) for index in range(60)]
    first = _write_jsonl(tmp_path / "first.jsonl", [json.dumps({"text": d}) for d in documents[:40]])
    second = _write_jsonl(tmp_path / "second.jsonl", [json.dumps({"body": d}) for d in documents[40:]])
    inputs, keys = [first, second], ["--json-key", "text", "body"]
    exit_code, _ = _run(capsys, tokenizer_json, inputs, tmp_path / "single", *keys)
    assert exit_code == 0
    prefix = tmp_path / "sharded" / "corpus"
    exit_code, stderr = _run(capsys, tokenizer_json, inputs, prefix, *keys, "--num-shards", "3",
                             "--shard-index", "1")
    assert exit_code == 0 and "all shards: 1/3 finished" in stderr
    with caplog.at_level(logging.INFO):
        exit_code, stderr = _run(capsys, tokenizer_json, inputs, prefix, *keys, "--num-shards", "3")
    assert exit_code == 0
    assert "shard 1/3: finished earlier" in caplog.text and "every shard is finished" in stderr
    assert main(["status", "--output-prefix", str(prefix)]) == 0
    status = capsys.readouterr().out
    assert status.count(": finished ") == 3 and "all shards: 3/3 finished" in status
    assert main(["merge", "--output-prefix", str(prefix)]) == 0
    assert "merged 3 shards: 60 documents" in capsys.readouterr().err
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"sharded/corpus{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()
    blend = tmp_path / "configs" / "data" / "corpus.yaml"
    assert main(["blend", "--output-prefix", str(prefix), "--output", str(blend)]) == 0
    assert "corpus: prefixes" in blend.read_text() and "type: huggingface" in blend.read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard-index", "0"], "--shard-index needs --num-shards"),
        (["--num-shards", "2", "--shard-index", "2"], "--shard-index=2 is invalid"),
        (["--num-shards", "0"], "--num-shards=0 is invalid"),
        (["--json-key", "a", "b", "c"], "--json-key has 3 keys for 1 inputs"),
    ],
)
def test_bad_shard_options_are_refused_with_usage(tmp_path, capsys, tokenizer_json, extra, message):
    inputs = _write_jsonl(tmp_path / "in.jsonl", ['{"text": "x"}'])
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, tokenizer_json, [inputs], tmp_path / "out", *extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_merge_of_a_preparation_that_never_started_says_so(tmp_path, capsys):
    assert main(["merge", "--output-prefix", str(tmp_path / "none")]) == 1
    assert f"{tmp_path / 'none'}.plan.json does not exist" in capsys.readouterr().err


def test_a_corrupt_compressed_input_fails_the_run_naming_file_and_offset(tmp_path, capsys, tokenizer_json):
    zstandard = pytest.importorskip("zstandard")
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b'{"text": "good words"}\n' * 50)
    damaged = bytearray(frame + frame)
    damaged[-10] ^= 0xFF
    path = tmp_path / "in.jsonl.zst"
    path.write_bytes(bytes(damaged))
    exit_code, stderr = _run(capsys, tokenizer_json, [path], tmp_path / "out")
    assert exit_code == 1
    assert f"{path}: corrupt zstd frame starting at byte {len(frame)}" in stderr
    assert not os.path.exists(tmp_path / "out.idx") and not os.path.exists(tmp_path / "out.bin")


def test_progress_of_a_shard_reports_the_share_read_and_the_time_left(
    tmp_path, capsys, caplog, tokenizer_json, monkeypatch
):
    monkeypatch.setattr(preparation, "PROGRESS_INTERVAL_SECONDS", 0.0)
    inputs = _write_jsonl(tmp_path / "in.jsonl", ['{"text": "some words"}'] * 200)
    with caplog.at_level(logging.INFO):
        exit_code, _ = _run(capsys, tokenizer_json, [inputs], tmp_path / "out", "--num-shards", "2",
                            "--shard-index", "0")
    assert exit_code == 0
    assert re.search(r"shard 0/2: [\d,]+ documents, [\d,]+ tokens \| .* tokens/s \| [\d.]+% of "
                     r"[\d.]+ kB read, \d+:\d\d:\d\d left", caplog.text)
