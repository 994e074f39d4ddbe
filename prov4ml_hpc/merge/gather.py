"""The in-job gather: after every rank has closed its file, rank 0 merges the run, without ever hanging the job.

Called by ``end_run`` on every rank of an MPI job (one whose script imported mpi4py.MPI; an end hook registered
by ``extensions.on_start``).  No collective call is used, so a rank that died or never reaches end_run cannot
block the others:

1. every rank other than 0 sends "closed" (a small non-blocking send) to rank 0 and polls for rank 0's answer;
2. rank 0 polls for the messages until every rank has arrived or PROV4ML_HPC_GATHER_TIMEOUT seconds (default
   60) have passed, then answers each arrived rank "merge" (all arrived) or "incomplete";
3. with everybody there, rank 0 runs :func:`prov4ml_hpc.merge.merge_run` (run.h5 and provenance.json); otherwise
   every rank logs that ``prov4ml-hpc merge RUN_DIR`` after the job will do it.
Ranks other than 0 do not wait for the merge itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .. import settings
from ..log import logger

TIMEOUT_ENV = settings.GATHER_TIMEOUT
TAG_CLOSED = 30571  # tags on COMM_WORLD; MPI guarantees at least 32767
TAG_VERDICT = 30572
POLL_SECONDS = 0.005
MEMBER_GRACE = 2.0  # seconds ranks other than 0 wait beyond the timeout for rank 0's answer


def gather_at_end(run: Any) -> bool:
    """Gather the run on rank 0 (see the module docstring).  Returns True where this call merged the run.

    Never raises and never blocks longer than about the timeout (plus the merge itself, on rank 0).
    """
    later = f"`prov4ml-hpc merge {run.run_dir}` after the job will write run.h5 and provenance.json"
    comm = _world(run, later)
    if comm is None:
        return False
    options = getattr(run, "options", None)
    timeout = options.gather_timeout if options is not None else settings.get(settings.GATHER_TIMEOUT)
    try:
        if comm.Get_rank() == 0:
            return _root(comm, run, timeout, later)
        _member(comm, run, timeout, later)
    except Exception as exc:  # noqa: BLE001 - the rank file is closed and safe; never crash the job here
        logger.warning("in-job gather failed (%s: %s); %s", type(exc).__name__, exc, later)
    return False


def _world(run: Any, later: str):
    # Never import mpi4py.MPI here: the import calls MPI_Init, which waits for every rank of the launch (the PMI
    # fence); in a job whose script does not use MPI, one rank that failed made the others hang here for good.
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None:
        logger.info("the script did not use MPI (mpi4py.MPI not imported): no in-job gather; %s", later)
        return None
    if not MPI.Is_initialized() or MPI.Is_finalized():
        logger.warning("MPI is not initialized or already finalized at end_run: no in-job gather; %s", later)
        return None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != run.world_size or comm.Get_rank() != run.global_rank:
        logger.warning(
            "MPI rank %d of %d does not match this run's rank %d of %d (launched without MPI?): no "
            "in-job gather; %s",
            comm.Get_rank(),
            comm.Get_size(),
            run.global_rank,
            run.world_size,
            later,
        )
        return None
    return comm


def _member(comm, run: Any, timeout: float, later: str) -> None:
    send = comm.isend({"rank": comm.Get_rank(), "status": run.final_status}, dest=0, tag=TAG_CLOSED)
    deadline = time.monotonic() + timeout + MEMBER_GRACE  # rank 0 answers at its own deadline at the latest
    verdict = None
    while time.monotonic() < deadline:
        if comm.Iprobe(source=0, tag=TAG_VERDICT):
            verdict = comm.recv(source=0, tag=TAG_VERDICT)
            break
        time.sleep(POLL_SECONDS)
    sent = _wait(send, deadline)
    if verdict == "merge":
        logger.info("rank 0 is writing run.h5 and provenance.json")
    elif verdict is None:
        logger.warning(
            "no answer from rank 0 within %gs (%s); if rank 0 did not write provenance.json, %s",
            timeout,
            TIMEOUT_ENV,
            later,
        )
    else:
        logger.warning("not every rank reached end_run within %gs; %s", timeout, later)
    if not sent:
        logger.info("rank 0 never received this rank's message (it may have stopped)")


def _root(comm, run: Any, timeout: float, later: str) -> bool:
    from mpi4py import MPI

    size = comm.Get_size()
    arrived = {0}
    deadline = time.monotonic() + timeout
    status = MPI.Status()
    while len(arrived) < size and time.monotonic() < deadline:
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_CLOSED, status=status):
            comm.recv(source=status.Get_source(), tag=TAG_CLOSED)
            arrived.add(status.Get_source())
        else:
            time.sleep(POLL_SECONDS)
    complete = len(arrived) == size
    verdict = "merge" if complete else "incomplete"
    sends = [comm.isend(verdict, dest=r, tag=TAG_VERDICT) for r in sorted(arrived - {0})]
    end = time.monotonic() + max(1.0, timeout)
    for req in sends:
        _wait(req, end)
    if not complete:
        missing = sorted(set(range(size)) - arrived)
        logger.warning(
            "ranks %s did not reach end_run within %gs (%s); %s", _short(missing), timeout, TIMEOUT_ENV, later
        )
        return False
    from . import merge_run

    options = getattr(run, "options", None)
    result = merge_run(run.run_dir, query_slurm=True, graph=getattr(options, "graph", None))
    logger.info(
        "in-job gather: %d ranks, %d values merged into %s in %.1fs",
        size,
        result.values,
        run.run_dir,
        result.seconds,
    )
    return True


def _wait(req, deadline: float) -> bool:
    while True:
        if req.Test():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def _short(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:20])) + (f" and {len(ranks) - 20} more" if len(ranks) > 20 else "")
