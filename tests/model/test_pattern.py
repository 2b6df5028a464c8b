import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.model.pattern import parse_pattern

NANO = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


def test_nano_pattern_counts_match_the_published_model():
    parsed = parse_pattern(NANO)
    assert parsed.num_layers == 52
    assert (parsed.count("mamba"), parsed.count("moe"), parsed.count("attention")) == (23, 23, 6)
    assert parsed.mtp_block is None and parsed.mtp_depths == 0


def test_pipeline_stages_and_mtp_block_are_split_out():
    parsed = parse_pattern("MEM|*EM/*E/*E")
    assert parsed.main == "MEM*EM"
    assert parsed.stages == ("MEM", "*EM")
    assert parsed.mtp_block == "*E" and parsed.mtp_depths == 2
    assert parsed.layer_types() == ["mamba", "moe", "mamba", "attention", "moe", "mamba"]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("MEX*", "character 'X' at position 2"),
        ("", "at least one layer symbol"),
        ("ME||M", "every pipeline stage"),
        ("MEM/*E/*-", "repeat the same"),
        ("ME/*|E", "'|' may only appear"),
    ],
)
def test_bad_patterns_name_the_key_and_the_problem(pattern, message):
    with pytest.raises(ConfigError) as error:
        parse_pattern(pattern)
    assert str(error.value).startswith(f"model.pattern={pattern!r}")
    assert message in str(error.value)
