"""Input expansion (globs, @lists, directories, a key per input) and compressed streams."""

import gzip
import json
import os

import pytest
import zstandard

from nemotron_train.data import compressed_streams
from nemotron_train.data.compressed_streams import CorruptInputError
from nemotron_train.data.inputs import expand_inputs
from nemotron_train.data.sources import InputReadError, InputSource, ReadCounts, iter_documents


def _json_lines(documents, key="text"):
    return "".join(json.dumps({key: document}) + "\n" for document in documents).encode()


def _documents(sources, strict=True):
    return list(iter_documents(sources, strict=strict, counts=ReadCounts()))


def _zstd_frames(*parts: bytes) -> list[bytes]:
    # With checksums, as the zstd command line writes by default.
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    return [compressor.compress(part) for part in parts]


def test_gzip_and_zstd_streams_of_several_frames_read_as_the_plain_file(tmp_path, random_documents):
    documents = random_documents(seed=10, count=120)
    parts = [_json_lines(documents[:50]), _json_lines(documents[50:])]
    # Several members/frames, as `cat a.gz b.gz` or pigz and zstd -T write them.
    (tmp_path / "both.jsonl.gz").write_bytes(b"".join(gzip.compress(part) for part in parts))
    (tmp_path / "both.jsonl.zst").write_bytes(b"".join(_zstd_frames(*parts)))
    (tmp_path / "plain.jsonl").write_bytes(b"".join(parts))
    for name in ("both.jsonl.gz", "both.jsonl.zst", "plain.jsonl"):
        [source] = expand_inputs([str(tmp_path / name)])
        assert source.kind == "jsonl"
        assert _documents([source]) == documents


def test_lines_across_reads_and_frame_boundaries_arrive_intact(tmp_path, monkeypatch):
    # Small reads: lines straddle the reads of compressed data and the frame boundary.
    monkeypatch.setattr(compressed_streams, "COMPRESSED_READ_SIZE", 97)
    lines = [json.dumps({"text": f"line {index} " + "x" * (index % 997)}) for index in range(3000)]
    data = ("\n".join(lines) + "\n").encode()
    middle = len(data) // 2 + 17
    frames = _zstd_frames(data[:middle], data[middle:])
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(b"".join(frames))
    counts = ReadCounts()
    texts = list(iter_documents(expand_inputs([str(path)]), strict=True, counts=counts))
    assert texts == [json.loads(line)["text"] for line in lines]
    assert counts.input_bytes == path.stat().st_size


def test_a_corrupt_zstd_frame_is_named_with_its_file_and_byte_offset(tmp_path, random_documents):
    documents = random_documents(seed=11, count=40)
    first, second = _zstd_frames(_json_lines(documents[:20]), _json_lines(documents[20:]))
    damaged = bytearray(first + second)
    damaged[len(first) + len(second) // 2] ^= 0xFF  # inside the second frame's data
    path = tmp_path / "damaged.jsonl.zst"
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptInputError) as error:
        _documents(expand_inputs([str(path)]))
    message = str(error.value)
    assert message.startswith(f"{path}: corrupt zstd frame starting at byte {len(first)} ")
    assert f"decoding bytes {len(first)}-{len(damaged)}" in message


def test_truncated_gzip_and_zstd_files_are_named_with_the_cut_frame(tmp_path, random_documents):
    data = _json_lines(random_documents(seed=12, count=30))
    for name, frames in (
        ("cut.jsonl.gz", [gzip.compress(data), gzip.compress(data)]),
        ("cut.jsonl.zst", _zstd_frames(data, data)),
    ):
        path = tmp_path / name
        whole = b"".join(frames)
        path.write_bytes(whole[:-7])
        with pytest.raises(CorruptInputError, match="truncated") as error:
            _documents(expand_inputs([str(path)]))
        assert f"{path}: truncated" in str(error.value)
        assert f"the frame starting at byte {len(frames[0])} is cut off" in str(error.value)
        assert f"(byte {len(whole) - 7})" in str(error.value)


def test_a_file_that_is_not_compressed_as_its_name_says_fails_at_byte_zero(tmp_path):
    path = tmp_path / "lies.jsonl.gz"
    path.write_bytes(_json_lines(["plain text after all"]))
    with pytest.raises(CorruptInputError, match=f"{path}: corrupt gzip frame starting at byte 0"):
        _documents(expand_inputs([str(path)]))


