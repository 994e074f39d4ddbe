#!/usr/bin/env bash
# Install everything the test tiers need on a fresh machine, then run them.
#   bash scripts/test.sh              # all tiers (unit, mpi, slurm; gpu is skipped without a GPU)
#   bash scripts/test.sh -m "not slurm" -x    # any pytest arguments
# Python packages come from PyPI (the `test` extra, requirements-ml.txt); Debian packages (slurm-wlm, munge,
# slurmdbd, mariadb-server, iproute2, graphviz, chromium) are installed with apt when running as root and
# missing (apt starts no daemon on CI images). Daemons, namespaces and the bridge are made by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== python packages" >&2
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
if [ -f requirements-ml.txt ]; then
    # torch first, alone: `pip install torch==2.13.0` takes the CPU wheel that lies on this kind of machine;
    # resolving it together with lightning could pull a multi-GB CUDA build
    "$PY" -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements-ml.txt)"
    "$PY" -m pip install -q --disable-pip-version-check -r requirements-ml.txt
fi

echo "== debian packages" >&2
need=()
have() { command -v "$1" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }
have slurmctld || need+=(slurmctld slurmd slurm-client munge)
# the multi-node SLURM tier: network namespaces + a bridge (iproute2, util-linux), accounting (slurmdbd, MariaDB)
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
have slurmdbd || need+=(slurmdbd)
have mariadbd || need+=(mariadb-server)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || echo "apt-get update reported errors; installing from the lists there are" >&2
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "not root or no apt-get: missing ${need[*]}; the tests that need them will be skipped" >&2
    fi
fi

echo "== tests" >&2
export PROV4ML_HPC_REQUIRE_SLURM=${PROV4ML_HPC_REQUIRE_SLURM:-$([ "$(id -u)" = 0 ] && echo 1 || echo "")}
exec "$PY" -m pytest "$@"
