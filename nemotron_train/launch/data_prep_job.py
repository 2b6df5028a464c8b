"""`python -m nemotron_train.launch data-prep`: prepare a corpus as one Slurm job array.

    python -m nemotron_train.launch data-prep --num-shards 256 --cpus-per-task 32 \\
        --max-running 64 --container-image /shared/nemotron-train.sqsh --time 02:00:00 -- \\
        --input '/lustre/raw/web/*.jsonl.zst' --output-prefix /lustre/data/web \\
        --tokenizer-type huggingface --tokenizer-path /lustre/tok/tokenizer.json

Everything after `--` goes to `python -m data_prep`. Before submitting, the launcher runs
`python -m data_prep ... --plan-only` here: bad arguments, missing inputs or a tokenizer
that does not load fail now rather than in every array task after the queue wait, and the
plan all tasks read is written once. Array task I then runs data_prep.sbatch, which
prepares shard I with --workers = the task's CPUs.
"""

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nemotron_train.errors import ConfigError
from nemotron_train.launch.options import (
    add_environment_options,
    add_sbatch_options,
    job_environment,
    sbatch_options,
)
from nemotron_train.launch.slurm import SubmitError, shell_line, submit

DATA_PREP_COMMAND = "data-prep"
DATA_PREP_SBATCH_SCRIPT = Path("launch") / "slurm" / "data_prep.sbatch"
# Options the launcher sets on every task; given after `--` they would contradict it.
LAUNCHER_OWNED_OPTIONS = ("--num-shards", "--shard-index", "--workers", "--plan-only")


@dataclass(kw_only=True)
class DataPrepArrayJob:
    """What one `sbatch --array` of data_prep.sbatch needs."""

    name: str
    """Slurm job name; task logs are `<log_dir>/<name>-<array job id>_<task>.out`."""
    num_shards: int
    """Array size: task I prepares shard I."""
    cpus_per_task: int
    """CPUs per task, which are also data_prep's --workers."""
    max_running: int | None
    """At most this many tasks run at once (sbatch --array=...%K); None: no limit."""
    data_prep_arguments: list
    """`python -m data_prep`'s arguments, without the options the launcher owns."""
    log_dir: Path
    environment: dict = field(default_factory=dict)
    """NEMOTRON_* variables data_prep.sbatch reads (container or venv, code, data, mounts)."""
    sbatch_options: list = field(default_factory=list)

    def sbatch_command(self, code_dir: Path) -> list:
        """The argument vector; options on the command line override the script's #SBATCH lines."""
        array = f"0-{self.num_shards - 1}" + (f"%{self.max_running}" if self.max_running else "")
        return [
            "sbatch", "--parsable",
            f"--job-name={self.name}",
            f"--array={array}",
            f"--cpus-per-task={self.cpus_per_task}",
            f"--output={self.log_dir}/%x-%A_%a.out",
            *self.sbatch_options,
            str(code_dir / DATA_PREP_SBATCH_SCRIPT),
            *self.data_prep_arguments,
            "--num-shards", str(self.num_shards),
        ]

    def plan_command(self) -> list:
        """The local `python -m data_prep ... --plan-only` run before submitting."""
        return [sys.executable, "-m", "data_prep", *self.data_prep_arguments,
                "--num-shards", str(self.num_shards), "--plan-only"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m nemotron_train.launch {DATA_PREP_COMMAND}",
        description="Prepare a corpus with `python -m data_prep` as a Slurm job array, one shard "
                    "per task, in the same container or venv as training.",
        epilog="Everything after `--` is python -m data_prep's arguments (--input, "
               "--output-prefix, the tokenizer, ...); the launcher adds --num-shards, and each task "
               "--shard-index and --workers. A finished shard is never redone: resubmit the same "
               "command to finish a failed or cancelled preparation.",
    )
    parser.add_argument("--num-shards", type=int, required=True,
                        help="shards the input is split into, one array task each")
    parser.add_argument("--cpus-per-task", type=int, default=8,
                        help="CPUs per task, used as tokenizing workers (default: %(default)s)")
    parser.add_argument("--max-running", type=int,
                        help="run at most this many tasks at once (sbatch --array=0-N%%K)")
    add_environment_options(parser, "`launch/setup_venv.sh data DIR`")
    parser.add_argument("--logs-dir", type=Path,
                        help="where the task logs go (default <code-dir>/runs/slurm)")
    parser.add_argument("--job-name", default="data-prep", help="Slurm job name (default: %(default)s)")
    add_sbatch_options(parser)
    return parser


