"""The failure-handling keys refuse bad values up front, naming the key, the value and the fix."""

import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.runtime.distributed import ParallelConfig
from nemotron_train.telemetry.metrics import LoggingConfig
from nemotron_train.training.checkpoint import CheckpointConfig
from nemotron_train.training.config import TrainConfig
from nemotron_train.training.fault_injection import FaultInjectionConfig

BAD_VALUES = [
    (TrainConfig, "on_nonfinite", "ignore", "choose one of ('halt', 'skip', 'rollback')"),
    (TrainConfig, "max_rollbacks", -1, "must be >= 0"),
    (TrainConfig, "loss_spike_factor", -2.0, "must be >= 0 (0: off)"),
    (TrainConfig, "loss_spike_window", 0, "must be at least 1"),
    (TrainConfig, "watchdog_factor", 0.5, "must be > 1"),
    (TrainConfig, "watchdog_min_seconds", -1.0, "must be >= 0"),
    (TrainConfig, "watchdog_history", 0, "must be at least 1"),
    (CheckpointConfig, "optimizer_format", "flat", "choose one of ('dp_reshardable', 'fully_reshardable')"),
    (CheckpointConfig, "async_strategy", "threads", "choose one of ('auto', 'nvrx', 'mcore')"),
    (FaultInjectionConfig, "value", "zero", "choose one of ('nan', 'inf')"),
    (FaultInjectionConfig, "micro_batch", 0, "must be at least 1"),
    (FaultInjectionConfig, "nonfinite_grad_steps", [0], "steps are numbered from 1"),
    (FaultInjectionConfig, "stall_step", -1, "must be >= 0"),
    (FaultInjectionConfig, "stall_seconds", -1.0, "must be >= 0"),
    (LoggingConfig, "peak_tflops", 0.0, "must be > 0, or null"),
    (LoggingConfig, "expert_load_interval", -1, "must be >= 0"),
    (ParallelConfig, "distributed_timeout_minutes", 0, "must be at least 1"),
]
SECTIONS = {TrainConfig: "train", CheckpointConfig: "checkpoint", FaultInjectionConfig: "faults",
            LoggingConfig: "logging", ParallelConfig: "parallel"}


@pytest.mark.parametrize("section, key, value, fix", BAD_VALUES,
                         ids=[f"{SECTIONS[s]}.{k}" for s, k, _, _ in BAD_VALUES])
def test_bad_failure_handling_value_names_key_value_and_fix(section, key, value, fix):
    with pytest.raises(ConfigError) as raised:
        section(**{key: value})
    assert raised.value.key == f"{SECTIONS[section]}.{key}" and raised.value.value == value
    assert fix in str(raised.value)


def test_the_defaults_are_valid_and_watchdog_zero_means_off():
    assert TrainConfig(watchdog_factor=0).watchdog_factor == 0
    assert TrainConfig().on_nonfinite == "halt" and CheckpointConfig().optimizer_format == "dp_reshardable"
