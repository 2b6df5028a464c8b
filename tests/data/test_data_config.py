from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import register_schema
from nemotron_train.data.cache import resolve_cache_dir
from nemotron_train.data.config import DataConfig, DataPhaseConfig, TokenizerConfig, parse_split
from nemotron_train.data.curriculum import plan_data_phases

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


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


def _phases(*phases) -> list[DataPhaseConfig]:
    return [DataPhaseConfig(blend=blend, until_fraction=fraction) for blend, fraction in phases]


def _curriculum(*phases) -> dict:
    return {"corpus": "prefixes", "phases": _phases(*phases)}


A, B = [[1.0, "/data/a"]], [[1.0, "/data/b"]]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"phases": _phases((A, 0.9), (B, 1.0))}, "data.phases"),
        ({**_curriculum((B, 1.0)), "blend": A}, "data.blend"),
        (_curriculum(([], 0.9), (B, 1.0)), "data.phases.0.blend"),
        (_curriculum((A, 0.9), ([[0, "/b"]], 1.0)), "data.phases.1.blend"),
        (_curriculum((A, 0.0), (B, 1.0)), "data.phases.0.until_fraction"),
        (_curriculum((A, 0.9), (B, 0.8), (A, 1.0)), "data.phases.1.until_fraction"),
        (_curriculum((A, 0.9), (B, 1.5)), "data.phases.1.until_fraction"),
        (_curriculum((A, 0.5), (B, 0.9)), "data.phases.1.until_fraction"),
        ({"corpus": "prefixes", "phases": [{"blend": A, "until_fraction": 1.0}]}, "data.phases"),
    ],
)
def test_curriculum_phases_reject_bad_values_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        DataConfig(**overrides)
    assert error.value.key == key
    assert "allowed" in str(error.value)


def test_phases_work_as_omegaconf_structured_configs():
    schema = OmegaConf.structured(DataConfig)
    overrides = OmegaConf.create(
        {
            "corpus": "prefixes",
            "phases": [{"blend": [[0.7, "/a"], [0.3, "/b"]], "until_fraction": 0.94}, {"blend": B}],
        }
    )
    config = OmegaConf.to_object(OmegaConf.merge(schema, overrides))
    assert config.phases == _phases(([[0.7, "/a"], [0.3, "/b"]], 0.94), (B, 1.0))


def _compose_run_config(overrides):
    """The RunConfig `python train.py <overrides>` would run."""
    register_schema()
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_object(cfg)


def test_the_two_phase_data_recipe_switches_at_94_percent_of_the_steps():
    config = _compose_run_config(["recipe=tiny", "data=pretrain_two_phase", "train.max_steps=300"])
    assert [phase.until_fraction for phase in config.data.phases] == [0.94, 1.0]
    first, second = plan_data_phases(config.data, config.train.max_steps)
    assert first.last_step == 282 and second.first_step == 283  # ceil(0.94 * 300) = 282
    # A command-line override of one phase is validated like the recipe.
    with pytest.raises(ConfigError, match=r"data\.phases\.0\.until_fraction=1\.2: allowed"):
        _compose_run_config(
            ["recipe=tiny", "data=pretrain_two_phase", "data.phases.0.until_fraction=1.2"]
        )


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
