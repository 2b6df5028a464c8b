"""Tokenizers behind one small interface: the builtin BPE, tokenizer.json, tiktoken, sentencepiece.

Megatron-Core ships tokenizer wrappers, and we use its tiktoken and sentencepiece ones. Its
Hugging Face wrapper goes through `transformers.AutoTokenizer`, which we do not depend on,
so tokenizer.json files (the builtin tokenizer's included) are read with `tokenizers`.
"""

import abc
import json
import logging
import os
import time
from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from nemotron_train.data.cache import (
    exclusive_file_lock,
    resolve_cache_dir,
    sha256_of_file,
    short_hash,
    write_bytes_atomically,
)
from nemotron_train.data.config import BUILTIN_EOD_TOKEN, TokenizerConfig
from nemotron_train.data.optional_packages import require_package
from nemotron_train.data.stdlib_corpus import stdlib_corpus_fingerprint, stdlib_source_files

logger = logging.getLogger(__name__)

# Bump when the builtin tokenizer's training recipe changes, so that cached copies retrain.
BUILTIN_TOKENIZER_RECIPE_VERSION = 1


class Tokenizer(abc.ABC):
    """What the data pipeline and the trainer use from a tokenizer.

    Attributes:
        vocab_size: the number of token ids, i.e. the largest id plus one.
        eod: the id of the end-of-document token appended to every document.
        unique_identifiers: what identifies this tokenizer; Megatron-Core's GPTDataset
            hashes it into the names of its cached sample indices.
    """

    def __init__(self, *, vocab_size: int, eod: int, identity: str) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.unique_identifiers = {"class": type(self).__name__, "identity": identity, "eod": eod}

    @property
    def fingerprint(self) -> str:
        """A short hash naming this tokenizer in cache paths."""
        return short_hash(sorted(self.unique_identifiers.items()))

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, with no special token added.

        The tokenizer.json and tiktoken tokenizers also read special-token strings inside
        `text` as plain text, so that only the pipeline ever writes an end-of-document id.
        """

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, with special tokens written out."""


class TokenizerJsonTokenizer(Tokenizer):
    """A tokenizer.json read with the `tokenizers` library: the builtin and Hugging Face ones."""

    def __init__(self, path: str, eod_token: str) -> None:
        self._tokenizer = tokenizers.Tokenizer.from_file(path)
        # Web and code corpora quote special-token strings ("</s>", "<|endoftext|>"); they
        # must stay text, or documents would be cut by stray end-of-document ids.
        self._tokenizer.encode_special_tokens = True
        eod = self._tokenizer.token_to_id(eod_token)
        if eod is None:
            specials = sorted(
                token.content
                for token in self._tokenizer.get_added_tokens_decoder().values()
                if token.special
            )
            raise ValueError(
                f"TokenizerConfig.eod_token={eod_token!r} is not a token of {path}; "
                f"its special tokens are {specials}"
            )
        vocab_size = max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        super().__init__(vocab_size=vocab_size, eod=eod, identity=sha256_of_file(path))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


