"""The real one-node Slurm the slow launch tests submit to."""

import pytest

from slurm_cluster import LocalSlurmCluster, ensure_debian_packages


@pytest.fixture(scope="module")
def slurm_cluster():
    """munged + slurmctld + slurmd on loopback, installed if missing; stopped even on failure."""
    ensure_debian_packages({"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-wlm",
                            "munged": "munge"})
    cluster = LocalSlurmCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
