"""MPI as the user's code left it: is it initialised, and the abort of the world after an uncaught exception.

Nothing here imports mpi4py or initialises MPI: it only looks at ``sys.modules`` (a run never initialises MPI at
its end: MPI_Init is collective and would wait for a rank that is gone).
"""

from __future__ import annotations

import sys

abort_on_exception = True  # PROV4ML_HPC_MPI_ABORT, set from the run's options at start_run


def mpi_initialized() -> bool:
    """True when the user's code imported mpi4py and MPI is initialised and not finalised (never imports it)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None:
        return False
    try:
        return bool(mod.Is_initialized() and not mod.Is_finalized())
    except Exception:  # noqa: BLE001
        return False


def should_abort() -> bool:
    """True when an uncaught exception must abort MPI_COMM_WORLD: MPI is initialised (by the code: we never
    initialise it here), it has more than one process, and PROV4ML_HPC_MPI_ABORT is on (the default)."""
    if not abort_on_exception or not mpi_initialized():
        return False
    try:
        return sys.modules["mpi4py.MPI"].COMM_WORLD.Get_size() > 1
    except Exception:  # noqa: BLE001
        return False


def abort_mpi() -> None:
    """MPI_Abort on COMM_WORLD (after the rank file is closed), so the other ranks do not hang (what mpi4py's
    ``python -m mpi4py`` runner does on an uncaught exception)."""
    mod = sys.modules["mpi4py.MPI"]
    sys.stderr.flush()
    sys.stdout.flush()
    mod.COMM_WORLD.Abort(1)
