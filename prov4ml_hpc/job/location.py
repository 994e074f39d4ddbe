"""Where a run lives: RUN_ROOT/EXPERIMENT/RUN_ID, the same on every rank without any rank listing directories.

The run id comes, in order, from the caller, PROV4ML_HPC_RUN_ID, the SLURM job (``<job>`` or
``<arrayjob>_<task>``), torchrun's TORCHELASTIC_RUN_ID, or is agreed over torch.distributed / torchrun's store or MPI (rank 0 draws it, a broadcast
tells the others); a single process draws its own.  The attempt number is SLURM_RESTART_COUNT (or
PROV4ML_HPC_ATTEMPT): a requeued job continues the same run and writes new rank files beside the old ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .. import schema, settings
from ..errors import ConfigError
from .agreement import agree_over_mpi, agree_over_torch, new_local_id
from .environment import Identity, slurm_run_id

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
            "and _ . + -, starting with a letter or digit (no '/', no '..')"
        )
    return value


def resolve_location(
    identity: Identity,
    run_root: str | None = None,
    experiment: str | None = None,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunLocation:
    """Decide RUN_ROOT/EXPERIMENT/RUN_ID and the attempt for this rank (may broadcast over MPI)."""
    env = os.environ if environ is None else environ
    root = os.path.abspath(run_root or settings.get(settings.RUN_DIR, env))
    exp = check_component(experiment or settings.get(settings.EXPERIMENT, env), "experiment name")
    if run_id is not None:
        rid, source = check_component(str(run_id), "run id"), "explicit"
    elif (env_id := settings.get(settings.RUN_ID, env)) is not None:
        rid, source = check_component(env_id, f"run id from {settings.RUN_ID}"), "env"
    elif (sid := slurm_run_id(identity)) is not None:
        rid, source = check_component(f"slurm-{sid}", "SLURM run id"), "slurm"
    elif identity.torchelastic_run_id:
        rid, source = (
            check_component(f"torchrun-{identity.torchelastic_run_id}", "torchrun run id"),
            "torchrun",
        )
    elif identity.world_size > 1 and (tid := agree_over_torch(identity, env)) is not None:
        rid, source = check_component(tid, "torch.distributed run id"), "torch"
    elif identity.world_size > 1:
        rid, source = agree_over_mpi(identity), "mpi"
    else:
        rid, source = new_local_id(), "local"
    attempt = settings.get(settings.ATTEMPT, env)
    if attempt is None and identity.source == "torchrun":  # restarted torchrun workers keep their run id
        attempt = _restart_count(env, "TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        attempt = identity.restart_count
    if attempt < 0:
        raise ConfigError(f"attempt must be >= 0, got {attempt}")
    return RunLocation(root=root, experiment=exp, run_id=rid, attempt=attempt, id_source=source)


def _restart_count(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; unset it or fix its value") from None
