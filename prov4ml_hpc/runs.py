"""Where a run lives: RUN_ROOT/EXPERIMENT/RUN_ID, the same on every rank without any rank listing directories.

The run id comes, in order, from the caller, PROV4ML_HPC_RUN_ID, the SLURM job (``<job>`` or
``<arrayjob>_<task>``), torchrun's TORCHELASTIC_RUN_ID, or is agreed over torch.distributed / torchrun's store or MPI (rank 0 draws it, a broadcast
tells the others); a single process draws its own.  The attempt number is SLURM_RESTART_COUNT (or
PROV4ML_HPC_ATTEMPT): a requeued job continues the same run and writes new rank files beside the old ones.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from . import schema
from .environment import Identity, slurm_run_id
from .errors import ConfigError

RUN_DIR_ENV = "PROV4ML_HPC_RUN_DIR"
EXPERIMENT_ENV = "PROV4ML_HPC_EXPERIMENT"
RUN_ID_ENV = "PROV4ML_HPC_RUN_ID"
ATTEMPT_ENV = "PROV4ML_HPC_ATTEMPT"
DEFAULT_RUN_ROOT = "prov4ml_runs"
DEFAULT_EXPERIMENT = "experiment"

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")


@dataclass(frozen=True)
class RunLocation:
    root: str  # absolute RUN_ROOT
    experiment: str
    run_id: str
    attempt: int
    id_source: str  # explicit, env, slurm, torchrun, mpi, local

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, self.experiment, self.run_id)

    def rank_file(self, global_rank: int) -> str:
        return os.path.join(self.run_dir, schema.RANKS_DIR, schema.rank_file_name(global_rank, self.attempt))


def check_component(value: str, what: str) -> str:
    """A directory name from the user: one safe path component, else ConfigError."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{what} {value!r} cannot be used as a directory name: use 1-200 characters from letters, digits "
            "and _ . + -, starting with a letter or digit (no '/', no '..')")
    return value


def new_local_id(now: float | None = None) -> str:
    """A fresh id: UTC time plus 32 random bits, e.g. ``20261126-231502-3fa9c1d2``."""
    t = _dt.datetime.now(_dt.UTC) if now is None else _dt.datetime.fromtimestamp(now, _dt.UTC)
    return f"{t:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def _agree_over_mpi(identity: Identity) -> str:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(
            f"this process is rank {identity.global_rank} of {identity.world_size} (from {identity.source}) "
            "but the ranks cannot agree on a run id: install mpi4py (pip install \"prov4ml-hpc[mpi]\") or "
            f"give every rank the same id, e.g. `export {RUN_ID_ENV}=$(date +%Y%m%d-%H%M%S)` before mpiexec"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != identity.world_size:
        raise ConfigError(
            f"MPI says the world has {comm.Get_size()} processes but the launcher environment says "
            f"{identity.world_size} (from {identity.source}); set {RUN_ID_ENV} to the same value on every rank")
    run_id = new_local_id() if comm.Get_rank() == 0 else None
    return comm.bcast(run_id, root=0)


def _agree_over_torch(identity: Identity, env: Mapping[str, str]) -> str | None:
    """Under torchrun without a rendezvous id (or torch.distributed already initialised): rank 0's id."""
    if identity.source != "torchrun":
        return None
    from .integrations.torch_dist import agree_run_id_torch

    return agree_run_id_torch(identity.world_size, env)


def resolve_location(
    identity: Identity,
    run_root: str | None = None,
    experiment: str | None = None,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunLocation:
    """Decide RUN_ROOT/EXPERIMENT/RUN_ID and the attempt for this rank (may broadcast over MPI)."""
    env = os.environ if environ is None else environ
    root = os.path.abspath(run_root or env.get(RUN_DIR_ENV) or DEFAULT_RUN_ROOT)
    exp = check_component(experiment or env.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT, "experiment name")
    if run_id is not None:
        rid, source = check_component(str(run_id), "run id"), "explicit"
    elif env.get(RUN_ID_ENV):
        rid, source = check_component(env[RUN_ID_ENV], f"run id from {RUN_ID_ENV}"), "env"
    elif (sid := slurm_run_id(identity)) is not None:
        rid, source = check_component(f"slurm-{sid}", "SLURM run id"), "slurm"
    elif identity.torchelastic_run_id:
        rid, source = check_component(f"torchrun-{identity.torchelastic_run_id}", "torchrun run id"), "torchrun"
    elif identity.world_size > 1 and (tid := _agree_over_torch(identity, env)) is not None:
        rid, source = check_component(tid, "torch.distributed run id"), "torch"
    elif identity.world_size > 1:
        rid, source = _agree_over_mpi(identity), "mpi"
    else:
        rid, source = new_local_id(), "local"
    attempt_raw = env.get(ATTEMPT_ENV)
    if not attempt_raw and identity.source == "torchrun":  # restarted torchrun workers keep their run id
        attempt_raw = env.get("TORCHELASTIC_RESTART_COUNT")
    try:
        attempt = int(attempt_raw) if attempt_raw else identity.restart_count
    except ValueError:
        raise ConfigError(f"{ATTEMPT_ENV}={attempt_raw!r} is not an integer") from None
    if attempt < 0:
        raise ConfigError(f"attempt must be >= 0, got {attempt}")
    return RunLocation(root=root, experiment=exp, run_id=rid, attempt=attempt, id_source=source)
