"""Shared fixtures: a clean launcher environment per test, a run root in tmp, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import prov4ml_hpc as p4

LAUNCHER_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "MPI_LOCALRANKID", "TORCHELASTIC_", "PROV4ML_HPC_")
LAUNCHER_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURMD_NODENAME")

try:  # the real-SLURM tier's fixture (tests/slurm_fixtures.py)
    from slurm_fixtures import multinode_cluster, slurm_cluster  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without launcher variables (tests may themselves run under SLURM or mpiexec)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES) and k not in LAUNCHER_NAMES
    }
    env["PROV4ML_HPC_SYSTEM_METRICS"] = "0"
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _isolated_launcher_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(LAUNCHER_PREFIXES) or key in LAUNCHER_NAMES:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROV4ML_HPC_SYSTEM_METRICS", "0")
    yield
    if p4.active_run() is not None:  # never leak a run into the next test
        p4.end_run()


@pytest.fixture
def run_root(tmp_path):
    return str(tmp_path / "runs")


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120, cwd=None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter (clean launcher environment unless env is given)."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snippet failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        )
    return proc


def mpiexec_path() -> str | None:
    from prov4ml_hpc.cli import find_mpiexec

    return find_mpiexec()


def run_mpi(
    n: int, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `mpiexec -n N python ARGS` with a hard timeout (MPIEXEC_TIMEOUT and a subprocess timeout)."""
    mpiexec = mpiexec_path()
    if mpiexec is None:
        pytest.skip("mpiexec not installed (pip install mpich)")
    env = dict(env or clean_env())
    env.setdefault("MPIEXEC_TIMEOUT", str(int(timeout)))
    proc = subprocess.run(
        [mpiexec, "-n", str(n), sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mpiexec failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        )
    return proc
