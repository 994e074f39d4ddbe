#!/usr/bin/env bash
# Install SLURM (Debian's slurm-wlm 22.05 + munge) for the `slurm` test tier, and for its multi-node part
# (tests/slurm_multinode.py) slurmdbd + MariaDB (real accounting) and iproute2 (network namespaces, a bridge).
# The test fixture (tests/slurmcluster.py) configures and starts the daemons itself, as root, in a private
# folder: this script only installs packages. apt starts no daemons on CI images; nothing here starts one.
# Usage (root or sudo):  .ci/install-slurm.sh      then run:  PROV4ML_HPC_REQUIRE_SLURM=1 pytest -m slurm
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 util-linux)

missing=0
for bin in slurmctld slurmd sbatch srun scontrol squeue sinfo sacct munged mungekey slurmdbd sacctmgr mariadbd ip nsenter; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
    echo "install-slurm: SLURM and munge binaries already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when the install cannot find the packages without it.
if ! $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi

# The fixture picks free ports and its own munge socket, so daemons a package may have started do not clash.
slurmctld -V
echo "install-slurm: done"
