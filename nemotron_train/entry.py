"""From a composed Hydra config to a finished run: validate, record, train or dry-run."""

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nemotron_train.errors import ConfigError
from nemotron_train.config.schema import RunConfig
from nemotron_train.convert.hf_source import is_hf_load, resolve_hf_load

EXIT_NONFINITE = 3
"""A step went non-finite and train.on_nonfinite said stop (halt, or rollbacks used up)."""
EXIT_NO_CHECKPOINT = 4
"""The checkpoint to resume from or load is damaged, with no intact one to fall back on."""


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Build the typed RunConfig; every section's validation runs here, before any allocation."""
    return OmegaConf.to_object(cfg)


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved composition, as `config.yaml` in the run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def use_hf_checkpoint(config: RunConfig, cfg: DictConfig) -> None:
    """`checkpoint.load=hf:DIR`: check the recipe against DIR, import DIR (once), and load the
    import with finetune semantics; the recorded config keeps `hf:DIR` and the vocabulary."""
    config.checkpoint.load = str(resolve_hf_load(config))
    config.checkpoint.finetune = cfg.checkpoint.finetune = True
    cfg.model.vocab_size = config.model.vocab_size


def run(cfg: DictConfig) -> None:
    """Entry point behind train.py; exits with status 2 and one clear line on bad configuration."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Megatron-Core logs every parameter and config at INFO; keep the console to our progress.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    try:
        config = to_run_config(cfg)
        if is_hf_load(config.checkpoint.load) and not config.dry_run:
            use_hf_checkpoint(config, cfg)
        if config.dry_run:
            from nemotron_train.planning.report import dry_run

            write_resolved_config(cfg, run_dir)
            dry_run(config, run_dir)
            return
        from nemotron_train.training.loop import train
        from nemotron_train.training.nonfinite import NonFiniteStep
        from nemotron_train.training.resume import NoIntactCheckpoint

        flops = model_flops(config)
        try:
            train(config, run_dir, on_run_dir=lambda final_dir: write_resolved_config(cfg, final_dir),
                  model_flops=flops)
        except NonFiniteStep as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_NONFINITE)
        except NoIntactCheckpoint as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_NO_CHECKPOINT)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def model_flops(config):
    """The model's training FLOPs per token from the dry-run accounting, for the metrics'
    `tflops_per_s` and `mfu` (counted on meta-device modules, before the run's own groups)."""
    from nemotron_train.planning import parameters, training_flops
    from nemotron_train.planning.report import resolve_vocab_size
    from nemotron_train.training.step_performance import ModelFlops

    vocab_size = resolve_vocab_size(config)
    counts = parameters.count_parameters(config.model, vocab_size)
    per_token = training_flops.flops_per_token(config.model, counts, vocab_size)
    return ModelFlops(per_token=per_token.total, seq_length=per_token.seq_length,
                      attention_per_context_token=per_token.attention_core_per_context_token)
