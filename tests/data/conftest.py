"""Fixtures for the data tests: one builtin tokenizer per session and tiny corpora."""

import json
import random
import string
from collections.abc import Callable

import pytest

from nemotron_train.data.config import TokenizerConfig
from nemotron_train.data.preparation import prepare_indexed_dataset
from nemotron_train.data.sources import InputSource
from nemotron_train.data.tokenizer import Tokenizer, build_tokenizer


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cache directory shared by the session, so the builtin tokenizer trains once."""
    return str(tmp_path_factory.mktemp("nemotron_train_cache"))


@pytest.fixture(scope="session")
def builtin_tokenizer(session_cache_dir: str) -> Tokenizer:
    return build_tokenizer(TokenizerConfig(), session_cache_dir)


@pytest.fixture
def random_documents() -> Callable[..., list[str]]:
    """Makes `count` seeded documents of 20 to 400 characters drawn from `alphabet`."""

    def make(seed: int, count: int, alphabet: str = string.ascii_letters + " \n") -> list[str]:
        generator = random.Random(seed)
        return [
            "".join(generator.choices(alphabet, k=generator.randint(20, 400))) for _ in range(count)
        ]

    return make


@pytest.fixture
def write_indexed_dataset(tmp_path, builtin_tokenizer) -> Callable[..., str]:
    """Writes documents as JSON Lines, prepares them with the builtin tokenizer and returns
    the path prefix of the indexed dataset."""

    def write(documents: list[str], name: str = "corpus", workers: int = 1) -> str:
        jsonl_path = tmp_path / f"{name}.jsonl"
        jsonl_path.write_text(
            "".join(json.dumps({"text": document}) + "\n" for document in documents)
        )
        summary = prepare_indexed_dataset(
            [InputSource("jsonl", str(jsonl_path))],
            tokenizer=builtin_tokenizer,
            output_prefix=str(tmp_path / name / f"{name}_text_document"),
            workers=workers,
        )
        return summary.output_prefix

    return write
