"""Command-line options the launch commands share: the job's environment and sbatch's own."""

import argparse
from pathlib import Path

from nemotron_train.errors import ConfigError


def add_environment_options(parser: argparse.ArgumentParser, venv_command: str) -> None:
    """Where the job's Python comes from (container or venv), the checkout, data and mounts."""
    environment = parser.add_mutually_exclusive_group()
    environment.add_argument("--container-image", metavar="IMAGE",
                             help="squashfs file or enroot URI to run each task in (pyxis); see docker/")
    environment.add_argument("--venv", type=Path, metavar="DIR",
                             help="container-less: virtual environment on shared storage, made with "
                                  f"{venv_command} (default without either: <code-dir>/.venv)")
    parser.add_argument("--code-dir", type=Path, default=Path.cwd(),
                        help="this checkout, on storage every node sees (default: the current directory)")
    parser.add_argument("--data-dir", type=Path, help="data directory to mount into the container")
    parser.add_argument("--mount", action="append", default=[], metavar="SRC:DST",
                        help="another container mount (repeatable)")


def add_sbatch_options(parser: argparse.ArgumentParser) -> None:
    """Partition, account, QoS, time limit, any other sbatch option, and --dry-run."""
    for option in ("partition", "account", "qos", "time"):
        parser.add_argument(f"--{option}", help=f"sbatch --{option}")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="any other sbatch option, e.g. --sbatch=--reservation=big (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each job's environment and sbatch command; submit nothing")


def sbatch_options(args: argparse.Namespace) -> list:
    """The options add_sbatch_options collected, as sbatch takes them."""
    options = [f"--{option}={getattr(args, option)}"
               for option in ("partition", "account", "qos", "time") if getattr(args, option)]
    return options + args.sbatch


def job_environment(args: argparse.Namespace, code_dir: Path, *, runs_dir: Path | None = None,
                    checkpoints_dir: Path | None = None, venv_extras: str = "gpu") -> dict:
    """The NEMOTRON_* variables train.sbatch and data_prep.sbatch read, from the options of
    add_environment_options; `venv_extras` names the extras a --venv needs, for its error."""
    environment = {"NEMOTRON_CODE_DIR": str(code_dir)}
    if runs_dir is not None:
        environment["NEMOTRON_RUNS_DIR"] = str(runs_dir)
    if args.container_image:
        image = args.container_image
        # A squashfs path must be absolute on the nodes; an enroot URI passes through.
        environment["NEMOTRON_CONTAINER_IMAGE"] = str(Path(image).resolve()) if Path(image).exists() else image
    if args.venv:
        venv = args.venv.resolve()
        if not (venv / "bin" / "python").exists():
            raise ConfigError("--venv", str(venv), f"no virtual environment there; create it with "
                                                   f"`launch/setup_venv.sh {venv_extras} {venv}`")
        environment["NEMOTRON_VENV"] = str(venv)
        # An image exported in the submitting shell would otherwise win over --venv.
        environment["NEMOTRON_CONTAINER_IMAGE"] = ""
    if args.mount and not args.container_image:
        raise ConfigError("--mount", ",".join(args.mount), "mounts need --container-image")
    for key, value in (("NEMOTRON_DATA_DIR", args.data_dir), ("NEMOTRON_CHECKPOINTS_DIR", checkpoints_dir)):
        if value:
            environment[key] = str(value.resolve())
    if args.mount:
        environment["NEMOTRON_CONTAINER_MOUNTS"] = ",".join(args.mount)
    return environment
