"""What happens to an uncaught exception in a rank: the traceback saved as an artifact, an event, and an MPI
abort when the code initialised MPI (shared by the launcher, the import hook and the API's excepthook)."""

from __future__ import annotations

import os
import traceback
from typing import Any

from .. import schema
from ..errors import Prov4mlHpcError
from .mpiworld import abort_mpi, mpi_initialized, should_abort  # noqa: F401 - used by the launcher and the hook


def format_user_traceback(exc: BaseException) -> str:
    """The traceback as `python script.py` prints it: without the launcher's, runpy's and the signal
    handler's frames."""
    import runpy

    from . import signals

    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    ours = {
        os.path.realpath(p)
        for p in (
            __file__,
            runpy.__file__,
            signals.__file__,
            os.path.join(package, "rank", "launcher.py"),
            os.path.join(package, "run.py"),
        )
    }
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    kept = [
        f for f in te.stack if os.path.realpath(f.filename) not in ours and f.filename != "<frozen runpy>"
    ]
    if kept:
        te.stack[:] = kept
    return "".join(te.format())


def save_traceback(run: Any, text: str) -> str | None:
    """Write the traceback under RUN_DIR/artifacts/rank-NNNNN/ and log it as an output artifact."""
    from . import api

    name = "traceback.txt" if not run.attempt else f"traceback.attempt-{run.attempt}.txt"
    folder = os.path.join(run.run_dir, schema.ARTIFACTS_DIR, f"rank-{run.global_rank:05d}")
    path = os.path.join(folder, name)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
        api.log_artifact(path, name=f"traceback-rank-{run.global_rank:05d}", role="output", copy=False)
    except Exception as exc:  # noqa: BLE001 - the status is what matters; say why the file is missing
        run.recorder.problem("traceback_not_saved", f"could not save the traceback to {path}: {exc}")
        return None
    return path


def record_exception(run: Any, exc_type: type[BaseException], exc: BaseException, text: str) -> None:
    """Save the traceback text as an artifact of the run and record an ``uncaught_exception`` event."""
    from . import api

    path = save_traceback(run, text)
    try:
        api.log_event(
            "uncaught_exception",
            type=f"{exc_type.__module__}.{exc_type.__qualname__}",
            message=str(exc),
            traceback_file=path,
        )
    except Prov4mlHpcError:
        pass
