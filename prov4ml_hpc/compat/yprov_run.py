"""yProv4ML's run functions (its ``functs`` module) for the drop-in: start_run, end_run and the run's folders.

``end_run`` closes the rank file and then writes what yProv4ML writes at its end_run with our exporters: the
PROV-JSON always (yProv4ML always writes its graph), ``create_graph`` the DOT file, ``create_svg`` the SVG,
``crate_ro_crate`` the RO-Crate and ``create_card`` the HTML report.  In a single process that happens right
here; under MPI on global rank 0 after the in-job gather; under torchrun (no gather) after ``prov4ml-hpc merge``.
"""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Callable
from typing import Any

from .. import schema
from ..log import logger
from ..rank import api

__all__ = [
    "end_run",
    "get_artifacts_dir",
    "get_run_dir",
    "log_provenance_documents",
    "start_run",
]


class State:
    """What the drop-in keeps between calls for the active run (reset by start_run)."""

    def __init__(self) -> None:
        self.start_time: float | None = None
        self.model_versions: dict[str, int] = {}
        self.sources: set[tuple[str, str, str]] = set()
        self.flops: dict[str, float] = {}  # running totals: "batch" and "epoch"
        self.tracker: Any = None  # the yProv4ML-named system tracker (yprov_system)
        self.cpu_meter: Any = None  # its CPU baseline, taken at start_run as yProv4ML's
        self.closers: list[Callable[[], None]] = []  # wrappers that write their file at end_run
        self.warned: set[str] = set()


STATE = State()


def once(key: str, message: str, *args: Any) -> None:
    """Log a warning once per process (the drop-in's notices about what differs from yProv4ML)."""
    if key not in STATE.warned:
        STATE.warned.add(key)
        logger.warning("yprov4ml compat: " + message, *args)


