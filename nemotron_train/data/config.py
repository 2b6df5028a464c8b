"""Configuration of the data pipeline: which tokenizer, which corpus, where caches go."""

from dataclasses import dataclass, field
from typing import Any

from nemotron_train.errors import ConfigError

TOKENIZER_TYPES = ("builtin", "huggingface", "tiktoken", "sentencepiece")
CORPORA = ("stdlib", "prefixes")
BUILTIN_EOD_TOKEN = "<|endoftext|>"
TIKTOKEN_PATTERNS = ("v1", "v2")
# Megatron-Core's tiktoken wrapper reserves its own seven named specials (<unk>, <s>, </s>, ...).
TIKTOKEN_MIN_SPECIAL_TOKENS = 7
# 256 byte tokens plus the end-of-document special: the smallest byte-level BPE vocabulary.
BUILTIN_MIN_VOCAB_SIZE = 257


# Keys as the run config names them (`data.split`, `data.tokenizer.type`).
_SECTION = {"DataConfig": "data", "TokenizerConfig": "data.tokenizer"}


def _invalid(owner: str, name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{_SECTION[owner]}.{name}", value, f"allowed: {allowed}")


@dataclass(kw_only=True)
class TokenizerConfig:
    """Which tokenizer turns text into token ids, and which token ends a document."""

    type: str = "builtin"
    """One of "builtin" (a byte-level BPE trained locally on the stdlib corpus and cached in
    the data cache directory), "huggingface" (a local tokenizer.json; the Nemotron 3
    tokenizer is one), "tiktoken" (a Megatron-format tiktoken vocabulary .json) or
    "sentencepiece" (a local .model file)."""

    path: str | None = None
    """The tokenizer file; required for every type except "builtin", which must leave it unset."""

    vocab_size: int = 4096
    """Vocabulary size the builtin tokenizer is trained to; the other types read theirs from
    their file."""

    eod_token: str = BUILTIN_EOD_TOKEN
    """The token appended to every document. It must exist in the tokenizer; the builtin one
    has exactly this token as its only special."""

    tiktoken_pattern: str = "v2"
    """type="tiktoken": Megatron-Core's pre-tokenization regex, "v1" or "v2"."""

    tiktoken_num_special_tokens: int = 1000
    """type="tiktoken": ids reserved for special tokens below the BPE ranks (Megatron-LM's
    default is 1000)."""

    def __post_init__(self) -> None:
        owner = "TokenizerConfig"
        if self.type not in TOKENIZER_TYPES:
            raise _invalid(owner, "type", self.type, ", ".join(TOKENIZER_TYPES))
        if self.type == "builtin":
            if self.path is not None:
                raise _invalid(
                    owner, "path", self.path, "None for type='builtin' (it is trained locally)"
                )
            if self.vocab_size < BUILTIN_MIN_VOCAB_SIZE:
                raise _invalid(
                    owner, "vocab_size", self.vocab_size, f"an integer >= {BUILTIN_MIN_VOCAB_SIZE}"
                )
            if self.eod_token != BUILTIN_EOD_TOKEN:
                raise _invalid(
                    owner, "eod_token", self.eod_token, f"{BUILTIN_EOD_TOKEN!r} for type='builtin'"
                )
        elif not self.path:
            raise _invalid(owner, "path", self.path, f"a tokenizer file for type={self.type!r}")
        if not self.eod_token:
            raise _invalid(owner, "eod_token", self.eod_token, "a non-empty token string")
        if self.tiktoken_pattern not in TIKTOKEN_PATTERNS:
            raise _invalid(
                owner, "tiktoken_pattern", self.tiktoken_pattern, ", ".join(TIKTOKEN_PATTERNS)
            )
        if self.tiktoken_num_special_tokens < TIKTOKEN_MIN_SPECIAL_TOKENS:
            raise _invalid(
                owner,
                "tiktoken_num_special_tokens",
                self.tiktoken_num_special_tokens,
                f"an integer >= {TIKTOKEN_MIN_SPECIAL_TOKENS}",
            )


def parse_split(split: str) -> list[float]:
    """The train/valid/test proportions of a Megatron split string ("98,2,0"), unnormalised.

    Missing trailing parts are 0, as in Megatron-Core.
    """
    parts = [part.strip() for part in split.split(",")]
    allowed = (
        "1 to 3 comma-separated non-negative numbers with a positive train share, e.g. '98,2,0'"
    )
    if not 1 <= len(parts) <= 3:
        raise _invalid("DataConfig", "split", split, allowed)
    try:
        proportions = [float(part) for part in parts]
    except ValueError:
        raise _invalid("DataConfig", "split", split, allowed) from None
    if any(proportion < 0 for proportion in proportions) or proportions[0] <= 0:
        raise _invalid("DataConfig", "split", split, allowed)
    return proportions + [0.0] * (3 - len(proportions))


@dataclass(kw_only=True)
class DataPhaseConfig:
    """One phase of a data curriculum: a blend, read until a fraction of the run's tokens."""

    blend: list[list[Any]] = field(default_factory=list)
    """[[weight, path_prefix], ...], as DataConfig.blend."""

    until_fraction: float = 1.0
    """Fraction of the run's tokens (every step has the same, so of its steps) after which
    this phase ends: it covers the steps up to ceil(until_fraction * train.max_steps). The
    fractions increase from phase to phase and the last one is 1.0."""


@dataclass(kw_only=True)
class DataConfig:
    """The pretraining corpus, its tokenizer, its split and where prepared files are cached."""

    corpus: str = "stdlib"
    """"stdlib": the embedded corpus, the running interpreter's standard-library sources,
    tokenized into `cache_dir` on first use; "prefixes": the indexed datasets in `blend`, or
    in the blends of `phases`."""

    blend: list[list[Any]] = field(default_factory=list)
    """corpus="prefixes" without phases: [[weight, path_prefix], ...], the path prefixes of
    .bin/.idx pairs (written by `python -m data_prep`) with relative sampling weights."""

    phases: list[DataPhaseConfig] = field(default_factory=list)
    """corpus="prefixes": a curriculum instead of one `blend`, the phases in training order.
    Nemotron 3 trains on [{blend: <diverse>, until_fraction: 0.94}, {blend: <high quality>}].
    The switches fall on step boundaries; see nemotron_train/data/curriculum.py."""

    split: str = "98,2,0"
    """Train/valid/test shares of each dataset's documents, Megatron style. The splits are
    contiguous document ranges in file order, not a random partition. With phases, the
    validation and test sets come from the first phase's blend."""

    cache_dir: str | None = None
    """Where the prepared stdlib corpus, the builtin tokenizer and Megatron-Core's sample
    index caches go. None: $NEMOTRON_TRAIN_CACHE if set, else ~/.cache/nemotron_train."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer; the trainer sizes the embedding from its vocabulary."""

    preparation_workers: int = 2
    """Worker processes that tokenize the stdlib corpus the first time it is used."""

    stdlib_max_files: int | None = None
    """corpus="stdlib": use only the first N source files in sorted order (quick tests and
    smoke runs). None: the whole corpus."""

    dataloader_workers: int = 0
    """DataLoader worker processes per rank; 0 reads samples in the training process, which
    is enough because a sample is a slice of a memory-mapped file."""

    def __post_init__(self) -> None:
        owner = "DataConfig"
        if self.corpus not in CORPORA:
            raise _invalid(owner, "corpus", self.corpus, ", ".join(CORPORA))
        if self.corpus == "stdlib":
            if self.blend:
                raise _invalid(owner, "blend", self.blend, "[] for corpus='stdlib'")
            if self.phases:
                raise _invalid(owner, "phases", self.phases, "[] for corpus='stdlib'")
        else:
            if self.blend and self.phases:
                raise _invalid(
                    owner, "blend", self.blend, "[] when data.phases is set (each has its own)"
                )
            if self.phases:
                _check_phases(self.phases)
            elif not self.blend:
                raise _invalid(
                    owner,
                    "blend",
                    self.blend,
                    "a non-empty [[weight, path_prefix], ...] for corpus='prefixes' (or phases)",
                )
            else:
                _check_blend("data.blend", self.blend)
            if self.stdlib_max_files is not None:
                raise _invalid(
                    owner, "stdlib_max_files", self.stdlib_max_files, "None for corpus='prefixes'"
                )
        parse_split(self.split)
        if self.preparation_workers < 1:
            raise _invalid(
                owner, "preparation_workers", self.preparation_workers, "an integer >= 1"
            )
        if self.stdlib_max_files is not None and self.stdlib_max_files < 1:
            raise _invalid(
                owner, "stdlib_max_files", self.stdlib_max_files, "None or an integer >= 1"
            )
        if self.dataloader_workers < 0:
            raise _invalid(owner, "dataloader_workers", self.dataloader_workers, "an integer >= 0")


def _check_blend(key: str, blend: list[list[Any]]) -> None:
    allowed = (
        "a non-empty [[weight, path_prefix], ...] with positive weights and non-empty prefixes"
    )
    if not isinstance(blend, (list, tuple)) or not blend:
        raise ConfigError(key, blend, f"allowed: {allowed}")
    for entry in blend:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(key, blend, f"allowed: {allowed}")
        weight, path_prefix = entry
        weight_is_positive = _is_number(weight) and weight > 0
        if not weight_is_positive or not isinstance(path_prefix, str) or not path_prefix:
            raise ConfigError(key, blend, f"allowed: {allowed}")


def _check_phases(phases: list[DataPhaseConfig]) -> None:
    # Keys in Hydra's override syntax (data.phases.0.until_fraction), so they can be pasted.
    previous_fraction = 0.0
    for index, phase in enumerate(phases):
        if not isinstance(phase, DataPhaseConfig):
            raise ConfigError(
                "data.phases", phases, "allowed: a list of {blend, until_fraction} phases"
            )
        _check_blend(f"data.phases.{index}.blend", phase.blend)
        key = f"data.phases.{index}.until_fraction"
        fraction = phase.until_fraction
        if not _is_number(fraction) or not previous_fraction < fraction <= 1:
            after = f", above data.phases.{index - 1}.until_fraction" if index else ""
            raise ConfigError(
                key, fraction, f"allowed: a number in ({previous_fraction:g}, 1]{after}"
            )
        previous_fraction = fraction
    if previous_fraction != 1:
        raise ConfigError(
            f"data.phases.{len(phases) - 1}.until_fraction",
            previous_fraction,
            "allowed: 1.0 for the last phase (the phases cover the whole run)",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
