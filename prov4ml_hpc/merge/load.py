"""Loading a run directory into the read model (RunSummary), in whatever state it is: the one loader.

- merged and up to date: run.h5's attributes only (the rank groups, their records and each series dataset's
  statistics attributes; never the values), so the cost is O(ranks x series) whatever the number of values;
- unmerged, running, or a stale merge (a rank file changed, appeared or vanished after run.h5 was written, or
  a writer it calls partial is still alive): the rank files, each read once, series statistics computed from
  the rows exactly as the merge computes them (``stream.scan_rank``);
- requeued: every attempt's rank files (``rank-NNNNN.attempt-K.h5``), missing ranks per attempt.

Series statistics never come from provenance.json.  ``RunSummary.graph`` says whether provenance.json is the
graph written by the same merge as run.h5 (their sha256 is recorded in run.h5).
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

from .. import schema
from .._version import __version__
from ..errors import ConfigError
from ..job.jobinfo import JobInfo
from . import model as m
from . import verdict
from .model import RankSummary, RunSummary, SeriesSummary
from .totals import job_totals

_VERDICT_ATTRS = (
    schema.A_FILE_STATUS,
    schema.A_FILE_STATUS_REASON,
    schema.A_FILE,
    schema.A_ROWS,
    schema.A_FILE_SIZE,
    schema.A_FILE_MTIME_NS,
)


def load_run(run_dir: str | os.PathLike, *, values: bool = True, live: bool = True) -> RunSummary:
    """Read a run directory into a RunSummary (see the module docstring).

    Args:
        run_dir: RUN_ROOT/EXPERIMENT/RUN_ID (the folder holding ranks/ or run.h5).
        values: compute per-series statistics when the rank files are read (this reads every row once);
            False reads headers only (series then have count 0).  run.h5 always gives them, at no extra cost.
        live: say "running" for a rank whose writer is alive (inspect, watch); False says "partial", as the
            merge does.

    Raises:
        ConfigError: run_dir is not a run directory (no ranks/ files and no run.h5).
    """
    run_dir = os.path.realpath(os.fspath(run_dir))
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} is not a directory: give a run directory (RUN_ROOT/EXPERIMENT/RUN_ID)")
    found = verdict.discover(run_dir)
    run_path = os.path.join(run_dir, schema.RUN_FILE)
    if os.path.exists(run_path):
        try:
            merged = read_merged(run_dir)
            stale = stale_reason(merged, found)
        except Exception as exc:  # noqa: BLE001 - a damaged run.h5: the rank files are the record
            stale = f"run.h5 could not be read ({type(exc).__name__}: {exc})"
        if stale is None:
            return merged
        if not found:
            raise ConfigError(f"{stale}, and {run_dir} holds no rank files: nothing can be read")
        run = load_rank_files(run_dir, found, values=values, live=live)
        if run.state != m.STATE_RUNNING:
            run.state = m.STATE_STALE
        run.problems.insert(0, f"run.h5 is out of date ({stale}); read the rank files: merge again")
        return run
    if not found:
        raise ConfigError(
            f"{run_dir} holds no rank files (ranks/rank-NNNNN.h5) and no run.h5: is it a run "
            "directory (RUN_ROOT/EXPERIMENT/RUN_ID)?"
        )
    return load_rank_files(run_dir, found, values=values, live=live)


def assemble(
    run_dir: str,
    ranks: list[RankSummary],
    world: int,
    job: JobInfo,
    problems: list[str],
    *,
    source: str = m.SOURCE_RANK_FILES,
    state: str = m.STATE_UNMERGED,
) -> RunSummary:
    """The RunSummary of complete ranks (verdicts, series, contexts): names from the main rank, job totals."""
    main = m.main_rank(ranks)
    a = main.meta if main is not None else {}
    return RunSummary(
        run_id=str(a.get(schema.A_RUN_ID) or os.path.basename(run_dir)),
        experiment=str(a.get(schema.A_EXPERIMENT) or os.path.basename(os.path.dirname(run_dir))),
        run_dir=run_dir,
        job=job,
        ranks=ranks,
        world_size=world,
        software_version=str(a.get(schema.A_PACKAGE_VERSION) or __version__),
        user=a.get(schema.A_USER) or None,
        problems=problems,
        totals=job_totals(ranks),
        source=source,
        state=state,
    )


def job_of(ranks: list[RankSummary], *, query: bool) -> JobInfo:
    """The job from the main rank's SLURM snapshot (and scontrol/sacct when ``query``)."""
    from ..job.jobinfo import job_info

    main = m.main_rank(ranks)
    if main is None:
        return job_info(None, None, query=query)
    snap = main.meta.get(schema.A_SLURM)
    job_id = main.meta.get(schema.A_JOB_ID)
    return job_info(
        snap if isinstance(snap, dict) else None,
        str(job_id) if job_id not in (None, "") else None,
        query=query,
    )


