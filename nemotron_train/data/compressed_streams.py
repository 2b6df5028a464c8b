"""Input files as byte streams: plain, gzip or zstd, decompressed as they are read.

Corpora of many terabytes come as thousands of compressed JSONL files; they are read as
streams (never decompressed to disk or held whole in memory). A stream may hold several
frames (zstd) or members (gzip) one after the other, as `cat a.zst b.zst` or pigz/zstd -T
write them. Corrupt or truncated data raises CorruptInputError naming the file, the byte
offset of the frame that failed and the window of compressed bytes being decoded.
"""

import io
import zlib
from typing import BinaryIO

from nemotron_train.data.optional_packages import require_package

# Compression suffixes and their codecs; the suffix before them says what the data is.
CODEC_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
# Compressed bytes decoded per step: few Python calls, bounded memory.
COMPRESSED_READ_SIZE = 1 << 20
DECOMPRESSED_BUFFER_SIZE = 1 << 20


class CorruptInputError(ValueError):
    """A compressed input that cannot be decoded; the message names the file and byte offset."""


def codec_of(path: str) -> str | None:
    """The codec implied by `path`'s last suffix ("gzip", "zstd"), or None for plain files."""
    for suffix, codec in CODEC_SUFFIXES.items():
        if path.endswith(suffix):
            return codec
    return None


def strip_codec_suffix(path: str) -> str:
    """`path` without its compression suffix (`a.jsonl.zst` -> `a.jsonl`)."""
    for suffix in CODEC_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def open_input_stream(path: str, codec: str | None) -> BinaryIO:
    """`path` opened for binary reading, decompressed with `codec` (None: as it is).

    Raises OSError when the file cannot be opened; reading a compressed stream raises
    CorruptInputError on corrupt or truncated data.
    """
    if codec == "zstd":
        require_package("zstandard", "zstd-compressed input")
    raw = open(path, "rb")
    if codec is None:
        return raw
    return io.BufferedReader(_DecompressingReader(raw, path, codec), DECOMPRESSED_BUFFER_SIZE)


class _DecompressingReader(io.RawIOBase):
    """The decompressed bytes of a compressed file, frame after frame.

    We decode frame by frame ourselves instead of using gzip.open or zstandard's
    stream_reader so that an error can name the offset of the frame it happened in.
    """

    def __init__(self, raw: BinaryIO, path: str, codec: str) -> None:
        self._raw = raw
        self._path = path
        self._codec = codec
        self._decoder = None
        self._frame_start = 0  # compressed offset where the current frame began
        self._fed = 0  # compressed bytes handed to decoders so far
        self._input = b""  # compressed bytes not yet handed to a decoder
        self._output = memoryview(b"")  # decompressed bytes not yet returned
        self._output_position = 0

    @property
    def compressed_offset(self) -> int:
        """Compressed bytes decoded so far (progress through the file)."""
        return self._fed

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def readinto(self, buffer) -> int:
        while self._output_position == len(self._output):
            if not self._decode_more():
                return 0
        size = min(len(buffer), len(self._output) - self._output_position)
        buffer[:size] = self._output[self._output_position : self._output_position + size]
        self._output_position += size
        return size

    def _decode_more(self) -> bool:
        """Decode the next piece into self._output; False at the clean end of the file."""
        if not self._input:
            self._input = self._raw.read(COMPRESSED_READ_SIZE)
            if not self._input:
                if self._decoder is not None:
                    raise CorruptInputError(
                        f"{self._path}: truncated {self._codec} data: the frame starting at "
                        f"byte {self._frame_start} is cut off at the end of the file "
                        f"(byte {self._fed})"
                    )
                return False
        if self._decoder is None:
            self._decoder = self._new_decoder()
            self._frame_start = self._fed
        window_start, data = self._fed, self._input
        try:
            self._output = memoryview(self._decoder.decompress(data))
        except Exception as error:  # zlib.error or zstandard.ZstdError
            raise CorruptInputError(
                f"{self._path}: corrupt {self._codec} frame starting at byte "
                f"{self._frame_start} (error while decoding bytes {window_start}-"
                f"{window_start + len(data)}): {error}"
            ) from None
        self._output_position = 0
        self._fed += len(data)
        self._input = b""
        if self._decoder.eof:
            # What the frame did not use begins the next one.
            self._input = self._decoder.unused_data
            self._fed -= len(self._input)
            self._decoder = None
        return True

    def _new_decoder(self):
        if self._codec == "gzip":
            return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
