"""Only rank 0 of a multi-process job writes Hydra's files into the shared run directory.

Every torchrun or srun process runs `train.py` and so Hydra's job set-up: without this, each
rank writes `.hydra/` (config, hydra.yaml, overrides) and appends to the job's log file in the
run directory that all of them share. The other ranks get overrides that turn both off.
"""

NON_ZERO_RANK_OVERRIDES = (
    "hydra.output_subdir=null",  # no .hydra/ directory
    "hydra/job_logging=disabled",  # no <job>.log file handler
    "hydra/hydra_logging=disabled",
)


def rank_zero_only_overrides(environ) -> list[str]:
    """The Hydra overrides this process adds: none on rank 0 (or without a launcher), the
    ones above on every other rank (`RANK` as torchrun and launch/slurm/srun_task.sh set it)."""
    return [] if int(environ.get("RANK", "0")) == 0 else list(NON_ZERO_RANK_OVERRIDES)
