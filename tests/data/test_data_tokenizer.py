import base64
import json

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from nemotron_train.data import optional_packages
from nemotron_train.data.config import TokenizerConfig
from nemotron_train.data.tokenizer import build_tokenizer

SAMPLE_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "  leading and trailing spaces  \n\n\ttabs\t",
    "unicode: é ß 日本語 🙂 — “quotes”",
    "a literal special token <|endoftext|> inside text",
    "",
]


def test_builtin_tokenizer_has_its_vocabulary_size_and_a_dedicated_eod(builtin_tokenizer):
    assert builtin_tokenizer.vocab_size == 4096
    assert builtin_tokenizer.decode([builtin_tokenizer.eod]) == "<|endoftext|>"


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_builtin_tokenizer_round_trips_text(builtin_tokenizer, text):
    token_ids = builtin_tokenizer.encode(text)
    assert builtin_tokenizer.decode(token_ids) == text
    assert all(0 <= token_id < builtin_tokenizer.vocab_size for token_id in token_ids)


def test_special_token_strings_inside_text_never_become_the_eod_id(builtin_tokenizer):
    assert builtin_tokenizer.eod not in builtin_tokenizer.encode("x = '<|endoftext|>'")


def test_builtin_tokenizer_retrained_from_scratch_gives_the_same_ids(builtin_tokenizer, tmp_path):
    rebuilt = build_tokenizer(TokenizerConfig(), str(tmp_path / "another_cache"))
    assert rebuilt.fingerprint == builtin_tokenizer.fingerprint
    for text in SAMPLE_TEXTS:
        assert rebuilt.encode(text) == builtin_tokenizer.encode(text)


def test_builtin_tokenizer_is_cached_and_reused(builtin_tokenizer, session_cache_dir, monkeypatch):
    def fail_if_trained(vocab_size):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr("nemotron_train.data.tokenizer.train_builtin_tokenizer", fail_if_trained)
    assert (
        build_tokenizer(TokenizerConfig(), session_cache_dir).fingerprint
        == builtin_tokenizer.fingerprint
    )


def _write_tokenizer_json(path, special_tokens):
    tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=special_tokens, show_progress=False
    )
    tokenizer.train_from_iterator(
        ["hello world", "the quick brown fox", "hello there"], trainer=trainer
    )
    tokenizer.save(str(path))


def test_huggingface_tokenizer_json_uses_the_configured_eod_token(tmp_path):
    path = tmp_path / "tokenizer.json"
    _write_tokenizer_json(path, ["<unk>", "<s>", "</s>"])
    tokenizer = build_tokenizer(
        TokenizerConfig(type="huggingface", path=str(path), eod_token="</s>")
    )
    assert tokenizer.eod == 2
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"


def test_huggingface_tokenizer_without_the_eod_token_names_it(tmp_path):
    path = tmp_path / "tokenizer.json"
    _write_tokenizer_json(path, ["<unk>"])
    with pytest.raises(ValueError, match=r"eod_token='</s>'.*tokenizer.json"):
        build_tokenizer(TokenizerConfig(type="huggingface", path=str(path), eod_token="</s>"))


def test_missing_tokenizer_file_names_the_path(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_tokenizer(TokenizerConfig(type="huggingface", path=missing))


@pytest.mark.parametrize(
    "tokenizer_type, package", [("tiktoken", "tiktoken"), ("sentencepiece", "sentencepiece")]
)
def test_optional_tokenizer_packages_missing_give_an_install_hint(
    tmp_path, monkeypatch, tokenizer_type, package
):
    model_path = tmp_path / "model"
    model_path.write_text("{}")
    real_find_spec = optional_packages.importlib.util.find_spec
    monkeypatch.setattr(
        optional_packages.importlib.util,
        "find_spec",
        lambda name, *args: None if name == package else real_find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match=f"pip install {package}"):
        build_tokenizer(
            TokenizerConfig(type=tokenizer_type, path=str(model_path), eod_token="</s>")
        )


def test_tiktoken_vocabulary_in_megatron_format(tmp_path):
    import tiktoken  # noqa: F401  (the dev extra installs it)
    ranks = [bytes([byte]) for byte in range(256)] + [b"th", b"he", b"the"]
    vocabulary = [
        {
            "rank": rank,
            "token_bytes": base64.b64encode(token).decode(),
            "token_str": token.decode("latin-1"),
        }
        for rank, token in enumerate(ranks)
    ]
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(vocabulary))
    config = TokenizerConfig(
        type="tiktoken", path=str(path), eod_token="</s>", tiktoken_num_special_tokens=10
    )
    tokenizer = build_tokenizer(config)
    assert tokenizer.vocab_size == 10 + len(ranks)
    assert tokenizer.eod == 2  # Megatron-Core's specials start <unk>, <s>, </s>
    text = "the theme </s> é"
    token_ids = tokenizer.encode(text)
    assert tokenizer.eod not in token_ids
    assert all(10 <= token_id < tokenizer.vocab_size for token_id in token_ids)
    assert tokenizer.decode(token_ids) == text


def test_sentencepiece_model(tmp_path):
    import sentencepiece
    lines = ["hello world", "the quick brown fox jumps over the lazy dog", "hello there"] * 20
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(tmp_path / "spm"),
        vocab_size=30,
        minloglevel=2,
    )
    tokenizer = build_tokenizer(
        TokenizerConfig(type="sentencepiece", path=str(tmp_path / "spm.model"), eod_token="</s>")
    )
    assert tokenizer.decode([tokenizer.eod]) == ""  # a control piece: decodes to nothing
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
    with pytest.raises(ValueError, match="eod_token='<eod>'"):
        build_tokenizer(
            TokenizerConfig(
                type="sentencepiece", path=str(tmp_path / "spm.model"), eod_token="<eod>"
            )
        )
