"""The session-scoped `slurm_cluster` fixture of the `slurm` test tier (import it from tests/conftest.py).

Skips with a clear reason when the SLURM/munge binaries are absent or this is not root, unless
PROV4ML_HPC_REQUIRE_SLURM is set (CI): then those are failures. Install with `.ci/install-slurm.sh`.
While the fixture is active, SLURM_CONF in os.environ points at the test cluster; the cluster is always
stopped at the end of the session (set PROV4ML_HPC_SLURM_KEEP=1 to leave it running for debugging).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from slurmcluster import SlurmCluster, missing_binaries


def _unavailable(reason: str) -> None:
    if os.environ.get("PROV4ML_HPC_REQUIRE_SLURM"):
        pytest.fail(f"PROV4ML_HPC_REQUIRE_SLURM is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster (slurmctld + slurmd + munged) for the whole test session."""
    missing = missing_binaries()
    if missing:
        _unavailable(f"SLURM binaries missing ({', '.join(missing)}); install them with .ci/install-slurm.sh")
    if os.geteuid() != 0:
        _unavailable("the test SLURM cluster runs its daemons as root; run the slurm tier as root")
    cluster = SlurmCluster()
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start()
            patch.setenv("SLURM_CONF", str(cluster.conf))
            yield cluster
        finally:
            if not os.environ.get("PROV4ML_HPC_SLURM_KEEP"):
                cluster.stop()
