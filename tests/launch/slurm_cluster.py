"""A real one-node Slurm on loopback for tests: munged, slurmctld and slurmd in a temporary directory.

Everything it starts is a child of the test (daemons in the foreground) or carries its
SLURM_CONF in its environment (job steps), so `stop` ends exactly what `start` began.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def ensure_debian_packages(commands: dict) -> None:
    """Install the Debian packages whose commands are missing ({command: package}), or skip."""
    missing = sorted({package for command, package in commands.items()
                      if shutil.which(command, path=SBIN_PATH) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs root and apt-get to install {' '.join(missing)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=environment,
                   capture_output=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSlurmCluster:
    """One node named `localhost` with all of this machine's CPUs, one partition, no GPUs."""

    def __init__(self):
        # A short path: munge's socket must fit a Unix socket name (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="nt-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.daemons: list = []
        self.environment = {**os.environ, "SLURM_CONF": str(self.conf),
                            "PATH": SBIN_PATH}

    def start(self) -> "LocalSlurmCluster":
        for name in ("munge", "state", "spool", "log"):
            (self.root / name).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        socket_path = self.root / "munge" / "munge.socket"
        self.conf.write_text(self._config(socket_path))
        log = self.root / "log"
        self._daemon(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                      f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={log / 'munged.log'}",
                      f"--seed-file={self.root / 'munge' / 'seed'}"])
        self._wait_for(socket_path.exists, 20, "munged's socket")
        self._daemon(["slurmctld", "-D", "-i"])
        self._daemon(["slurmd", "-D", "-N", "localhost"])
        self._wait_for(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
                       60, "the node to come up idle")
        return self

    def _config(self, munge_socket: Path) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=nemotron-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start (default 120 s).
            f"AuthInfo=socket={munge_socket},cred_expire=5",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "MailProg=/bin/true",
            "MinJobAge=3600",
            "KillWait=10",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _daemon(self, command: list) -> None:
        log = open(self.root / "log" / f"{command[0]}.stdout", "w")
        self.daemons.append(subprocess.Popen(command, env=self.environment, stdout=log, stderr=log,
                                             cwd=self.root))

    @staticmethod
    def _wait_for(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def run(self, *command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(command), env=self.environment, capture_output=True, text=True,
                              check=check, **kwargs)

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict of its Key=Value fields."""
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(field.split("=", 1) for field in line.split() if "=" in field)

    def wait_for_job(self, job_id: str, timeout: float, until=None) -> dict:
        """Poll until the job is in a final state (or `until(job)` holds); return its fields."""
        until = until or (lambda job: job["JobState"] in TERMINAL_STATES)
        fields = {}

        def reached():
            nonlocal fields
            fields = self.job(job_id)
            return until(fields)

        self._wait_for(reached, timeout, f"job {job_id} (last seen {fields.get('JobState')})")
        return fields

    def stop(self) -> None:
        """Cancel every job, stop the daemons, end any job process left, remove the state."""
        try:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                self._wait_for(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 60,
                               "cancelled jobs to end")
        finally:
            for daemon in reversed(self.daemons):
                daemon.terminate()
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
            self._end_leftover_job_processes()
            shutil.rmtree(self.root, ignore_errors=True)

    def _end_leftover_job_processes(self) -> None:
        # slurmstepd and the tasks inherit SLURM_CONF from slurmd or the job: ours, by that mark.
        for process in psutil.process_iter():
            try:
                if process.environ().get("SLURM_CONF") == str(self.conf):
                    process.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
