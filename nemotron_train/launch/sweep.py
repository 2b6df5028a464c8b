"""From command-line overrides to the jobs of a launch: expand a Hydra multirun, compose each arm.

The sweep syntax is Hydra's own (`arm=standard,latent`, `optim.lr=range(1,4)`), parsed by
Hydra's override parser; each arm becomes one job, as Hydra's basic sweeper would run it.
"""

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig, register_schema


@dataclass(frozen=True)
class Arm:
    """One job of a launch."""

    overrides: list
    """train.py's overrides for this job, every sweep resolved to one value."""
    swept: dict = field(default_factory=dict)
    """The swept keys and this arm's values (empty outside a multirun)."""


def expand_arms(overrides: list, multirun: bool) -> list:
    """The cartesian product of the sweeps in `overrides`, one `Arm` each, in Hydra's order."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            choices.append([(override.input_line, None)])
            continue
        key = override.get_key_element()
        if not multirun:
            raise ConfigError(key, override.input_line.partition("=")[2],
                              "a sweep needs -m/--multirun (one job per value)")
        choices.append([(f"{key}={value}", (key, value)) for value in override.sweep_string_iterator()])
    arms = []
    for combination in itertools.product(*choices):
        swept = dict(choice for _, choice in combination if choice is not None)
        arms.append(Arm(overrides=[line for line, _ in combination], swept=swept))
    return arms


def compose_run_config(recipes_dir: Path, overrides: list) -> RunConfig:
    """Compose and validate one run as train.py would, without starting it.

    Raises ConfigError (or Hydra's composition errors) on a bad key, value or layout.
    """
    register_schema()
    with initialize_config_dir(config_dir=str(Path(recipes_dir).resolve()), version_base="1.3",
                               job_name="launch"):
        config = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    # The recipe records its name through the `hydra:` resolver, which reads HydraConfig.
    HydraConfig.instance().set_config(config)
    with open_dict(config):
        del config["hydra"]
    return OmegaConf.to_object(config)
