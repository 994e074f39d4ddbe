"""Run-id agreement: every rank of a job picks the same fresh id, over MPI or through PyTorch distributed.

MPI: rank 0 draws the id and broadcasts it (mpi4py).  PyTorch, for ranks that have no MPI and no usable
torchrun run id:

Under ``torchrun`` without ``--standalone`` or ``--rdzv-id`` the run id is ``"none"`` and there may be no MPI at
all.  Two ways remain to make every rank pick the same id, tried in this order:

1. the default process group is initialised (the script called ``init_process_group`` first): rank 0 draws
   the id and ``broadcast_object_list`` hands it to the others (a collective: every rank must call);
2. torchrun's agent store (``TORCHELASTIC_USE_AGENT_STORE=True``, MASTER_ADDR/MASTER_PORT): every rank proposes
   an id with ``compare_set`` on one key; the first proposal wins and every rank reads it back.  No process
   group is needed, so this works before the script initialises torch.distributed.

torch is imported only when it is already imported or when torchrun variables are present.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import sys
from collections.abc import Mapping

from .. import settings
from ..errors import ConfigError
from ..log import logger
from .environment import Identity

STORE_KEY = "prov4ml_hpc/run_id"
STORE_TIMEOUT = 60.0  # seconds to reach torchrun's agent store


def _from_process_group(world_size: int | None) -> str | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        size = dist.get_world_size()
        if world_size is not None and size != world_size:
            logger.warning(
                "torch.distributed has %d processes but the launcher says %d: not agreeing on a "
                "run id through it",
                size,
                world_size,
            )
            return None
        box = [new_local_id() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])
    except Exception as exc:  # noqa: BLE001 - fall back to the next method, say why
        logger.warning("run id agreement over torch.distributed failed: %s: %s", type(exc).__name__, exc)
        return None


def _from_agent_store(env: Mapping[str, str]) -> str | None:
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    host, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not host or not port or not port.isdigit():
        return None
    try:
        from torch.distributed import TCPStore

        store = TCPStore(host, int(port), is_master=False, timeout=_dt.timedelta(seconds=STORE_TIMEOUT))
        # one key per torchrun restart: a restarted worker group agrees on a fresh id
        key = f"{STORE_KEY}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        won = store.compare_set(key, "", new_local_id())
        return won.decode() if isinstance(won, bytes) else str(won)
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "run id agreement through torchrun's store at %s:%s failed: %s: %s",
            host,
            port,
            type(exc).__name__,
            exc,
        )
        return None


def agree_run_id_torch(world_size: int | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Agree on one run id among the ranks of a torch job, or return None when torch offers no way to.

    Args:
        world_size: the world size the launcher reported (a process group of another size is not used).
        environ: environment to read instead of os.environ.

    Returns:
        The same fresh id (``YYYYmmdd-HHMMSS-xxxxxxxx``) on every rank, or None.
    """
    env = os.environ if environ is None else environ
    rid = _from_process_group(world_size)
    if rid is not None:
        return rid
    if "TORCHELASTIC_RUN_ID" not in env and "torch" not in sys.modules:
        return None
    return _from_agent_store(env)


def new_local_id(now: float | None = None) -> str:
    """A fresh id: UTC time plus 32 random bits, e.g. ``20261126-231502-3fa9c1d2``."""
    t = _dt.datetime.now(_dt.UTC) if now is None else _dt.datetime.fromtimestamp(now, _dt.UTC)
    return f"{t:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def agree_over_mpi(identity: Identity) -> str:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(
            f"this process is rank {identity.global_rank} of {identity.world_size} (from {identity.source}) "
            'but the ranks cannot agree on a run id: install mpi4py (pip install "prov4ml-hpc[mpi]") or '
            f"give every rank the same id, e.g. `export {settings.RUN_ID}=$(date +%Y%m%d-%H%M%S)` before mpiexec"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != identity.world_size:
        raise ConfigError(
            f"MPI says the world has {comm.Get_size()} processes but the launcher environment says "
            f"{identity.world_size} (from {identity.source}); set {settings.RUN_ID} to the same value on every rank"
        )
    run_id = new_local_id() if comm.Get_rank() == 0 else None
    return comm.bcast(run_id, root=0)


def agree_over_torch(identity: Identity, env: Mapping[str, str]) -> str | None:
    """Under torchrun without a rendezvous id (or torch.distributed already initialised): rank 0's id."""
    if identity.source != "torchrun":
        return None
    return agree_run_id_torch(identity.world_size, env)