def test_an_unreadable_file_is_named_with_the_offset_where_reading_failed(tmp_path):
    # /proc/self/mem cannot be read at offset 0 (EIO): a real read error, even as root.
    link = tmp_path / "unreadable.jsonl"
    link.symlink_to("/proc/self/mem")
    with pytest.raises(InputReadError) as error:
        _documents(expand_inputs([str(tmp_path)]))
    assert str(error.value) == f"{link}: reading failed after byte 0: Input/output error"


def test_globs_lists_and_directories_expand_in_order_with_their_own_keys(tmp_path):
    web, code = tmp_path / "web", tmp_path / "code"
    web.mkdir()
    code.mkdir()
    for index in (2, 10, 1):
        (web / f"part-{index:02d}.jsonl.zst").write_bytes(
            _zstd_frames(_json_lines([f"web {index}"]))[0]
        )
    (web / "notes.md").write_text("not matched by the glob")
    (code / "b.jsonl.gz").write_bytes(gzip.compress(_json_lines(["code b"], key="content")))
    (code / "a.jsonl").write_bytes(_json_lines(["code a"], key="content"))
    (code / ".hidden.jsonl").write_bytes(_json_lines(["never read"], key="content"))
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text("# the code corpus\n\n../code\n")
    sources = expand_inputs(
        [str(web / "part-*.jsonl.zst"), f"@{listing}"], json_keys=["text", "content"]
    )
    assert [(os.path.basename(s.path), s.kind, s.codec, s.json_key) for s in sources] == [
        ("part-01.jsonl.zst", "jsonl", "zstd", "text"),
        ("part-02.jsonl.zst", "jsonl", "zstd", "text"),
        ("part-10.jsonl.zst", "jsonl", "zstd", "text"),
        ("a.jsonl", "jsonl", None, "content"),
        ("b.jsonl.gz", "jsonl", "gzip", "content"),
    ]
    assert _documents(sources) == ["web 1", "web 2", "web 10", "code a", "code b"]


def test_compressed_text_files_are_one_document_each(tmp_path):
    (tmp_path / "readme.txt.gz").write_bytes(gzip.compress("a whole document\n".encode()))
    [source] = expand_inputs([str(tmp_path)])
    assert (source.kind, source.codec) == ("text", "gzip")
    assert _documents([source]) == ["a whole document\n"]


@pytest.mark.parametrize(
    "make, inputs, message",
    [
        (lambda root: None, ["shards/*.jsonl"], "the pattern matches no file"),
        (lambda root: (root / "gone.jsonl").symlink_to(root / "missing"), ["."], "a link to a missing file"),
        (lambda root: (root / "list.txt").write_text("absent.jsonl\n"), ["@list.txt"], "(listed in @list.txt)"),
        (lambda root: None, ["@no_list.txt"], "input list 'no_list.txt': cannot read it"),
        (lambda root: (root / "a.parquet.zst").write_bytes(b""), ["a.parquet.zst"], "compressed Parquet"),
    ],
)
def test_bad_inputs_are_named(tmp_path, monkeypatch, make, inputs, message):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        expand_inputs(inputs)


def test_the_number_of_keys_must_be_one_or_one_per_input(tmp_path):
    with pytest.raises(ValueError, match="2 JSON keys for 3 inputs"):
        expand_inputs(["a", "b", "c"], json_keys=["text", "content"])


def test_byte_ranges_of_a_file_read_each_line_once_whatever_the_cut_points(tmp_path):
    lines = [b'{"text": "short"}\n', b"\n", b'{"text": "' + b"y" * 50 + b'"}\n', b'{"text": "end"}']
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b"".join(lines))  # no newline at the end
    size = path.stat().st_size
    whole = _documents([InputSource("jsonl", str(path))], strict=True)
    for cut in range(size + 1):  # every cut point, line starts and mid-line included
        pieces = [InputSource("jsonl", str(path), start=0, end=cut), InputSource("jsonl", str(path), start=cut, end=size)]
        assert _documents(pieces) == whole, f"cut at byte {cut}"