class TiktokenTokenizer(Tokenizer):
    """A Megatron-format tiktoken vocabulary (a JSON list of {rank, token_bytes, token_str}),
    loaded by Megatron-Core's wrapper; ids below `tiktoken_num_special_tokens` are specials."""

    def __init__(self, config: TokenizerConfig) -> None:
        require_package("tiktoken", f"TokenizerConfig.type={config.type!r}")
        from megatron.core.tokenizers.text.libraries.tiktoken_tokenizer import TikTokenTokenizer

        path = os.path.expanduser(config.path)
        with open(path) as vocabulary_file:
            number_of_ranks = len(json.load(vocabulary_file))
        self._megatron_tokenizer = TikTokenTokenizer(
            path,
            pattern=config.tiktoken_pattern,
            num_special_tokens=config.tiktoken_num_special_tokens,
            vocab_size=config.tiktoken_num_special_tokens + number_of_ranks,
        )
        special_tokens = self._megatron_tokenizer.special_tokens
        if config.eod_token not in special_tokens:
            raise ValueError(
                f"TokenizerConfig.eod_token={config.eod_token!r} is not a special token of "
                f"{path}; its named ones are {special_tokens[:7]} (then <SPECIAL_n> fillers)"
            )
        super().__init__(
            vocab_size=self._megatron_tokenizer.vocab_size,
            eod=special_tokens.index(config.eod_token),
            identity=short_hash(
                sha256_of_file(path), config.tiktoken_pattern, config.tiktoken_num_special_tokens
            ),
        )

    def encode(self, text: str) -> list[int]:
        # Not Megatron-Core's text_to_ids: it allows special tokens inside the text.
        return self._megatron_tokenizer.tokenizer.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._megatron_tokenizer.ids_to_text(list(ids))


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece .model file, loaded by Megatron-Core's wrapper."""

    def __init__(self, config: TokenizerConfig) -> None:
        require_package("sentencepiece", f"TokenizerConfig.type={config.type!r}")
        from megatron.core.tokenizers.text.libraries.sentencepiece_tokenizer import (
            SentencePieceTokenizer as MegatronSentencePieceTokenizer,
        )

        path = os.path.expanduser(config.path)
        self._megatron_tokenizer = MegatronSentencePieceTokenizer(path)
        processor = self._megatron_tokenizer.tokenizer
        eod = processor.piece_to_id(config.eod_token)
        # piece_to_id answers the <unk> id for an unknown piece instead of failing.
        if processor.id_to_piece(eod) != config.eod_token:
            raise ValueError(
                f"TokenizerConfig.eod_token={config.eod_token!r} is not a piece of {path}"
            )
        super().__init__(
            vocab_size=processor.get_piece_size(), eod=eod, identity=sha256_of_file(path)
        )

    def encode(self, text: str) -> list[int]:
        return self._megatron_tokenizer.text_to_ids(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._megatron_tokenizer.ids_to_text(list(ids))


def build_tokenizer(config: TokenizerConfig, cache_dir: str | None = None) -> Tokenizer:
    """The tokenizer `config` describes; the builtin one is trained into `cache_dir` on first use.

    `cache_dir` is DataConfig.cache_dir (None: $NEMOTRON_TRAIN_CACHE, else
    ~/.cache/nemotron_train); only the builtin tokenizer uses it.
    """
    if config.type == "builtin":
        path = ensure_builtin_tokenizer(resolve_cache_dir(cache_dir), config.vocab_size)
        return TokenizerJsonTokenizer(path, config.eod_token)
    path = os.path.expanduser(config.path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TokenizerConfig.path={config.path!r}: no such file")
    if config.type == "huggingface":
        return TokenizerJsonTokenizer(path, config.eod_token)
    if config.type == "tiktoken":
        return TiktokenTokenizer(config)
    return SentencePieceTokenizer(config)


def train_builtin_tokenizer(vocab_size: int) -> tokenizers.Tokenizer:
    """A byte-level BPE (GPT-2 pre-tokenization) trained on the whole stdlib corpus.

    <|endoftext|> is its only special token (id 0). Deterministic: the same corpus and
    vocabulary size give the same merges. About 3 s for 11 MB on two cores.
    """
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BUILTIN_EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = stdlib_source_files()
    texts = (path.read_text(encoding="utf-8", errors="replace") for path in files)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(files))
    return tokenizer


def builtin_tokenizer_path(cache_dir: str, vocab_size: int) -> str:
    """Where the builtin tokenizer for this interpreter's stdlib and `vocab_size` is cached."""
    key = short_hash(
        BUILTIN_TOKENIZER_RECIPE_VERSION,
        vocab_size,
        stdlib_corpus_fingerprint(),
        tokenizers.__version__,
    )
    return os.path.join(cache_dir, "tokenizers", f"builtin-bpe{vocab_size}-{key}", "tokenizer.json")


def ensure_builtin_tokenizer(cache_dir: str, vocab_size: int) -> str:
    """The path of the cached builtin tokenizer, trained first if no process has done so."""
    path = builtin_tokenizer_path(cache_dir, vocab_size)
    if os.path.exists(path):
        return path
    with exclusive_file_lock(path + ".lock"):
        # Another process may have trained it while this one waited for the lock.
        if not os.path.exists(path):
            start = time.perf_counter()
            tokenizer = train_builtin_tokenizer(vocab_size)
            write_bytes_atomically(path, tokenizer.to_str().encode())
            logger.info(
                "trained the builtin tokenizer (vocabulary %d) in %.1f s: %s",
                vocab_size,
                time.perf_counter() - start,
                path,
            )
    return path
