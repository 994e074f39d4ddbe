"""The session-scoped cluster fixtures of the `slurm` test tier (import them from tests/conftest.py):
`slurm_cluster` (one node, tests/slurmcluster.py) and `multinode_cluster` (3 nodes in network namespaces with
slurmdbd accounting, tests/slurm_multinode.py; marker `multinode`).

Skips with a clear reason when binaries are absent, this is not root or network namespaces cannot be made,
unless PROV4ML_HPC_REQUIRE_SLURM is set (CI): then those are failures (for the multi-node cluster
PROV4ML_HPC_REQUIRE_MULTINODE decides when set, e.g. =0 on a CI runner without network namespaces).
scripts/test.sh installs the packages.
While `slurm_cluster` is active, SLURM_CONF in os.environ points at that cluster (tests strip SLURM_* anyway:
pass `cluster.env`); every cluster is stopped at the end of the session, also after a failure (set
PROV4ML_HPC_SLURM_KEEP=1 to leave them running for debugging; the next start cleans them up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from slurm_multinode import MultiNodeCluster
from slurm_netns import namespaces_unavailable
from slurmcluster import SlurmCluster, missing_binaries


def _unavailable(reason: str, variable: str = "PROV4ML_HPC_REQUIRE_SLURM") -> None:
    if os.environ.get(variable, "0") not in ("", "0"):
        pytest.fail(f"{variable} is set but {reason}", pytrace=False)
    pytest.skip(reason)


def _multinode_unavailable(reason: str) -> None:
    """PROV4ML_HPC_REQUIRE_MULTINODE (default: PROV4ML_HPC_REQUIRE_SLURM) makes these failures; =0 skips."""
    if "PROV4ML_HPC_REQUIRE_MULTINODE" not in os.environ:
        _unavailable(reason)
    _unavailable(reason, "PROV4ML_HPC_REQUIRE_MULTINODE")


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


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[MultiNodeCluster]:
    """A running 3-node SLURM cluster with accounting (slurmctld, slurmdbd + MariaDB, 3 namespaced slurmd)."""
    if os.geteuid() != 0:
        _multinode_unavailable(
            "the multi-node SLURM cluster needs root (daemons, network namespaces, a bridge)"
        )
    cluster = MultiNodeCluster()
    missing = cluster.missing_binaries()
    if missing:
        _multinode_unavailable(
            f"binaries missing ({', '.join(missing)}); install them with scripts/test.sh as root"
        )
    why = namespaces_unavailable()
    if why:
        _multinode_unavailable(why)
    try:
        cluster.start(timeout=60)
        yield cluster
    finally:
        if not os.environ.get("PROV4ML_HPC_SLURM_KEEP"):
            cluster.stop()
