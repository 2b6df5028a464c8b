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

from nemotron_train.config.errors import ConfigError
from nemotron_train.launch.slurm import SBATCH_SCRIPT, SlurmJob, SubmitError, job_name, job_shape, submit
from nemotron_train.launch.sweep import compose_run_config, expand_arms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nemotron_train.launch",
        description="Submit train.py runs to Slurm through launch/slurm/train.sbatch, one job per "
                    "multirun arm; prints each job id.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="train.py's Hydra overrides")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="expand Hydra sweeps (a=x,y b=range(1,3)) into one job per combination")
    environment = parser.add_mutually_exclusive_group()
    environment.add_argument("--container-image", metavar="IMAGE",
                             help="squashfs file or enroot URI to run each task in (pyxis); see docker/")
    environment.add_argument("--venv", type=Path, metavar="DIR",
                             help="container-less: virtual environment on shared storage, made with "
                                  "`launch/setup_venv.sh gpu DIR` (default without either: <code-dir>/.venv)")
    parser.add_argument("--cpu", action="store_true",
                        help="request no GPUs; parallel.gpus_per_node becomes CPU processes per node (gloo)")
    parser.add_argument("--code-dir", type=Path, default=Path.cwd(),
                        help="this checkout, on storage every node sees (default: the current directory)")
    parser.add_argument("--runs-dir", type=Path, help="run directories and logs (default <code-dir>/runs)")
    parser.add_argument("--checkpoints-dir", type=Path,
                        help="put checkpoints in <dir>/<job name>-<job id> instead of the run directory")
    parser.add_argument("--data-dir", type=Path, help="data directory to mount into the container")
    parser.add_argument("--mount", action="append", default=[], metavar="SRC:DST",
                        help="another container mount (repeatable)")
    parser.add_argument("--job-name", help="Slurm job name (default: the recipe's name)")
    for option in ("partition", "account", "qos", "time"):
        parser.add_argument(f"--{option}", help=f"sbatch --{option}")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="any other sbatch option, e.g. --sbatch=--reservation=big (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each job's environment and sbatch command; submit nothing")
    return parser


def plan_jobs(args: argparse.Namespace) -> list:
    """One validated SlurmJob per arm."""
    code_dir = args.code_dir.resolve()
    if not (code_dir / SBATCH_SCRIPT).is_file():
        raise ConfigError("--code-dir", str(code_dir), f"no {SBATCH_SCRIPT} there; run from the checkout")
    runs_dir = (args.runs_dir or code_dir / "runs").resolve()
    environment = job_environment(args, code_dir, runs_dir)
    sbatch_options = [f"--{option}={getattr(args, option)}"
                      for option in ("partition", "account", "qos", "time") if getattr(args, option)]
    sbatch_options += args.sbatch
    jobs = []
    for arm in expand_arms(args.overrides, args.multirun):
        config = compose_run_config(code_dir / "recipes", arm.overrides)
        jobs.append(SlurmJob(
            name=job_name(args.job_name or config.recipe or "nemotron-train", arm.swept),
            **job_shape(config, gpus=not args.cpu),
            overrides=arm.overrides, runs_dir=runs_dir,
            environment=environment, sbatch_options=sbatch_options,
        ))
    return jobs


def job_environment(args: argparse.Namespace, code_dir: Path, runs_dir: Path) -> dict:
    """The NEMOTRON_* variables train.sbatch reads."""
    environment = {"NEMOTRON_CODE_DIR": str(code_dir), "NEMOTRON_RUNS_DIR": str(runs_dir)}
    if args.container_image:
        image = args.container_image
        # A squashfs path must be absolute on the nodes; an enroot URI passes through.
        environment["NEMOTRON_CONTAINER_IMAGE"] = str(Path(image).resolve()) if Path(image).exists() else image
    if args.venv:
        venv = args.venv.resolve()
        if not (venv / "bin" / "python").exists():
            raise ConfigError("--venv", str(venv), f"no virtual environment there; create it with "
                                                   f"`launch/setup_venv.sh gpu {venv}`")
        environment["NEMOTRON_VENV"] = str(venv)
        # An image exported in the submitting shell would otherwise win over --venv.
        environment["NEMOTRON_CONTAINER_IMAGE"] = ""
    if args.mount and not args.container_image:
        raise ConfigError("--mount", ",".join(args.mount), "mounts need --container-image")
    for key, value in (("NEMOTRON_DATA_DIR", args.data_dir), ("NEMOTRON_CHECKPOINTS_DIR", args.checkpoints_dir)):
        if value:
            environment[key] = str(value.resolve())
    if args.mount:
        environment["NEMOTRON_CONTAINER_MOUNTS"] = ",".join(args.mount)
    return environment


def main(argv=None) -> None:
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
