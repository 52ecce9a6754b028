"""The Slurm tests' own fixture: a real one-node Slurm cluster (tests/helpers/slurm_cluster.py) for the session."""

import pytest


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munged + slurmctld + slurmd on this machine with a private config (SLURM_CONF in `slurm.env`), up for the
    whole session; skipped where Slurm/munge are not installed or we are not root."""
    from tests.helpers.slurm_cluster import SlurmCluster, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
