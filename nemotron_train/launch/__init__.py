"""Submit work to Slurm: `python -m nemotron_train.launch [options] [-m] key=value ...` for
training runs, `python -m nemotron_train.launch data-prep [options] -- <data_prep arguments>`
for a corpus preparation as a job array.

Each job is one `sbatch` of a script in `launch/slurm/` (`train.sbatch`, `data_prep.sbatch`),
so a job submitted here and one submitted by hand behave the same (containers, rendezvous,
requeue with resume).
"""