def plan_job(args: argparse.Namespace, data_prep_arguments: list) -> DataPrepArrayJob:
    """The validated array job; ConfigError on a bad launcher option."""
    code_dir = args.code_dir.resolve()
    if not (code_dir / DATA_PREP_SBATCH_SCRIPT).is_file():
        raise ConfigError("--code-dir", str(code_dir), f"no {DATA_PREP_SBATCH_SCRIPT} there; run from the checkout")
    for option, value in (("--num-shards", args.num_shards), ("--cpus-per-task", args.cpus_per_task)):
        if value < 1:
            raise ConfigError(option, value, "allowed: an integer >= 1")
    if args.max_running is not None and args.max_running < 1:
        raise ConfigError("--max-running", args.max_running, "allowed: an integer >= 1")
    if not data_prep_arguments:
        raise ConfigError("data_prep arguments", [], "give python -m data_prep's arguments after `--`")
    for argument in data_prep_arguments:
        if argument.split("=", 1)[0] in LAUNCHER_OWNED_OPTIONS:
            raise ConfigError("data_prep arguments", argument,
                              f"the launcher sets {', '.join(LAUNCHER_OWNED_OPTIONS)}; leave them out "
                              "after `--` (use the launcher's --num-shards and --cpus-per-task)")
    return DataPrepArrayJob(
        name=args.job_name,
        num_shards=args.num_shards,
        cpus_per_task=args.cpus_per_task,
        max_running=args.max_running,
        data_prep_arguments=data_prep_arguments,
        log_dir=(args.logs_dir or code_dir / "runs" / "slurm").resolve(),
        environment=job_environment(args, code_dir, venv_extras="data"),
        sbatch_options=sbatch_options(args),
    )


def output_prefix_of(data_prep_arguments: list) -> str:
    """The --output-prefix among data_prep's arguments ("PREFIX" if absent)."""
    for index, argument in enumerate(data_prep_arguments):
        if argument.startswith("--output-prefix="):
            return argument.split("=", 1)[1]
        if argument == "--output-prefix" and index + 1 < len(data_prep_arguments):
            return data_prep_arguments[index + 1]
    return "PREFIX"


def main(argv: list) -> None:
    """Plan the shards here, then submit the array; exits 2 on bad arguments, 1 if sbatch fails."""
    launcher_arguments, data_prep_arguments = _split_at_double_dash(argv)
    args = build_parser().parse_args(launcher_arguments)
    try:
        job = plan_job(args, data_prep_arguments)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    code_dir = args.code_dir.resolve()
    if args.dry_run:
        print(shell_line({}, job.plan_command()))
        print(shell_line(job.environment, job.sbatch_command(code_dir)))
        return
    planned = subprocess.run(job.plan_command(), cwd=code_dir, capture_output=True, text=True)
    if planned.returncode != 0:
        print(f"error: python -m data_prep refused the arguments:\n{planned.stderr.strip()}", file=sys.stderr)
        sys.exit(2)
    try:
        job_id = submit(job, code_dir)
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    prefix = output_prefix_of(data_prep_arguments)
    limit = f", {job.max_running} at a time" if job.max_running else ""
    print(f"submitted array job {job_id}: {job.name}, {job.num_shards} shards{limit}, "
          f"{job.cpus_per_task} CPUs each\n"
          f"    logs   {job.log_dir / f'{job.name}-{job_id}'}_<shard>.out\n"
          f"    status python -m data_prep status --output-prefix {prefix}\n"
          f"    then   python -m data_prep merge --output-prefix {prefix}   (or: blend ... --output FILE.yaml)",
          flush=True)


def _split_at_double_dash(argv: list) -> tuple[list, list]:
    if "--" not in argv:
        return list(argv), []
    index = argv.index("--")
    return list(argv[:index]), list(argv[index + 1:])
