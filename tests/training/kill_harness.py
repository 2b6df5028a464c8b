"""kill -9 a training run at a chosen kind of moment, restart it, and compare every logged step
with an uninterrupted run.

The run is `train.py` (under torchrun for several processes) in a session of its own; the
fault is SIGKILL to one training process, chosen at random, at the moment the trial asks
for: between steps (right after a step's record is written), during a checkpoint write
(while an `iter_*.partial` directory exists), or at a random point of a random step (or
save) after the first checkpoint. Then the rest of the session is killed too, as a node's job cleanup would (Megatron-Core's checkpoint writer
leaves a multiprocessing manager process that outlives its parent). The restarted run
resumes from whatever the killed one left and must log every step bit for bit as the
uninterrupted run did.
"""

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from nemotron_train.training.checkpoint import LATEST_FILE
from tests.training.small_model import SMALL_MODEL, TOKENS_PER_STEP, logged

REPO = Path(__file__).resolve().parents[2]

SAVE_INTERVAL = 2
KILL_MODEL = ["recipe=tiny", *SMALL_MODEL, f"checkpoint.save_interval={SAVE_INTERVAL}", "checkpoint.keep_last=2"]
COMPARED = ("step", "loss", "grad_norm", "lr", "moe_seq_load_balancing_loss")
MOMENTS = ("between_steps", "during_save", "random")
POLL_S = 0.002


@dataclass
class TrialResult:
    """One kill and restart."""

    moment: str
    killed_after_step: int
    """Steps logged when the kill came."""
    killed_during_save: bool
    resumed_from: str
    bit_identical: bool
    mismatch: str = ""


def launcher(nprocs: int) -> list[str]:
    if nprocs == 1:
        return [sys.executable, "train.py"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nprocs}", "train.py"]


def start(run_dir: Path, overrides: list[str], nprocs: int, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(run_dir.parent / f"{run_dir.name}.{log_name}.log", "w")
    return subprocess.Popen([*launcher(nprocs), *KILL_MODEL, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_to_completion(run_dir: Path, overrides: list[str], nprocs: int, log_name: str,
                      timeout: float = 900) -> list[dict]:
    process = start(run_dir, overrides, nprocs, log_name)
    try:
        status = process.wait(timeout=timeout)
    finally:
        _kill_session(process)
    log = (run_dir.parent / f"{run_dir.name}.{log_name}.log").read_text()
    assert status == 0, f"{log_name} run failed with {status}:\n{log[-5000:]}"
    return logged(run_dir)


def kill_trial(run_dir: Path, overrides: list[str], nprocs: int, moment: str, rng: random.Random,
               reference: list[dict], max_steps: int) -> TrialResult:
    """Kill a fresh run in `run_dir` at a `moment`, restart it, compare with `reference`."""
    process = start(run_dir, overrides, nprocs, "killed")
    try:
        during_save = _wait_for_moment(process, run_dir, moment, rng, max_steps)
        steps_logged = len(logged(run_dir))
        victim = rng.choice(_training_processes(process, nprocs))
        victim.send_signal(signal.SIGKILL)
        try:
            process.wait(timeout=120)  # torchrun stops the other workers
        except subprocess.TimeoutExpired:
            pass  # the session is killed below either way
    finally:
        _kill_session(process)
    resumed = run_to_completion(run_dir, overrides, nprocs, "resumed")
    log = (run_dir.parent / f"{run_dir.name}.resumed.log").read_text()
    resumed_from = next((_checkpoint_name(line.split(" from ", 1)[1]) for line in log.splitlines()
                         if "resumed from" in line), "start (no checkpoint)")
    mismatch = compare(reference, resumed)
    return TrialResult(moment=moment, killed_after_step=steps_logged, killed_during_save=during_save,
                       resumed_from=resumed_from, bit_identical=not mismatch, mismatch=mismatch)


def _checkpoint_name(resumed_from: str) -> str:
    """'iter_0000004 at step 4' from '<run dir>/checkpoints/iter_0000004 at step 4'."""
    path, _, rest = resumed_from.partition(" ")
    return f"{Path(path).name} {rest}".strip()


def compare(reference: list[dict], candidate: list[dict]) -> str:
    """'' when every logged step matches to the bit, else the first difference."""
    if [r["step"] for r in candidate] != [r["step"] for r in reference]:
        return f"steps {[r['step'] for r in candidate]} != {[r['step'] for r in reference]}"
    for expected, got in zip(reference, candidate):
        for key in COMPARED:
            if expected.get(key) != got.get(key):
                return f"step {expected['step']}: {key} {got.get(key)!r} != {expected.get(key)!r}"
    return ""


def _wait_for_moment(process, run_dir: Path, moment: str, rng: random.Random, max_steps: int) -> bool:
    """Return at the moment to kill; True if a checkpoint write was under way then."""
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 600

    def steps_logged(count: int):
        return lambda: len(logged(run_dir)) >= count

    if moment == "between_steps":
        _wait(process, steps_logged(rng.randint(1, max_steps - 1)), deadline)
    elif moment == "during_save":
        # A random one of the saves after the first.
        first_save = 2 * SAVE_INTERVAL
        staging = checkpoints / f"iter_{rng.randrange(first_save, max_steps + 1, SAVE_INTERVAL):07d}.partial"
        _wait(process, staging.exists, deadline)
    else:
        # A random point of the step (or the save) after step k, once a checkpoint exists, so
        # that the resumed run restores its streams; k <= max_steps - 2 keeps the kill inside
        # the run on a fast machine.
        after = rng.randint(SAVE_INTERVAL, max_steps - 2)
        _wait(process, lambda: (checkpoints / LATEST_FILE).exists() and steps_logged(after)(), deadline)
        kill_at = time.monotonic() + rng.random() * _last_step_seconds(run_dir)
        _wait(process, lambda: time.monotonic() > kill_at, deadline)
    return any(checkpoints.glob("iter_*.partial"))


def _last_step_seconds(run_dir: Path) -> float:
    record = logged(run_dir)[-1]
    return TOKENS_PER_STEP / record["tokens_per_s"]


def _wait(process, condition, deadline: float) -> None:
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before the kill")
        if time.monotonic() > deadline:
            raise AssertionError("the moment to kill never came")
        time.sleep(POLL_S)


def _training_processes(process, nprocs: int) -> list:
    """The processes running the training loop (torchrun's workers, or the process itself)."""
    parent = psutil.Process(process.pid)
    if nprocs == 1:
        return [parent]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [child for child in parent.children()
                   if any("train.py" in part for part in child.cmdline())]
        if len(workers) == nprocs:
            return workers
        time.sleep(0.05)
    raise AssertionError("torchrun's workers did not show up")


def _kill_session(process) -> None:
    """SIGKILL whatever is left of the run's session (orphaned checkpoint writer managers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def summary(results: list[TrialResult]) -> dict:
    """The trials and the `k/n bit-identical` figure."""
    identical = sum(r.bit_identical for r in results)
    return {"bit_identical": f"{identical}/{len(results)}", "trials": [asdict(r) for r in results]}
