"""Train a Nemotron-3-style hybrid model: `python train.py recipe=tiny [key=value ...]`.

Hydra composes `recipes/` into a typed RunConfig; everything else happens in
`nemotron_train.entry`.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from nemotron_train.config.hydra_output import rank_zero_only_overrides
from nemotron_train.config.schema import register_schema

register_schema()


@hydra.main(config_path="recipes", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from nemotron_train.entry import run

    run(cfg)


if __name__ == "__main__":
    sys.argv += rank_zero_only_overrides(os.environ)
    main()
