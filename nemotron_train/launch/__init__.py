"""Submit training runs to Slurm: `python -m nemotron_train.launch [options] [-m] key=value ...`.

Each job is one `sbatch` of `launch/slurm/train.sbatch`, so a job submitted here and one
submitted by hand behave the same (containers, rendezvous, requeue with resume).
"""
