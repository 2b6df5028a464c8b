"""One Slurm job: the `sbatch` command line and environment for launch/slurm/train.sbatch."""

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nemotron_train.config.schema import RunConfig
from nemotron_train.planning.layout import check_layout, require_valid_layout

SBATCH_SCRIPT = Path("launch") / "slurm" / "train.sbatch"


class SubmitError(RuntimeError):
    """sbatch is missing or refused the job."""


@dataclass(kw_only=True)
class SlurmJob:
    """What one `sbatch` of train.sbatch needs."""

    name: str
    """Slurm job name; with the job id it names the run directory `<runs>/slurm/<name>-<id>`."""
    nodes: int
    tasks_per_node: int
    """Training processes per node, one per GPU."""
    gpus_per_node: int
    """GPUs to request per node (0 on CPU-only clusters)."""
    overrides: list
    """train.py's overrides."""
    runs_dir: Path
    """Run directories and Slurm logs go under `<runs_dir>/slurm`."""
    environment: dict = field(default_factory=dict)
    """NEMOTRON_* variables train.sbatch reads (container or venv, code, data, mounts)."""
    sbatch_options: list = field(default_factory=list)
    """More sbatch options, as written on its command line (`--time=04:00:00`)."""

    @property
    def log_dir(self) -> Path:
        return self.runs_dir / "slurm"

    def run_dir(self, job_id: str) -> Path:
        return self.log_dir / f"{self.name}-{job_id}"

    def sbatch_command(self, code_dir: Path) -> list:
        """The argument vector; options on the command line override the script's #SBATCH lines."""
        return [
            "sbatch", "--parsable",
            f"--job-name={self.name}",
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            f"--gpus-per-node={self.gpus_per_node}",
            f"--output={self.log_dir}/%x-%j.out",
            *self.sbatch_options,
            str(code_dir / SBATCH_SCRIPT),
            *self.overrides,
        ]

    def shell_command(self, code_dir: Path) -> str:
        """The submission as one shell line, environment included (what --dry-run prints)."""
        return shell_line(self.environment, self.sbatch_command(code_dir))


def shell_line(environment: dict, argv: list) -> str:
    """`argv` as one shell line, preceded by the `environment` assignments, all quoted."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in sorted(environment.items())]
    return " ".join(assignments + [shlex.quote(str(part)) for part in argv])


def job_name(base: str, swept: dict) -> str:
    """`base`, plus `.key=value` per swept key; characters a path or Slurm dislikes become `_`."""
    name = ".".join([base] + [f"{key}={value}" for key, value in swept.items()])
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name)


def job_shape(config: RunConfig, gpus: bool) -> dict:
    """Nodes, tasks and GPUs per node from the recipe's parallel section.

    The dry run's layout rules run at that world size, so a layout that cannot start fails
    here rather than after the queue wait.
    """
    nodes = config.parallel.num_nodes or 1
    tasks_per_node = config.parallel.gpus_per_node
    require_valid_layout(config, check_layout(config, nodes * tasks_per_node))
    return dict(nodes=nodes, tasks_per_node=tasks_per_node, gpus_per_node=tasks_per_node if gpus else 0)


def submit(job, code_dir: Path) -> str:
    """Submit `job` (a SlurmJob, or anything with its name, log_dir, environment and
    sbatch_command) and return its job id."""
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: launch from a Slurm login node")
    job.log_dir.mkdir(parents=True, exist_ok=True)
    # sbatch exports the submitting environment to the job; NEMOTRON_* ride along that way.
    result = subprocess.run(job.sbatch_command(code_dir), env={**os.environ, **job.environment},
                            cwd=code_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SubmitError(f"sbatch refused job {job.name}: {result.stderr.strip()}")
    # --parsable prints `<id>` or `<id>;<cluster>`.
    return result.stdout.strip().split(";")[0]