# ---- rank files ------------------------------------------------------------------------------------------
def load_rank_files(
    run_dir: str, found: list[tuple[int, int, str]], *, values: bool = True, live: bool = True
) -> RunSummary:
    """The run from its rank files alone (each read once; rows only when ``values``)."""
    from .stream import scan_rank

    ranks = []
    for global_rank, attempt, rel in found:
        r, rf = verdict.open_rank(run_dir, global_rank, attempt, rel, live=live)
        if rf is not None and values:
            try:
                r.series, r.rows = scan_rank(rf)
            except Exception as exc:  # noqa: BLE001 - e.g. a live writer mid-flush: the header still counts
                r.read_problems.append(f"its rows could not be read ({type(exc).__name__}: {exc})")
        verdict.set_contexts(r)
        ranks.append(r)
    ranks, world, notes = verdict.add_missing(ranks)
    problems = verdict.problem_lines(ranks) + notes
    running = any(r.status == schema.STATUS_RUNNING for r in ranks)
    return assemble(
        run_dir,
        ranks,
        world,
        job_of(ranks, query=False),
        problems,
        source=m.SOURCE_RANK_FILES,
        state=m.STATE_RUNNING if running else m.STATE_UNMERGED,
    )


# ---- run.h5 ----------------------------------------------------------------------------------------------
def read_merged(run_dir: str) -> RunSummary:
    """The run as the merge that wrote run.h5 saw it: /index (or, in older files, the attributes), never values.

    Raises:
        MergeError: run.h5 is not a run file of a version this one reads.
    """
    from ..h5 import open_h5
    from .runfile import check_run_file, decode_attrs, decode_job

    path = os.path.join(run_dir, schema.RUN_FILE)
    with open_h5(path, "r") as f:
        root = decode_attrs(f)
        check_run_file(path, root)
        job = JobInfo(**decode_job(f[schema.G_JOB])) if schema.G_JOB in f else JobInfo()
        ranks = _from_index(f) if schema.DS_RUN_INDEX in f else _from_attributes(f)
    out = sorted(ranks.values(), key=lambda r: (r.attempt, r.global_rank))
    for r in out:
        verdict.set_contexts(r)
    problems = root.get(schema.A_PROBLEMS)
    run = assemble(
        run_dir,
        out,
        _int(root.get(schema.A_WORLD_SIZE)) or len({r.global_rank for r in out}),
        job,
        [str(p) for p in problems] if isinstance(problems, list) else [],
        source=m.SOURCE_RUN_FILE,
        state=m.STATE_MERGED,
    )
    run.merged_at = _float(root.get(schema.A_MERGE_UNIX))
    run.graph = graph_status(run_dir, root.get(schema.A_PROVENANCE_SHA256))
    if run.graph == m.GRAPH_OTHER:
        run.problems.insert(
            0,
            "provenance.json is not the graph written with this run.h5 (a merge was interrupted between its "
            "two renames, or one file was copied from another merge): run `prov4ml-hpc merge` again",
        )
    return run


def _from_index(f) -> dict[str, RankSummary]:
    """The ranks from /index: one read of one dataset, whatever the numbers of ranks and series."""
    import json

    ranks: dict[str, RankSummary] = {}
    for text in f[schema.DS_RUN_INDEX].asstr()[:]:
        entry = json.loads(text)
        stem, records = str(entry["stem"]), [x for x in entry.get("records") or [] if isinstance(x, dict)]
        r = _rank_of(stem, dict(entry.get("attrs") or {}), records)
        r.series = [SeriesSummary(**x) for x in entry.get("series") or [] if r.readable]
        ranks[stem] = r
    return ranks


def _from_attributes(f) -> dict[str, RankSummary]:
    """The ranks of a run.h5 without /index (written before it existed): every group's and dataset's attributes
    (about 20 times slower than the index, still without reading a value)."""
    import json

    from .runfile import decode_attrs

    ranks: dict[str, RankSummary] = {}
    for stem, g in f.get(schema.G_RANKS, {}).items():
        records: list[dict[str, Any]] = []
        if schema.DS_RANK_RECORDS in g:
            for text in g[schema.DS_RANK_RECORDS].asstr()[:]:
                try:
                    rec = json.loads(text)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
        ranks[stem] = _rank_of(stem, decode_attrs(g, schema.JSON_ATTRS), records)
    for ctx_group in f.get(schema.G_SERIES, {}).values():
        for name_group in ctx_group.values():
            ga = decode_attrs(name_group, frozenset())
            for stem, ds in name_group.items():
                r = ranks.get(stem)
                if r is not None:
                    r.series.append(_series_of(ga, decode_attrs(ds, frozenset()), r.global_rank, ds.name))
    for r in ranks.values():
        r.series.sort(key=lambda x: (x.context, x.name, x.kind))
    return ranks


