import pytest
from omegaconf import OmegaConf

from nemotron_train.data.cache import resolve_cache_dir
from nemotron_train.data.config import DataConfig, TokenizerConfig, parse_split


def test_defaults_are_valid_and_use_the_stdlib_corpus_with_the_builtin_tokenizer():
    config = DataConfig()
    assert config.corpus == "stdlib"
    assert config.tokenizer.type == "builtin"
    assert config.tokenizer.vocab_size == 4096


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"type": "bpe"}, "type"),
        ({"path": "tokenizer.json"}, "path"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"eod_token": "</s>"}, "eod_token"),
        ({"type": "huggingface"}, "path"),
        ({"type": "tiktoken", "path": "v.json", "tiktoken_pattern": "v3"}, "tiktoken_pattern"),
        (
            {"type": "tiktoken", "path": "v.json", "tiktoken_num_special_tokens": 3},
            "tiktoken_num_special_tokens",
        ),
    ],
)
def test_tokenizer_config_rejects_bad_values_naming_field_and_value(overrides, field_name):
    with pytest.raises(ValueError) as error:
        TokenizerConfig(**overrides)
    message = str(error.value)
    assert f"data.tokenizer.{field_name}=" in message
    assert "allowed" in message


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"corpus": "web"}, "corpus"),
        ({"blend": [[1.0, "/data/a"]]}, "blend"),
        ({"corpus": "prefixes"}, "blend"),
        ({"corpus": "prefixes", "blend": [[0, "/data/a"]]}, "blend"),
        ({"corpus": "prefixes", "blend": [["/data/a", 1.0]]}, "blend"),
        ({"corpus": "prefixes", "blend": [[1.0]]}, "blend"),
        ({"corpus": "prefixes", "blend": [[1.0, "/a"]], "stdlib_max_files": 3}, "stdlib_max_files"),
        ({"split": "98,2,0,1"}, "split"),
        ({"split": "0,1,0"}, "split"),
        ({"split": "a,b"}, "split"),
        ({"preparation_workers": 0}, "preparation_workers"),
        ({"stdlib_max_files": 0}, "stdlib_max_files"),
        ({"dataloader_workers": -1}, "dataloader_workers"),
    ],
)
def test_data_config_rejects_bad_values_naming_field_and_value(overrides, field_name):
    with pytest.raises(ValueError, match=rf"data\.{field_name}=.*allowed"):
        DataConfig(**overrides)


def test_split_strings_follow_megatron_padding_with_zeros():
    assert parse_split("98,2,0") == [98.0, 2.0, 0.0]
    assert parse_split("1") == [1.0, 0.0, 0.0]


def test_configs_work_as_omegaconf_structured_configs():
    schema = OmegaConf.structured(DataConfig)
    overrides = OmegaConf.create(
        {
            "corpus": "prefixes",
            "blend": [[0.7, "/a"], [0.3, "/b"]],
            "tokenizer": {"vocab_size": 512},
        }
    )
    config = OmegaConf.to_object(OmegaConf.merge(schema, overrides))
    assert isinstance(config, DataConfig) and isinstance(config.tokenizer, TokenizerConfig)
    assert config.blend == [[0.7, "/a"], [0.3, "/b"]]
    assert config.tokenizer.vocab_size == 512


def test_cache_dir_comes_from_the_config_then_the_environment_then_the_home_default(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("NEMOTRON_TRAIN_CACHE", str(tmp_path / "from_env"))
    assert resolve_cache_dir(str(tmp_path / "explicit")) == str(tmp_path / "explicit")
    assert resolve_cache_dir(None) == str(tmp_path / "from_env")
    monkeypatch.delenv("NEMOTRON_TRAIN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir(None) == str(tmp_path / "home" / ".cache" / "nemotron_train")
