#!/usr/bin/env bash
# One training process per Slurm task: torch.distributed's variables from Slurm's, then the command.
#   srun launch/slurm/srun_task.sh python train.py recipe=...
# train.sbatch exports MASTER_ADDR, MASTER_PORT and LOCAL_WORLD_SIZE for the whole job.
#
# USR2 to the task (`scancel --signal=USR2 <job>`) becomes SIGTERM to the command alone, which
# saves a checkpoint and exits. Slurm signals every process of a step, and a SIGTERM sent that
# way would also kill the command's helper processes (checkpoint writers) in the middle of the save.
set -euo pipefail

export RANK="$SLURM_PROCID"
export WORLD_SIZE="$SLURM_NTASKS"
export LOCAL_RANK="$SLURM_LOCALID"
export LOCAL_WORLD_SIZE="${LOCAL_WORLD_SIZE:-${SLURM_NTASKS_PER_NODE:-1}}"
: "${MASTER_ADDR:?set by train.sbatch}" "${MASTER_PORT:?set by train.sbatch}"

# The command and its children ignore USR2: an ignored signal stays ignored across fork and exec.
(trap '' USR2 && exec "$@") &
command_pid=$!
# shellcheck disable=SC2317  # reached through the trap below
forward_stop() { kill -TERM "$command_pid" 2>/dev/null || true; }
trap forward_stop USR2

status=0
wait "$command_pid" || status=$?
# A trapped signal interrupts `wait` (status > 128) while the command keeps running: wait again.
while ((status > 128)) && kill -0 "$command_pid" 2>/dev/null; do
  status=0
  wait "$command_pid" || status=$?
done
exit "$status"
