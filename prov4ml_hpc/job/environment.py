"""Who this process is: job id, global/local rank, world size and node, from MPI, torchrun, SLURM or nothing.

All reading of launcher environment variables happens here, driven by the tables below, so that the rest of
the package asks one frozen :class:`Identity`.  Functions take an ``environ`` mapping so they are pure and
testable; the defaults read ``os.environ``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

# Rank sources in priority order: (name, rank var, size var, local-rank vars).  Under `mpiexec` inside a SLURM
# allocation every process sees SLURM_PROCID=0, so every MPI launcher variable wins over SLURM's.
RANK_SOURCES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("openmpi", "OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_SIZE",), ("OMPI_COMM_WORLD_LOCAL_RANK",)),
    (
        "pmix",
        "PMIX_RANK",
        ("PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"),
    ),
    ("pmi", "PMI_RANK", ("PMI_SIZE",), ("MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID")),
    ("torchrun", "RANK", ("WORLD_SIZE",), ("LOCAL_RANK",)),
    ("slurm", "SLURM_PROCID", ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), ("SLURM_LOCALID",)),
)

# SLURM job facts snapshotted into every rank file: attribute name <- variable.
SLURM_VARS: tuple[tuple[str, str], ...] = (
    ("job_id", "SLURM_JOB_ID"),
    ("job_name", "SLURM_JOB_NAME"),
    ("array_job_id", "SLURM_ARRAY_JOB_ID"),
    ("array_task_id", "SLURM_ARRAY_TASK_ID"),
    ("restart_count", "SLURM_RESTART_COUNT"),
    ("step_id", "SLURM_STEP_ID"),
    ("nnodes", "SLURM_JOB_NUM_NODES"),
    ("nodelist", "SLURM_JOB_NODELIST"),
    ("ntasks", "SLURM_NTASKS"),
    ("cpus_per_task", "SLURM_CPUS_PER_TASK"),
    ("gpus", "SLURM_GPUS"),
    ("gpus_on_node", "SLURM_GPUS_ON_NODE"),
    ("partition", "SLURM_JOB_PARTITION"),
    ("account", "SLURM_JOB_ACCOUNT"),
    ("qos", "SLURM_JOB_QOS"),
    ("user", "SLURM_JOB_USER"),
    ("submit_dir", "SLURM_SUBMIT_DIR"),
    ("submit_host", "SLURM_SUBMIT_HOST"),
    ("cluster", "SLURM_CLUSTER_NAME"),
)

# Environment variables kept in the rank snapshot (prefixes), and name parts that mark a secret.
ENV_PREFIXES = (
    "SLURM_",
    "SBATCH_",
    "SRUN_",
    "CUDA_",
    "NCCL_",
    "OMP_",
    "PMI_",
    "PMIX_RANK",
    "OMPI_COMM_WORLD_",
    "MPI_LOCALRANKID",
    "TORCHELASTIC_",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "HOSTNAME",
    "PROV4ML_HPC_",
)
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


@dataclass(frozen=True)
class Identity:
    """Who this process is within its job."""

    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node: str = field(default_factory=lambda: short_hostname())
    source: str = "single"  # which table row answered: openmpi, pmix, pmi, torchrun, slurm, mpi4py, single
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    restart_count: int = 0
    step_id: str | None = None
    job_name: str | None = None
    torchelastic_run_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def _int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; unset it or fix its value"
        ) from None


def _first_int(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = _int(environ, name)
        if value is not None:
            return value
    return None


def _in_slurm_step(environ: Mapping[str, str]) -> bool:
    """True inside an `srun` step (not in the batch script itself, where SLURM_PROCID is 0 for helpers too)."""
    step = environ.get("SLURM_STEP_ID")
    return step is not None and step not in ("batch", "extern", "4294967294", "4294967291")


def ranks_from_env(environ: Mapping[str, str]) -> tuple[str, int, int, int] | None:
    """Return (source, global_rank, world_size, local_rank) from launcher variables, or None for a plain process."""
    for source, rank_var, size_vars, local_vars in RANK_SOURCES:
        rank = _int(environ, rank_var)
        if rank is None:
            continue
        if source == "slurm" and not _in_slurm_step(environ):
            continue
        if source == "torchrun" and _int(environ, "WORLD_SIZE") is None:
            continue
        size = _first_int(environ, size_vars)
        if size is None:
            size = rank + 1
        local = _first_int(environ, local_vars)
        if local is None:
            local = rank if source in ("pmi", "pmix") and _int(environ, "SLURM_NNODES") in (None, 1) else 0
        if not 0 <= rank < size:
            raise ConfigError(
                f"{rank_var}={rank} is outside the world size {size} read from {size_vars}; "
                "the launcher environment is inconsistent"
            )
        return source, rank, size, local
    return None


def _mpi4py_ranks() -> tuple[int, int] | None:
    """Rank and size from mpi4py, only when the user's code already initialised MPI (never initialise it here)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None:
        return None
    try:
        if not mod.Is_initialized() or mod.Is_finalized():
            return None
        comm = mod.COMM_WORLD
        return comm.Get_rank(), comm.Get_size()
    except Exception:  # noqa: BLE001 - a broken MPI must not stop identity detection
        return None


def detect_identity(environ: Mapping[str, str] | None = None, *, use_mpi4py: bool = True) -> Identity:
    """Work out this process's identity (see the module docstring for the order of sources)."""
    env = os.environ if environ is None else environ
    found = ranks_from_env(env)
    if found is not None:
        source, rank, size, local = found
    else:
        source, rank, size, local = "single", 0, 1, 0
        if use_mpi4py:
            mp = _mpi4py_ranks()
            if mp is not None and mp[1] > 1:
                source, (rank, size) = "mpi4py", mp
    node = env.get("SLURMD_NODENAME") or short_hostname()
    torch_run_id = env.get("TORCHELASTIC_RUN_ID")
    return Identity(
        global_rank=rank,
        local_rank=local,
        world_size=size,
        node=node,
        source=source,
        job_id=env.get("SLURM_JOB_ID") or None,
        array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
        array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
        restart_count=_int(env, "SLURM_RESTART_COUNT") or 0,
        step_id=env.get("SLURM_STEP_ID") or None,
        job_name=env.get("SLURM_JOB_NAME") or None,
        torchelastic_run_id=torch_run_id if torch_run_id and torch_run_id != "none" else None,
    )


def slurm_snapshot(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SLURM job facts of SLURM_VARS present in the environment (attribute name -> raw string)."""
    env = os.environ if environ is None else environ
    return {attr: env[var] for attr, var in SLURM_VARS if env.get(var) not in (None, "")}


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def environment_snapshot(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Relevant environment variables (SLURM_*, CUDA_*, NCCL_*, OMP_*, launcher ranks), never secrets."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES) and not is_secret_name(k)}


def slurm_run_id(identity: Identity) -> str | None:
    """The run id every rank of a SLURM job derives alone: ``<job>`` or ``<arrayjob>_<task>`` (+ ``.<step>``)."""
    if identity.array_job_id and identity.array_task_id:
        base = f"{identity.array_job_id}_{identity.array_task_id}"
    elif identity.job_id:
        base = identity.job_id
    else:
        return None
    step = identity.step_id
    if step and step.isdigit() and int(step) > 0 and int(step) < 4294967290:
        base = f"{base}.{step}"
    return base