def _rank_of(stem: str, a: dict[str, Any], records: list[dict[str, Any]]) -> RankSummary:
    parsed = schema.parse_rank_file_name(stem + ".h5")
    g, attempt = parsed if parsed is not None else (_int(a.get(schema.A_GLOBAL_RANK)) or 0, 0)
    r = RankSummary(g, attempt, str(a.get(schema.A_STATUS) or schema.STATUS_MISSING))
    r.reason = a.get(schema.A_STATUS_REASON) or None
    r.file = a.get(schema.A_FILE) or None
    r.rows = _int(a.get(schema.A_ROWS)) or 0
    r.file_size, r.file_mtime_ns = _int(a.get(schema.A_FILE_SIZE)), _int(a.get(schema.A_FILE_MTIME_NS))
    if r.status in (schema.STATUS_MISSING, schema.STATUS_CORRUPT):
        return r
    meta = {k: v for k, v in a.items() if k not in _VERDICT_ATTRS}
    meta[schema.A_STATUS] = a.get(schema.A_FILE_STATUS, "")
    if schema.A_FILE_STATUS_REASON in a:
        meta[schema.A_STATUS_REASON] = a[schema.A_FILE_STATUS_REASON]
    verdict.fill_rank(r, meta, records)
    return r


def _series_of(group: dict[str, Any], a: dict[str, Any], rank: int, dataset: str) -> SeriesSummary:
    count = _int(a.get(schema.A_COUNT)) or 0
    x = SeriesSummary(
        name=str(group.get(schema.A_NAME, a.get(schema.A_NAME, ""))),
        context=str(group.get(schema.A_CONTEXT, a.get(schema.A_CONTEXT, ""))),
        kind=str(group.get(schema.A_KIND) or schema.KIND_METRIC),
        global_rank=rank,
        count=count,
        nonfinite=_int(a.get(schema.A_NONFINITE)) or 0,
        unit=group.get(schema.A_UNIT) or None,
        dataset=dataset,
    )
    if count:  # an empty series stores -1 and NaN: they mean "none"
        x.first_step, x.last_step = _int(a.get(schema.A_FIRST_STEP)), _int(a.get(schema.A_LAST_STEP))
        x.min, x.max = _finite(a.get(schema.A_MIN)), _finite(a.get(schema.A_MAX))
        x.last = _float(a.get(schema.A_LAST))  # NaN/inf is a real last value
        x.first_time, x.last_time = _float(a.get(schema.A_FIRST_TIME)), _float(a.get(schema.A_LAST_TIME))
    return x


def graph_status(run_dir: str, recorded: Any) -> str:
    """GRAPH_CURRENT when provenance.json's sha256 is the one run.h5 recorded (see model.GRAPH_*)."""
    path = os.path.join(run_dir, schema.PROV_FILE)
    if not os.path.exists(path):
        return m.GRAPH_ABSENT
    if not isinstance(recorded, str) or not recorded:
        return m.GRAPH_UNKNOWN
    return m.GRAPH_CURRENT if file_sha256(path) == recorded else m.GRAPH_OTHER


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stale_reason(run: RunSummary, found: list[tuple[int, int, str]]) -> str | None:
    """Why run.h5 no longer describes the rank files on disk, or None when it does.

    Stale when a rank file appeared or vanished, changed (size or mtime, and for a same-size file whose mtime
    alone differs, as after a copy: its status, flushed rows or last flush), or a rank the merge called partial
    still has a live writer.
    """
    merged = {r.file: r for r in run.ranks if r.file}
    now = {rel for _, _, rel in found}
    new, gone = sorted(now - set(merged)), sorted(set(merged) - now)
    if new:
        return f"{len(new)} rank file(s) appeared after the merge, e.g. {new[0]}"
    if gone:
        return f"{len(gone)} rank file(s) merged then are gone, e.g. {gone[0]}"
    legacy = None
    for rel, r in sorted(merged.items()):
        path = os.path.join(run.run_dir, rel)
        try:
            st = os.stat(path)
        except OSError:
            return f"{rel} cannot be read any more"
        if r.file_size is None or r.file_mtime_ns is None:  # run.h5 of an older version: compare mtimes
            if legacy is None:
                legacy = os.stat(os.path.join(run.run_dir, schema.RUN_FILE)).st_mtime_ns
            if st.st_mtime_ns > legacy:
                return f"{rel} changed after the merge"
        elif st.st_size != r.file_size:
            return f"{rel} changed after the merge ({r.file_size} -> {st.st_size} bytes)"
        elif st.st_mtime_ns != r.file_mtime_ns and _header_changed(path, r):
            return f"{rel} changed after the merge"
        if r.status == schema.STATUS_PARTIAL and r.meta and verdict.writer_alive(r.meta):
            return f"the writer of {rel} (pid {r.pid}) is still running"
    return None


def _header_changed(path: str, r: RankSummary) -> bool:
    from ..h5 import decode_attr, open_h5

    keys = (schema.A_STATUS, schema.A_FLUSHED_ROWS, schema.A_LAST_FLUSH_UNIX)
    try:
        with open_h5(path, "r") as f:
            now = {k: decode_attr(f.attrs[k]) if k in f.attrs else None for k in keys}
    except Exception:  # noqa: BLE001 - unreadable now: it changed
        return True
    return any(now[k] != r.meta.get(k) for k in keys)


def _int(v: Any) -> int | None:
    try:
        return None if v is None or v == "" or isinstance(v, bool) else int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def _finite(v: Any) -> float | None:
    f = _float(v)
    return f if f is not None and math.isfinite(f) else None
