"""The in-job end of job: rank 0 waits until every rank's file says it is closed, then merges; no MPI, no hang.

Called by ``close_run`` on every rank of a multi-rank run (an end hook registered by ``lifecycle.on_start``),
after the rank's own file is closed.  It uses no MPI at all: ``MPI_Init`` is collective, so initialising MPI at
the end of a run where one rank already died (an exception under ``srun``) hangs rank 0 forever, deaf to SIGTERM;
and a run need not use MPI to be a multi-rank run.  The rendezvous is the rank files themselves, on the shared
file system the merge reads anyway:

1. ranks other than 0 return at once: their closed file says they are done;
2. rank 0 reads the ``status`` attribute of every other rank's file of this attempt until each one is final
   (``completed``, ``failed``, ``cancelled``, ``signalled``) or ``PROV4ML_HPC_GATHER_TIMEOUT`` seconds (default
   60) have passed.  It sleeps between looks (50 ms, growing to 1 s: no busy polling) and a look opens only the
   files not yet seen closed.  Opening a file after its writer closed it shows what the writer wrote, also on NFS
   (close-to-open consistency);
3. when every rank closed its file, rank 0 runs :func:`prov4ml_hpc.merge.merge_run`; otherwise it names the
   ranks still open and says that ``prov4ml-hpc merge RUN_DIR`` after the job will do it.

The wait is Python code in ``time.sleep`` or a file open: a signal (scancel, the time limit) ends it at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import schema, settings
from ..log import logger

TIMEOUT_ENV = settings.GATHER_TIMEOUT
FIRST_POLL = 0.05  # seconds between the first looks at the other ranks' files
MAX_POLL = 1.0  # the longest sleep between two looks
POLL_GROWTH = 1.5


def file_status(path: str) -> str | None:
    """The status written in a rank file, or None when it cannot be read now (absent, being written)."""
    from ..h5 import open_h5

    try:
        with open_h5(path, "r") as f:
            value = f.attrs.get(schema.A_STATUS)
    except Exception:  # noqa: BLE001 - a file mid-flush or not created yet: look again later
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def wait_for_closed(
    paths: Sequence[str],
    timeout: float,
    *,
    status_of: Callable[[str], str | None] = file_status,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, str], list[str]]:
    """Look at the files until each one holds a final status or ``timeout`` seconds have passed.

    Returns (final status by path, paths still not closed, in the given order).
    """
    closed: dict[str, str] = {}
    pending = list(paths)
    deadline = clock() + timeout
    pause = FIRST_POLL
    while True:
        for path in pending:
            status = status_of(path)
            if status in schema.FINAL_STATUSES:
                closed[path] = status
        pending = [p for p in pending if p not in closed]
        left = deadline - clock()
        if not pending or left <= 0:
            return closed, pending
        sleep(min(pause, left))
        pause = min(MAX_POLL, pause * POLL_GROWTH)


def gather_at_end(run: Any) -> bool:
    """On rank 0: wait for the other ranks' files to be closed, then merge the run.  True where it merged.

    Never raises (the rank file is closed and safe whatever happens here) and never waits longer than the
    timeout (plus the merge itself).
    """
    if run.global_rank != 0:
        return False
    later = f"`prov4ml-hpc merge {run.run_dir}` after the job will write run.h5 and provenance.json"
    try:
        options = getattr(run, "options", None)
        timeout = options.gather_timeout if options is not None else settings.get(settings.GATHER_TIMEOUT)
        others = [run.location.rank_file(r) for r in range(1, run.world_size)]
        t0 = time.monotonic()
        _, pending = wait_for_closed(others, timeout)
        if pending:
            missing = [_rank_of(p) for p in pending]
            logger.warning(
                "ranks %s did not close their rank files within %gs (%s): no in-job merge; %s",
                _short(missing),
                timeout,
                TIMEOUT_ENV,
                later,
            )
            return False
        from . import merge_run

        result = merge_run(run.run_dir, query_slurm=True, graph=getattr(options, "graph", None))
        logger.info(
            "in-job merge: %d ranks closed within %.1fs; %d values merged into %s in %.1fs",
            run.world_size,
            time.monotonic() - t0 - result.seconds,
            result.values,
            run.run_dir,
            result.seconds,
        )
        return True
    except Exception as exc:  # noqa: BLE001 - never crash the job here; say what failed
        logger.warning("in-job merge failed (%s: %s); %s", type(exc).__name__, exc, later)
        return False


def _rank_of(path: str) -> int:
    parsed = schema.parse_rank_file_name(os.path.basename(path))
    return parsed[0] if parsed else -1


def _short(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:20])) + (f" and {len(ranks) - 20} more" if len(ranks) > 20 else "")
