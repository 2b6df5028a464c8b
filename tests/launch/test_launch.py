"""The launcher and the job scripts without a cluster: stand-in sbatch, srun and scontrol on PATH."""

import itertools
import json
import os
import stat
import sys
import subprocess
from pathlib import Path

import pytest

from nemotron_train.errors import ConfigError
from nemotron_train.launch.cli import main
from nemotron_train.launch.sweep import expand_arms

REPO = Path(__file__).resolve().parents[2]


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def recording_bin(tmp_path, monkeypatch):
    """sbatch/srun/scontrol stand-ins that append their argv and NEMOTRON_* environment to calls.jsonl."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    recorder = f"""#!{sys.executable}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open({str(calls)!r}, "a") as calls:
    environment = {{key: value for key, value in os.environ.items()
                   if key.startswith(("NEMOTRON_", "MASTER_", "LOCAL_WORLD", "CUDA_DEVICE"))}}
    calls.write(json.dumps({{"name": name, "argv": sys.argv[1:], "env": environment}}) + "\\n")
count = sum(1 for _ in open({str(calls)!r}))
if name == "sbatch":
    print(f"{{1000 + count}};testcluster")
elif name == "scontrol":
    print("node-a\\nnode-b")
"""
    for name in ("sbatch", "srun", "scontrol"):
        write_executable(bin_dir / name, recorder)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def recorded(name: str) -> list:
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [call for call in map(json.loads, lines) if call["name"] == name]

    return recorded


def test_multirun_is_the_product_of_the_sweeps():
    arms = expand_arms(["recipe=tiny", "arm=standard,latent", "optim.lr=range(1,4)"], multirun=True)
    expected = list(itertools.product(["standard", "latent"], ["1", "2", "3"]))
    assert [(arm.swept["arm"], arm.swept["optim.lr"]) for arm in arms] == expected
    for arm in arms:
        assert arm.overrides == ["recipe=tiny", f"arm={arm.swept['arm']}", f"optim.lr={arm.swept['optim.lr']}"]


def test_a_sweep_without_multirun_is_refused():
    with pytest.raises(ConfigError, match="needs -m/--multirun"):
        expand_arms(["recipe=tiny", "train.max_steps=10,20"], multirun=False)


def test_each_arm_is_one_sbatch_and_its_job_id_is_printed(recording_bin, tmp_path, capsys):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    write_executable(venv / "bin" / "python", "")
    main(["-m", "--cpu", "--venv", str(venv), "--runs-dir", str(tmp_path / "runs"), "--time=00:30:00",
          "recipe=tiny", "train.max_steps=10,20", "parallel.gpus_per_node=2"])
    printed = capsys.readouterr().out
    calls = recording_bin("sbatch")
    assert [call["argv"][-3:] for call in calls] == [
        ["recipe=tiny", f"train.max_steps={steps}", "parallel.gpus_per_node=2"] for steps in (10, 20)]
    for job_id, steps, call in zip(("1001", "1002"), (10, 20), calls):
        name = f"tiny.train.max_steps={steps}"
        assert f"submitted job {job_id}: {name}" in printed
        assert f"run dir {tmp_path / 'runs' / 'slurm' / name}-{job_id}" in printed
        options = call["argv"][:call["argv"].index(str(REPO / "launch" / "slurm" / "train.sbatch"))]
        assert options == ["--parsable", f"--job-name={name}", "--nodes=1", "--ntasks-per-node=2",
                           "--gpus-per-node=0", f"--output={tmp_path / 'runs' / 'slurm'}/%x-%j.out",
                           "--time=00:30:00"]
        assert call["env"]["NEMOTRON_VENV"] == str(venv) and call["env"]["NEMOTRON_CONTAINER_IMAGE"] == ""
        assert call["env"]["NEMOTRON_CODE_DIR"] == str(REPO)


def test_the_recipe_layout_sizes_the_job(recording_bin, capsys):
    main(["--dry-run", "--container-image=nvcr.io#nvidia/pytorch:26.08-py3", "--data-dir=/lustre/data",
          "recipe=nano_30b", "parallel.num_nodes=16"])
    printed = capsys.readouterr().out
    assert "--nodes=16 --ntasks-per-node=8 --gpus-per-node=8" in printed
    assert "NEMOTRON_CONTAINER_IMAGE='nvcr.io#nvidia/pytorch:26.08-py3'" in printed
    assert "NEMOTRON_DATA_DIR=/lustre/data" in printed
    assert recording_bin("sbatch") == []  # a dry run submits nothing


@pytest.mark.parametrize("overrides, message", [
    (["recipe=tiny", "train.no_such_key=1"], "Could not override 'train.no_such_key'"),
    (["recipe=nano_30b", "parallel.num_nodes=1", "parallel.gpus_per_node=2"], "world size"),
])
def test_a_bad_run_fails_before_anything_is_submitted(recording_bin, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        main(overrides)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert recording_bin("sbatch") == []


def slurm_job_environment(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "31337", "SLURM_JOB_NAME": "nano",
            "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "node-[a-b]",
            "HOME": str(tmp_path / "home"), "NEMOTRON_RUNS_DIR": str(tmp_path / "runs"), **extra}


def test_sbatch_script_runs_one_container_task_per_gpu(recording_bin, tmp_path):
    environment = slurm_job_environment(tmp_path, NEMOTRON_CONTAINER_IMAGE="/shared/image.sqsh",
                                        NEMOTRON_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(["bash", str(REPO / "launch" / "slurm" / "train.sbatch"), "recipe=nano_30b",
                    "train.max_steps=5"], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [srun] = recording_bin("srun")
    run_dir = tmp_path / "runs" / "slurm" / "nano-31337"
    cache = tmp_path / "home" / ".cache" / "nemotron_train"
    mounts = f"{REPO}:{REPO},{tmp_path / 'runs'}:{tmp_path / 'runs'},{cache}:{cache},{tmp_path / 'data'}:{tmp_path / 'data'}"
    assert srun["argv"] == [
        "--kill-on-bad-exit=1", "--container-image=/shared/image.sqsh", f"--container-mounts={mounts}",
        f"--container-workdir={REPO}", "--no-container-mount-home",
        str(REPO / "launch" / "slurm" / "srun_task.sh"), "python", "train.py", f"hydra.run.dir={run_dir}",
        "recipe=nano_30b", "train.max_steps=5", "parallel.num_nodes=2", "parallel.gpus_per_node=8"]
    assert srun["env"]["MASTER_ADDR"] == "node-a" and srun["env"]["MASTER_PORT"] == str(20000 + 31337 % 10000)
    assert srun["env"]["LOCAL_WORLD_SIZE"] == "8" and srun["env"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"


def test_sbatch_script_without_a_venv_says_how_to_make_one(tmp_path):
    environment = slurm_job_environment(tmp_path, NEMOTRON_VENV=str(tmp_path / "missing"))
    result = subprocess.run(["bash", str(REPO / "launch" / "slurm" / "train.sbatch"), "recipe=tiny"],
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 2
    assert f"launch/setup_venv.sh gpu {tmp_path / 'missing'}" in result.stderr


def test_each_task_gets_torch_distributed_ranks_from_slurm():
    environment = {**os.environ, "SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
                   "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "node-a", "MASTER_PORT": "21337"}
    result = subprocess.run([str(REPO / "launch" / "slurm" / "srun_task.sh"), "env"], env=environment,
                            capture_output=True, text=True, check=True)
    variables = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert {key: variables[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}


def test_data_prep_plans_here_then_submits_one_array_task_per_shard(recording_bin, tmp_path, capsys,
                                                                    tokenizer_json):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {index}"}) + "\n" for index in range(50)))
    prefix = tmp_path / "out" / "corpus"
    data_prep_arguments = ["--input", str(corpus), "--output-prefix", str(prefix),
                           "--tokenizer-type", "huggingface", "--tokenizer-path", tokenizer_json,
                           "--eod-token", "</s>"]
    main(["data-prep", "--num-shards", "4", "--cpus-per-task", "6", "--max-running", "2",
          "--venv", sys.prefix, "--logs-dir", str(tmp_path / "logs"), "--time=01:00:00", "--",
          *data_prep_arguments])
    plan = json.loads((tmp_path / "out" / "corpus.plan.json").read_text())
    assert plan["num_shards"] == 4 and plan["inputs"] == [str(corpus)]
    [call] = recording_bin("sbatch")
    script = str(REPO / "launch" / "slurm" / "data_prep.sbatch")
    assert call["argv"] == ["--parsable", "--job-name=data-prep", "--array=0-3%2", "--cpus-per-task=6",
                            f"--output={tmp_path / 'logs'}/%x-%A_%a.out", "--time=01:00:00", script,
                            *data_prep_arguments, "--num-shards", "4"]
    assert call["env"]["NEMOTRON_VENV"] == sys.prefix and call["env"]["NEMOTRON_CODE_DIR"] == str(REPO)
    printed = capsys.readouterr().out
    assert "submitted array job 1001: data-prep, 4 shards, 2 at a time, 6 CPUs each" in printed
    assert f"python -m data_prep merge --output-prefix {prefix}" in printed


@pytest.mark.parametrize("data_prep_arguments, message", [
    (["--input", "/no/such/corpus.jsonl", "--output-prefix", "/tmp/never"], "no such file or directory"),
    (["--input", "x.jsonl", "--output-prefix", "/tmp/never", "--workers", "4"], "the launcher sets"),
    ([], "give python -m data_prep's arguments after `--`"),
])
def test_data_prep_with_bad_arguments_submits_nothing(recording_bin, capsys, data_prep_arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["data-prep", "--num-shards", "2", "--", *data_prep_arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert recording_bin("sbatch") == []


def array_task_environment(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_ARRAY_JOB_ID": "777", "SLURM_JOB_ID": "780",
            "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_CPUS_PER_TASK": "4",
            "HOME": str(tmp_path / "home"), **extra}


@pytest.mark.parametrize("arguments, appended", [
    (["--input", "/raw", "--output-prefix", "/data/web"], ["--num-shards", "8", "--workers", "4"]),
    # A rerun of some shards keeps the full shard count (array 3,17 of 64) and its own workers.
    (["--input", "/raw", "--num-shards=64", "--workers", "2"], []),
])
def test_data_prep_sbatch_runs_its_shard_in_the_container(recording_bin, tmp_path, arguments, appended):
    environment = array_task_environment(tmp_path, NEMOTRON_CONTAINER_IMAGE="/shared/image.sqsh",
                                         NEMOTRON_DATA_DIR="/lustre/data")
    result = subprocess.run(["bash", str(REPO / "launch" / "slurm" / "data_prep.sbatch"), *arguments],
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [srun] = recording_bin("srun")
    cache = tmp_path / "home" / ".cache" / "nemotron_train"
    assert srun["argv"] == [
        "--container-image=/shared/image.sqsh",
        f"--container-mounts={REPO}:{REPO},{cache}:{cache},/lustre/data:/lustre/data",
        f"--container-workdir={REPO}", "--no-container-mount-home",
        "python", "-m", "data_prep", *arguments, "--shard-index", "3", *appended]


def test_data_prep_sbatch_outside_an_array_says_how_to_submit(tmp_path):
    environment = {key: value for key, value in array_task_environment(tmp_path).items()
                   if key != "SLURM_ARRAY_TASK_ID"}
    result = subprocess.run(["bash", str(REPO / "launch" / "slurm" / "data_prep.sbatch"), "--input", "x"],
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 2 and "submit as a job array" in result.stderr
