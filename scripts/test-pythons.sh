#!/usr/bin/env bash
# Run the unit and MPI tiers on the other supported Pythons, each in a fresh venv (CI runs this after
# scripts/test.sh, which runs every tier on the default python3).
#   bash scripts/test-pythons.sh                   # 3.12 and 3.13
#   bash scripts/test-pythons.sh 3.13 -x           # versions first, then any pytest arguments
# An interpreter is looked for as pythonX.Y on PATH, then under $PYENV_ROOT/versions (default ~/.pyenv); a
# version that is not there is skipped, saying so. Each venv gets the `test` extra only: the ML integration
# tests (torch, lightning) skip themselves with their reason, because the only CPU torch wheel on this kind of
# machine is for the default Python and PyPI's would be a multi-GB CUDA build. The SLURM and GPU tiers and the
# random-SIGKILL test run once, under scripts/test.sh. Measured on a busy 2-core VM: 3.12 about 3.5 min to make
# the venv and install, 4.5 min of tests; 3.13 3 + 7 min.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=()
while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+\.[0-9]+$ ]]; do
    versions+=("$1")
    shift
done
[ ${#versions[@]} -gt 0 ] || versions=(3.12 3.13)

find_python() {  # the newest pythonX.Y there is, or nothing
    local v=$1 exe candidate
    exe=$(command -v "python$v" 2>/dev/null || true)
    if [ -n "$exe" ] && "$exe" -c "pass" >/dev/null 2>&1; then  # pyenv shims exist for versions not installed
        echo "$exe"
        return
    fi
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
        if "$candidate" -c "pass" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
}

failed=()
work=$(mktemp -d -t prov4ml-pythons.XXXXXX)
trap 'rm -rf "$work"' EXIT
for v in "${versions[@]}"; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        echo "== python $v: not found (no python$v on PATH, none under ${PYENV_ROOT:-$HOME/.pyenv}/versions): skipped" >&2
        continue
    fi
    start=$(date +%s)
    echo "== python $v ($py): fresh venv, unit and MPI tiers" >&2
    venv="$work/venv-$v"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2> >(grep -v "^WARNING: Location" >&2)
    # the venv's bin first: its mpiexec (the mpich wheel) and prov4ml-hpc are what the tests start
    # the random-SIGKILL test (about 1 min) checks HDF5's crash behaviour, the same on every Python: once is enough
    if PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -m "not slurm and not gpu" -p no:cacheprovider \
        --deselect tests/test_crash.py::test_random_sigkill_keeps_every_flushed_row "$@"; then
        echo "== python $v: passed in $(( $(date +%s) - start )) s" >&2
    else
        echo "== python $v: FAILED after $(( $(date +%s) - start )) s" >&2
        failed+=("$v")
    fi
    rm -rf "$venv"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "== tests failed on python ${failed[*]}" >&2
    exit 1
fi
