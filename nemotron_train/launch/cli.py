"""`python -m nemotron_train.launch`: a recipe plus overrides in, submitted Slurm jobs out.

    python -m nemotron_train.launch --container-image /shared/nemotron-train.sqsh \\
        recipe=nano_30b parallel.num_nodes=16
    python -m nemotron_train.launch -m recipe=ablation_latentmoe arm=standard,latent

The job's shape comes from the recipe: `parallel.num_nodes` nodes (1 if unset) with
`parallel.gpus_per_node` tasks each, one per GPU. Every arm is composed and validated as
train.py would before anything is submitted, so a typo fails here, not after the queue wait.
"""

import argparse
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from nemotron_train.errors import ConfigError
from nemotron_train.launch.data_prep_job import DATA_PREP_COMMAND
from nemotron_train.launch.data_prep_job import main as data_prep_main
from nemotron_train.launch.options import add_environment_options, add_sbatch_options, job_environment, sbatch_options
from nemotron_train.launch.slurm import SBATCH_SCRIPT, SlurmJob, SubmitError, job_name, job_shape, submit
from nemotron_train.launch.sweep import compose_run_config, expand_arms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nemotron_train.launch",
        description="Submit train.py runs to Slurm through launch/slurm/train.sbatch, one job per "
                    "multirun arm; prints each job id. `python -m nemotron_train.launch data-prep "
                    "--help`: prepare a corpus as a job array instead.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="train.py's Hydra overrides")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="expand Hydra sweeps (a=x,y b=range(1,3)) into one job per combination")
    add_environment_options(parser, "`launch/setup_venv.sh gpu DIR`")
    parser.add_argument("--cpu", action="store_true",
                        help="request no GPUs; parallel.gpus_per_node becomes CPU processes per node (gloo)")
    parser.add_argument("--runs-dir", type=Path, help="run directories and logs (default <code-dir>/runs)")
    parser.add_argument("--checkpoints-dir", type=Path,
                        help="put checkpoints in <dir>/<job name>-<job id> instead of the run directory")
    parser.add_argument("--job-name", help="Slurm job name (default: the recipe's name)")
    add_sbatch_options(parser)
    return parser


def plan_jobs(args: argparse.Namespace) -> list:
    """One validated SlurmJob per arm."""
    code_dir = args.code_dir.resolve()
    if not (code_dir / SBATCH_SCRIPT).is_file():
        raise ConfigError("--code-dir", str(code_dir), f"no {SBATCH_SCRIPT} there; run from the checkout")
    runs_dir = (args.runs_dir or code_dir / "runs").resolve()
    environment = job_environment(args, code_dir, runs_dir=runs_dir, checkpoints_dir=args.checkpoints_dir)
    options = sbatch_options(args)
    jobs = []
    for arm in expand_arms(args.overrides, args.multirun):
        config = compose_run_config(code_dir / "recipes", arm.overrides)
        jobs.append(SlurmJob(
            name=job_name(args.job_name or config.recipe or "nemotron-train", arm.swept),
            **job_shape(config, gpus=not args.cpu),
            overrides=arm.overrides, runs_dir=runs_dir,
            environment=environment, sbatch_options=options,
        ))
    return jobs


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [DATA_PREP_COMMAND]:
        data_prep_main(argv[1:])
        return
    args = build_parser().parse_intermixed_args(argv)
    try:
        jobs = plan_jobs(args)
    except (ConfigError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    code_dir = args.code_dir.resolve()
    for job in jobs:
        if args.dry_run:
            print(job.shell_command(code_dir))
            continue
        try:
            job_id = submit(job, code_dir)
        except SubmitError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        print(f"submitted job {job_id}: {job.name} ({' '.join(job.overrides)})\n"
              f"    run dir {job.run_dir(job_id)}\n    log     {job.log_dir / f'{job.name}-{job_id}.out'}",
              flush=True)