def safe_name(name: Any) -> str:
    """An experiment name as a directory-safe name ("my exp" -> "my_exp")."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name)).lstrip("._+-")
    return cleaned[:200] or "experiment"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return str(value.value) if value.value is not None else value.name
    return str(value)


def start_run(
    experiment_name: str,
    prov_user_namespace: str | None = None,
    provenance_save_dir: str | None = None,
    collect_all_processes: bool = False,
    save_after_n_logs: int = 100,
    rank: int | None = None,
    metrics_file_type: Any = "csv",
    csv_separator: str = ",",
    use_compressor: Any = None,
    use_run_id: Any = None,
    **kwargs: Any,
) -> api.Run:
    """yProv4ML's start_run: starts this rank's prov4ml-hpc run under ``provenance_save_dir`` (RUN_ROOT).

    ``use_run_id`` given as a string becomes the run id; a number N gives ``<experiment>_N`` (it must be the same
    on every rank).  ``prov_user_namespace`` is recorded as a parameter of the run (yProv4ML keeps it and never
    writes it).  The file format, separator, compressor, save_after_n_logs and collect_all_processes have no
    meaning here (one HDF5 file per rank, every rank recorded): they are recorded in the ``yprov4ml_start_run``
    event.  2.x options (``disable_codecarbon``) are accepted the same way.

    Raises:
        RunAlreadyActiveError: a run is already active in this process.
        ConfigError: the run directory cannot be used (see prov4ml_hpc.start_run).
    """
    run_id = use_run_id if isinstance(use_run_id, str) and use_run_id else None
    if use_run_id is not None and run_id is None:
        run_id = f"{safe_name(experiment_name)}_{use_run_id}"
    run = api.start_run(safe_name(experiment_name), provenance_save_dir, run_id=run_id)
    warned = STATE.warned
    STATE.__init__()  # in place: the other compat modules hold this object
    STATE.warned = warned
    STATE.start_time = time.time()
    from ..rank.samplers.host import CpuTimesMeter

    STATE.cpu_meter = CpuTimesMeter()  # one psutil.cpu_times(): the first log_system_metrics' CPU baseline
    settings = {
        "experiment_name": experiment_name,
        "prov_user_namespace": prov_user_namespace,
        "collect_all_processes": collect_all_processes,
        "save_after_n_logs": save_after_n_logs,
        "rank": rank,
        "metrics_file_type": _text(metrics_file_type),
        "csv_separator": csv_separator,
        "use_compressor": _text(use_compressor) if not isinstance(use_compressor, bool) else use_compressor,
        "use_run_id": _text(use_run_id),
        **{k: api.json_value(v) for k, v in kwargs.items()},
    }
    api.log_event("yprov4ml_start_run", **settings)
    if prov_user_namespace is not None:
        run.recorder.add_record(
            {
                "type": schema.REC_PARAM,
                "name": "prov_user_namespace",
                "value": str(prov_user_namespace),
                "context": None,
                "role": "input",
                "attrs": {"source": "yprov4ml.start_run"},
            }
        )
    if rank is not None and str(rank) != str(run.global_rank):
        once(
            "rank",
            "start_run(rank=%s) differs from the detected global rank %d (%s); the detected rank is used",
            rank,
            run.global_rank,
            run.identity.source,
        )
    unknown = sorted(set(kwargs) - {"disable_codecarbon"})
    if unknown:
        once("kwargs", "start_run(): options %s have no meaning here; recorded and ignored", unknown)
    if run.world_size > 1:
        run.add_end_hook(_export_after_gather)
    return run


def _requested(run: api.Run) -> dict[str, bool]:
    return getattr(run, "_yprov4ml_exports", {})


def end_run(
    create_graph: bool = False,
    create_svg: bool = False,
    crate_ro_crate: bool = False,
    create_card: bool = False,
    **kwargs: Any,
) -> str | None:
    """yProv4ML's end_run: close this rank's file, then write provenance.json and the exports asked for.

    Returns the rank's final status, or None when no run was active.  Never raises for an export that cannot be
    made (graphviz missing, ...): it says once what to install and which command makes it later.
    """
    run = api.active_run()
    if run is None:
        return None
    for close in STATE.closers:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - a wrapper's file is optional; the rank file is not
            run.recorder.problem("yprov4ml_wrapper_close", f"closing a tracked model failed: {exc!r}")
    STATE.closers.clear()
    if STATE.tracker is not None:
        STATE.tracker.close()
        STATE.tracker = None
    wanted = {"dot": bool(create_graph), "svg": bool(create_svg), "rocrate": bool(crate_ro_crate)}
    wanted["card"] = bool(create_card)
    api.log_event("yprov4ml_end_run", **wanted, **{k: api.json_value(v) for k, v in kwargs.items()})
    run._yprov4ml_exports = wanted  # read by the end hook on rank 0 (after the gather)
    status = api.end_run()
    if run.world_size == 1 and run.started_by not in ("launcher", "hook"):
        _merge_and_export(run.run_dir, wanted)
    elif run.world_size > 1 and run.identity.source == "torchrun" and any(wanted.values()):
        once(
            "exports",
            "under torchrun the graph is written after the job: `prov4ml-hpc merge %s`, then "
            "`prov4ml-hpc export %s --format svg|dot|rocrate`",
            run.run_dir,
            run.run_dir,
        )
    return status


def _export_after_gather(run: api.Run) -> None:
    """End hook (registered after the gather's): rank 0 writes the exports once provenance.json is there."""
    wanted = _requested(run)
    if run.global_rank != 0 or not any(wanted.values()):
        return
    if not os.path.exists(os.path.join(run.run_dir, schema.PROV_FILE)):
        once(
            "exports",
            "the in-job gather wrote no provenance.json; after `prov4ml-hpc merge %s` run "
            "`prov4ml-hpc export %s --format svg|dot|rocrate`",
            run.run_dir,
            run.run_dir,
        )
        return
    _exports(run.run_dir, wanted)


def _merge_and_export(run_dir: str, wanted: dict[str, bool]) -> None:
    from ..merge import merge_run

    try:
        merge_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - the rank file is closed and safe; the merge can be redone
        once(
            "merge_failed",
            "merging %s failed (%s: %s); run `prov4ml-hpc merge %s` later",
            run_dir,
            type(exc).__name__,
            exc,
            run_dir,
        )
        return
    _exports(run_dir, wanted)


def _exports(run_dir: str, wanted: dict[str, bool]) -> None:
    """provenance.dot / provenance.svg / the RO-Crate / report/index.html, each as asked; never raises."""
    from ..errors import Prov4mlHpcError

    jobs: list[tuple[str, Callable[[], Any]]] = []
    if wanted.get("dot") or wanted.get("svg"):
        from ..provenance.export import load_prov_json, write_export

        doc = load_prov_json(os.path.join(run_dir, schema.PROV_FILE))
        if wanted.get("dot"):
            jobs.append(("dot", lambda: write_export(doc, os.path.join(run_dir, "provenance.dot"), "dot")))
        if wanted.get("svg"):
            jobs.append(("svg", lambda: write_export(doc, os.path.join(run_dir, "provenance.svg"), "svg")))
    if wanted.get("rocrate"):
        from ..provenance.crate import write_crate

        jobs.append(("rocrate", lambda: write_crate(run_dir)))
    if wanted.get("card"):
        jobs.append(("report", lambda: _report(run_dir)))
    for what, job in jobs:
        try:
            job()
        except (Prov4mlHpcError, ImportError, OSError) as exc:
            once(
                f"export_{what}",
                "end_run could not write the %s (%s); `prov4ml-hpc %s %s` makes it once that is fixed",
                what,
                exc,
                "report" if what == "report" else f"export --format {what}",
                run_dir,
            )


def _report(run_dir: str) -> None:
    from ..view.report import write_report

    write_report(run_dir)


def get_run_dir() -> str | None:
    """The active run's directory (yProv4ML: its experiment directory), or None."""
    run = api.active_run()
    return run.run_dir if run is not None else None


def get_artifacts_dir() -> str | None:
    """Where this rank's artifact copies go: RUN_DIR/artifacts/rank-NNNNN (created), or None without a run."""
    run = api.active_run()
    if run is None:
        return None
    path = os.path.join(run.run_dir, schema.ARTIFACTS_DIR, f"rank-{run.global_rank:05d}")
    os.makedirs(path, exist_ok=True)
    return path


def log_provenance_documents(
    create_graph: bool = False, create_svg: bool = False, crate_ro_crate: bool = False
) -> str | None:
    """yProv4ML's itwinai alias of end_run."""
    return end_run(create_graph, create_svg, crate_ro_crate)
