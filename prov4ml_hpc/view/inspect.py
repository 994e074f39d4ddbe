"""What is in a run directory, for people and for tools: ``summarize(run_dir)`` and its terminal screen.

Works on every state of a run: a running job (rank files still being written), an unmerged one (rank files
only), a merged one (run.h5 + provenance.json, read instead of the rank files when they are up to date) and a
requeued one (one set of rank files per attempt).  Its cost grows with the number of ranks and series, never
with what is printed: ranks are grouped by status and only a few of each group are named.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..errors import ConfigError, RankFileError

LISTED = 5  # ranks named per status group, reasons per status
_ALIVE_SECONDS = 60.0  # a "running" rank file of another host flushed this recently counts as running
LOWER_IS_BETTER = ("loss", "error")

STATUS_RUNNING = schema.STATUS_RUNNING
STATUS_ORDER = (
    schema.STATUS_COMPLETED,
    STATUS_RUNNING,
    schema.STATUS_PARTIAL,
    schema.STATUS_FAILED,
    schema.STATUS_CANCELLED,
    schema.STATUS_SIGNALLED,
    schema.STATUS_CORRUPT,
    schema.STATUS_MISSING,
)


def best_rule(name: str) -> str:
    """``min`` for names containing loss or error (lower is better), else ``max``."""
    low = name.lower()
    return "min" if any(word in low for word in LOWER_IS_BETTER) else "max"


# ---- the loaded run ------------------------------------------------------------------------------------------
@dataclass
class SeriesStat:
    """One series of one rank: counts and value statistics (finite values only for min/max)."""

    context: str
    name: str
    kind: str
    unit: str | None = None
    count: int = 0
    nonfinite: int = 0
    min: float | None = None
    max: float | None = None
    last: float | None = None
    last_step: int | None = None
    first_time: float | None = None
    last_time: float | None = None


@dataclass
class RankInfo:
    """One attempt of one rank as inspect sees it (status is the verdict: running, partial, missing, ...)."""

    global_rank: int
    attempt: int
    status: str
    reason: str | None = None
    file: str | None = None  # relative to the run directory
    attrs: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    series: list[SeriesStat] = field(default_factory=list)
    rows: int = 0

    @property
    def node(self) -> str | None:
        return self.attrs.get(schema.A_NODE) or None

    @property
    def stem(self) -> str:
        return schema.rank_file_name(self.global_rank, self.attempt)[:-3]


@dataclass
class RunInfo:
    """A run directory read once: what summarize, compare, the report and the RO-Crate are built from."""

    run_dir: str
    source: str  # "run.h5" or "rank files"
    state: str  # merged, unmerged, running, stale-merge
    ranks: list[RankInfo]
    world_size: int
    job: dict[str, Any]
    run_attrs: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def attempts(self) -> list[int]:
        return sorted({r.attempt for r in self.ranks})

    def main_rank(self) -> RankInfo | None:
        """The lowest readable rank of the latest attempt (it describes the job)."""
        readable = [r for r in self.ranks if r.attrs]
        if not readable:
            return None
        last = max(r.attempt for r in readable)
        return min((r for r in readable if r.attempt == last), key=lambda r: r.global_rank)

    def latest(self) -> list[RankInfo]:
        """The ranks of the latest attempt."""
        last = max(self.attempts, default=0)
        return [r for r in self.ranks if r.attempt == last]


def load_run(run_dir: str | os.PathLike, *, values: bool = True) -> RunInfo:
    """Read a run directory: run.h5 (+ provenance.json) when they are up to date, else the rank files.

    Args:
        run_dir: RUN_ROOT/EXPERIMENT/RUN_ID (the folder holding ranks/ or run.h5).
        values: compute per-series statistics (count, min, max, last); this reads every row of unmerged
            rank files.  False reads headers only.

    Raises:
        ConfigError: run_dir is not a run directory (no ranks/ files and no run.h5).
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir} is not a directory: give a run directory (RUN_ROOT/EXPERIMENT/RUN_ID)")
    found = _discover(run_dir)
    run_path = os.path.join(run_dir, schema.RUN_FILE)
    if os.path.exists(run_path):
        stale = _stale_reason(run_path, found)
        if stale is None:
            try:
                return _load_merged(run_dir, run_path, values)
            except Exception as exc:  # noqa: BLE001 - a damaged run.h5: fall back to the rank files
                problem = f"run.h5 could not be read ({type(exc).__name__}: {exc}); read the rank files"
        else:
            problem = f"run.h5 is out of date ({stale}); read the rank files"
        info = _load_rank_files(run_dir, found, values)
        info.state = "stale-merge"
        info.problems.insert(0, problem)
        return info
    if not found:
        raise ConfigError(
            f"{run_dir} holds no rank files (ranks/rank-NNNNN.h5) and no run.h5: is it a run "
            "directory (RUN_ROOT/EXPERIMENT/RUN_ID)?"
        )
    return _load_rank_files(run_dir, found, values)


def _discover(run_dir: str) -> list[tuple[int, int, str]]:
    from ..merge.reader import discover_rank_files

    return discover_rank_files(run_dir)


def _stale_reason(run_path: str, found: list[tuple[int, int, str]]) -> str | None:
    """Why run.h5 does not describe the rank files on disk any more (a requeue, a merge while running)."""
    merged_at = os.path.getmtime(run_path)
    newer = [
        rel
        for _, _, rel in found
        if os.path.getmtime(os.path.join(os.path.dirname(run_path), rel)) > merged_at
    ]
    if newer:
        return f"{len(newer)} rank file(s) changed after the merge, e.g. {newer[0]}"
    return None


# ---- rank files ----------------------------------------------------------------------------------------------
def _load_rank_files(run_dir: str, found: list[tuple[int, int, str]], values: bool) -> RunInfo:
    from ..merge.reader import read_rank_file

    ranks: list[RankInfo] = []
    problems: list[str] = []
    host, now = socket.gethostname(), time.time()
    for global_rank, attempt, rel in found:
        try:
            rf = read_rank_file(os.path.join(run_dir, rel))
        except RankFileError as exc:
            ranks.append(RankInfo(global_rank, attempt, schema.STATUS_CORRUPT, str(exc), rel))
            continue
        status = rf.status
        reason = rf.attrs.get(schema.A_STATUS_REASON) or None
        if not rf.closed_cleanly:
            status, reason = _live_or_partial(rf.attrs, rf.nrows, host, now)
        info = RankInfo(global_rank, attempt, status, reason, rel, rf.attrs, rf.records, rows=rf.nrows)
        info.series = (
            _scan_stats(rf) if values else [SeriesStat(s.context, s.name, s.kind, s.unit) for s in rf.series]
        )
        problems.extend(f"{rel}: {p}" for p in rf.problems)
        ranks.append(info)
    world = _add_missing(ranks)
    state = "running" if any(r.status == STATUS_RUNNING for r in ranks) else "unmerged"
    return RunInfo(run_dir, "rank files", state, ranks, world, _job_from_ranks(ranks), problems=problems)


def _live_or_partial(attrs: dict[str, Any], nrows: int, host: str, now: float) -> tuple[str, str]:
    pid, where = attrs.get(schema.A_PID), attrs.get("hostname") or attrs.get(schema.A_NODE)
    flushed = attrs.get(schema.A_LAST_FLUSH_UNIX)
    if where == host and isinstance(pid, int):
        alive = _pid_alive(pid)
    else:
        alive = isinstance(flushed, int | float) and now - flushed < _ALIVE_SECONDS
    if alive:
        return STATUS_RUNNING, f"still writing ({nrows} rows flushed so far)"
    when = _iso(flushed) if isinstance(flushed, int | float) else "an unknown time"
    return schema.STATUS_PARTIAL, (
        f"the process stopped without closing its rank file (killed or crashed); "
        f"{nrows} rows up to the last flush at {when}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not running
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _add_missing(ranks: list[RankInfo]) -> int:
    sizes = [int(r.attrs.get(schema.A_WORLD_SIZE) or 0) for r in ranks]
    world = max(sizes, default=0) or (max((r.global_rank for r in ranks), default=-1) + 1)
    for attempt in sorted({r.attempt for r in ranks}):
        mine = [r for r in ranks if r.attempt == attempt]
        expected = max((int(r.attrs.get(schema.A_WORLD_SIZE) or 0) for r in mine), default=0) or world
        have = {r.global_rank for r in mine}
        ranks.extend(
            RankInfo(g, attempt, schema.STATUS_MISSING, f"no rank file (attempt {attempt})")
            for g in range(expected)
            if g not in have
        )
    ranks.sort(key=lambda r: (r.attempt, r.global_rank))
    return world


def _scan_stats(rf) -> list[SeriesStat]:
    """Per-series count, non-finite count, min, max, last value and step, first and last time: one pass."""
    import numpy as np

    n = len(rf.series)
    count = np.zeros(n, np.int64)
    nonfinite = np.zeros(n, np.int64)
    vmin = np.full(n, np.inf)
    vmax = np.full(n, -np.inf)
    last = np.full(n, np.nan)
    last_step = np.full(n, -1, np.int64)
    first_t = np.full(n, np.nan)
    last_t = np.full(n, np.nan)
    for rows in rf.iter_rows():
        if not len(rows):
            continue
        sid, v = rows["series"].astype(np.int64), rows["value"]
        count += np.bincount(sid, minlength=n)
        fin = np.isfinite(v)
        nonfinite += np.bincount(sid[~fin], minlength=n)
        np.minimum.at(vmin, sid[fin], v[fin])
        np.maximum.at(vmax, sid[fin], v[fin])
        rev_ids, rev_idx = np.unique(sid[::-1], return_index=True)
        at = len(sid) - 1 - rev_idx
        last[rev_ids] = v[at]
        last_step[rev_ids] = rows["step"][at]
        last_t[rev_ids] = rows["time"][at]
        ids, first_idx = np.unique(sid, return_index=True)
        unset = np.isnan(first_t[ids])
        first_t[ids[unset]] = rows["time"][first_idx[unset]]
    out = []
    for s in rf.series:
        i, c = s.id, int(count[s.id])
        out.append(
            SeriesStat(
                s.context,
                s.name,
                s.kind,
                s.unit,
                c,
                int(nonfinite[i]),
                float(vmin[i]) if math.isfinite(vmin[i]) else None,
                float(vmax[i]) if math.isfinite(vmax[i]) else None,
                float(last[i]) if c else None,
                int(last_step[i]) if c else None,
                float(first_t[i]) if c else None,
                float(last_t[i]) if c else None,
            )
        )
    return out


def _job_from_ranks(ranks: list[RankInfo]) -> dict[str, Any]:
    from ..job.jobinfo import job_info

    readable = [r for r in ranks if r.attrs]
    if not readable:
        return {}
    last = max(r.attempt for r in readable)
    main = min((r for r in readable if r.attempt == last), key=lambda r: r.global_rank)
    snap = main.attrs.get("slurm")
    job_id = main.attrs.get(schema.A_JOB_ID) or None
    import dataclasses

    return dataclasses.asdict(job_info(snap if isinstance(snap, dict) else None, job_id, query=False))


# ---- run.h5 --------------------------------------------------------------------------------------------------
def _load_merged(run_dir: str, run_path: str, values: bool) -> RunInfo:
    from ..h5 import open_h5
    from ..merge.runfile import DS_RECORDS, G_RANKS, read_run_file

    rf = read_run_file(run_path)
    ranks: list[RankInfo] = []
    with open_h5(run_path, "r") as f:
        group = f.get(G_RANKS, {})
        for stem, attrs in rf.ranks.items():
            attrs = {k: (None if v == "" else v) for k, v in attrs.items()}
            recs = []
            if stem in group and DS_RECORDS in group[stem]:
                recs = [json.loads(t) for t in group[stem][DS_RECORDS].asstr()[:]]
            g, a = int(attrs.get(schema.A_GLOBAL_RANK, -1)), int(attrs.get(schema.A_ATTEMPT) or 0)
            status = str(attrs.get(schema.A_STATUS) or schema.STATUS_MISSING)
            meta = attrs if status not in (schema.STATUS_MISSING, schema.STATUS_CORRUPT) else {}
            ranks.append(
                RankInfo(
                    g,
                    a,
                    status,
                    attrs.get(schema.A_STATUS_REASON),
                    attrs.get("file"),
                    meta,
                    recs,
                    rows=int(attrs.get("rows") or 0),
                )
            )
    ranks.sort(key=lambda r: (r.attempt, r.global_rank))
    if values:
        _merged_stats(run_dir, rf, ranks)
    job = {k: (None if v == "" else v) for k, v in rf.job.items()}
    world = int(rf.attrs.get(schema.A_WORLD_SIZE) or len({r.global_rank for r in ranks}))
    problems = list(rf.attrs.get("problems") or [])
    return RunInfo(run_dir, schema.RUN_FILE, "merged", ranks, world, job, rf.attrs, problems)


def _merged_stats(run_dir: str, rf, ranks: list[RankInfo]) -> None:
    """Series statistics from provenance.json (one entity per series of each rank), else from run.h5."""
    by_stem = {r.stem: r for r in ranks}
    stats = _stats_from_prov(os.path.join(run_dir, schema.PROV_FILE))
    if stats is not None:
        for (g, a), items in stats.items():
            r = by_stem.get(schema.rank_file_name(g, a)[:-3])
            if r is not None:
                r.series = items
        return
    import numpy as np

    from ..h5 import open_h5

    with open_h5(rf.path, "r") as f:
        for ctx, name, stem, path in rf.series:
            r = by_stem.get(stem)
            if r is None:
                continue
            ds = f[path]
            data = ds[()]
            kind = ds.parent.attrs.get("kind", schema.KIND_METRIC)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            st = SeriesStat(ctx, name, kind, count=len(data))
            if len(data):
                v = data["value"]
                fin = v[np.isfinite(v)]
                st.nonfinite = int(len(v) - len(fin))
                st.min, st.max = (float(fin.min()), float(fin.max())) if len(fin) else (None, None)
                st.last, st.last_step = float(v[-1]), int(data["step"][-1])
                st.first_time, st.last_time = float(data["time"][0]), float(data["time"][-1])
            r.series.append(st)


def _stats_from_prov(path: str) -> dict[tuple[int, int], list[SeriesStat]] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    from ..provenance.vocab import VOCAB_URI

    prefix = next((p for p, uri in (doc.get("prefix") or {}).items() if uri == VOCAB_URI), None)
    if prefix is None:
        return None
    p = prefix + ":"
    types = {f"{p}MetricSeries", f"{p}SystemSeries"}
    out: dict[tuple[int, int], list[SeriesStat]] = {}
    for ent in (doc.get("entity") or {}).values():
        t = ent.get("prov:type")
        if _lit(t) not in types:
            continue
        count = _num(ent.get(p + "count"), int) or 0
        last = _num(ent.get(p + "last"), float)
        if last is None and ent.get(p + "last_nonfinite") is not None:
            last = float(_lit(ent.get(p + "last_nonfinite")))
        st = SeriesStat(
            str(_lit(ent.get(p + "context"))),
            str(_lit(ent.get(p + "name"))),
            str(_lit(ent.get(p + "kind"))),
            _lit(ent.get(p + "unit")),
            count,
            _num(ent.get(p + "nonfinite"), int) or 0,
            _num(ent.get(p + "min"), float),
            _num(ent.get(p + "max"), float),
            last,
            _num(ent.get(p + "last_step"), int),
            _time(ent.get(p + "first_time")),
            _time(ent.get(p + "last_time")),
        )
        key = (_num(ent.get(p + "global_rank"), int) or 0, _num(ent.get(p + "attempt"), int) or 0)
        out.setdefault(key, []).append(st)
    return out


def _lit(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("$")
    if isinstance(value, list):
        return _lit(value[0]) if value else None
    return value


def _num(value: Any, kind: type) -> Any:
    value = _lit(value)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> float | None:
    value = _lit(value)
    if not isinstance(value, str):
        return None
    try:
        return _dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# ---- the summary -----------------------------------------------------------------------------------------------
def summarize(run_dir: str | os.PathLike, *, listed: int = LISTED) -> dict[str, Any]:
    """Describe a run directory as a JSON-able dict (see docs/report.md, "inspect").

    Args:
        run_dir: the run directory (running, unmerged, merged or requeued).
        listed: at most this many ranks are named per status group (the counts are always complete).

    Raises:
        ConfigError: run_dir is not a run directory.
    """
    return summarize_info(load_run(run_dir), listed=listed)


def summarize_info(info: RunInfo, *, listed: int = LISTED) -> dict[str, Any]:
    """:func:`summarize` of an already loaded run."""
    main = info.main_rank()
    a = main.attrs if main is not None else {}
    latest = info.latest()
    return {
        "run_dir": info.run_dir,
        "run_id": str(
            a.get(schema.A_RUN_ID) or info.run_attrs.get(schema.A_RUN_ID) or os.path.basename(info.run_dir)
        ),
        "experiment": str(a.get(schema.A_EXPERIMENT) or os.path.basename(os.path.dirname(info.run_dir))),
        "source": info.source,
        "state": info.state,
        "job": _job_section(info),
        "ranks": _ranks_section(info, listed),
        "series": series_table(latest),
        "params": params_of(latest),
        "artifacts": artifacts_of(info.ranks),
        "energy": energy_totals(info.ranks),
        "files": file_sizes(info.run_dir),
        "problems": info.problems[:20],
        "problems_total": len(info.problems),
        "software": {
            "prov4ml_hpc": a.get(schema.A_PACKAGE_VERSION),
            "python": a.get(schema.A_PYTHON_VERSION),
        },
        "script": script_of(info),
    }


def time_span(ranks: list[RankInfo]) -> tuple[float | None, float | None]:
    starts = [r.attrs.get(schema.A_START_UNIX) for r in ranks]
    ends = [r.attrs.get(schema.A_END_UNIX) or r.attrs.get(schema.A_LAST_FLUSH_UNIX) for r in ranks]
    starts = [float(t) for t in starts if isinstance(t, int | float)]
    ends = [float(t) for t in ends if isinstance(t, int | float)]
    return (min(starts) if starts else None), (max(ends) if ends else None)


def script_of(info: RunInfo) -> str | None:
    """The training script (argv[0] of the main rank), or None."""
    main = info.main_rank()
    argv = main.attrs.get(schema.A_ARGV) if main is not None else None
    return str(argv[0]) if isinstance(argv, list) and argv and argv[0] else None


def _job_section(info: RunInfo) -> dict[str, Any]:
    j = info.job
    start, end = time_span(info.ranks)
    running = info.state == "running"
    if running and start is not None:
        end = time.time()
    gpus = j.get("gpus")
    if not gpus:
        n = (
            {
                (r.node, g.get("uuid") or g.get("index"))
                for r in info.ranks
                for g in (r.attrs.get(schema.A_HARDWARE) or {}).get("gpus", [])
                if isinstance(g, dict)
            }
            if all(isinstance(r.attrs.get(schema.A_HARDWARE, {}), dict) for r in info.ranks)
            else set()
        )
        gpus = len(n) or None
    nodes = list(j.get("nodes") or [])
    if not nodes:
        nodes = sorted({r.node for r in info.ranks if r.node})
    return {
        "job_id": j.get("job_id"),
        "name": j.get("name"),
        "state": j.get("state") or _derived_state(info),
        "user": j.get("user") or (info.main_rank().attrs.get("user") if info.main_rank() else None),
        "partition": j.get("partition"),
        "nodes": nodes[:50],
        "nnodes": j.get("nnodes") or len(nodes) or None,
        "ranks": info.world_size,
        "gpus": gpus,
        "elapsed": j.get("elapsed"),
        "elapsed_s": (end - start) if start is not None and end is not None else None,
        "start": _iso(start) if start is not None else None,
        "end": _iso(end) if end is not None and not running else None,
        "attempts": info.attempts,
        "exit_code": j.get("exit_code"),
        "time_limit": j.get("time_limit"),
    }


def _derived_state(info: RunInfo) -> str:
    statuses = {r.status for r in info.latest()}
    if STATUS_RUNNING in statuses:
        return "RUNNING (from rank statuses)"
    if statuses == {schema.STATUS_COMPLETED}:
        return "COMPLETED (from rank statuses)"
    worst = next(s for s in reversed(STATUS_ORDER) if s in statuses) if statuses & set(STATUS_ORDER) else "?"
    return f"{worst.upper()} (from rank statuses)"


def _ranks_section(info: RunInfo, listed: int) -> dict[str, Any]:
    attempts = {}
    for attempt in info.attempts:
        groups: dict[str, dict[str, Any]] = {}
        for r in (x for x in info.ranks if x.attempt == attempt):
            g = groups.setdefault(r.status, {"count": 0, "ranks": [], "reasons": {}})
            g["count"] += 1
            if len(g["ranks"]) < listed:
                g["ranks"].append(r.global_rank)
            if r.reason and r.status != schema.STATUS_COMPLETED:
                key = _reason_key(r.reason)
                if key in g["reasons"] or len(g["reasons"]) < listed:
                    g["reasons"][key] = g["reasons"].get(key, 0) + 1
        order = {s: i for i, s in enumerate(STATUS_ORDER)}
        attempts[str(attempt)] = dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], 99)))
    nodes = {r.node for r in info.ranks if r.node}
    return {
        "world_size": info.world_size,
        "nodes": len(nodes),
        "attempts": attempts,
        "rows": sum(r.rows for r in info.ranks),
    }


def _reason_key(reason: str) -> str:
    """Reasons that differ only in numbers (rows, times) are grouped: digits become #."""
    import re

    return re.sub(r"\d+(\.\d+)?", "#", reason)[:300]


def series_table(ranks: list[RankInfo]) -> list[dict[str, Any]]:
    """One entry per (context, name) over the given ranks: ranks, count, last (mean of the ranks' last values),
    best (min or max over all finite values, ``best_rule`` says which), last step, non-finite count."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ranks:
        for s in r.series:
            e = acc.setdefault(
                (s.context, s.name),
                {
                    "context": s.context,
                    "name": s.name,
                    "kind": s.kind,
                    "unit": s.unit,
                    "ranks": 0,
                    "count": 0,
                    "nonfinite": 0,
                    "_lasts": [],
                    "min": None,
                    "max": None,
                    "last_step": None,
                },
            )
            e["ranks"] += 1
            e["count"] += s.count
            e["nonfinite"] += s.nonfinite
            if s.last is not None and math.isfinite(s.last):
                e["_lasts"].append(s.last)
            if s.min is not None:
                e["min"] = s.min if e["min"] is None else min(e["min"], s.min)
            if s.max is not None:
                e["max"] = s.max if e["max"] is None else max(e["max"], s.max)
            if s.last_step is not None:
                e["last_step"] = s.last_step if e["last_step"] is None else max(e["last_step"], s.last_step)
    out = []
    for (_, _), e in sorted(acc.items(), key=lambda kv: (kv[1]["kind"] != schema.KIND_METRIC, kv[0])):
        lasts = e.pop("_lasts")
        e["last"] = sum(lasts) / len(lasts) if lasts else None
        e["last_range"] = [min(lasts), max(lasts)] if len(lasts) > 1 else None
        metric = e["kind"] == schema.KIND_METRIC
        e["best_rule"] = best_rule(e["name"]) if metric else None
        e["best"] = (e["min"] if e["best_rule"] == "min" else e["max"]) if metric else None
        out.append(e)
    return out


def params_of(ranks: list[RankInfo]) -> dict[str, Any]:
    """Parameters by name (context/name when a context is set); a parameter whose value differs between
    ranks is {"differs": true, "values": {value: n_ranks, ...}} (at most 10 values)."""
    seen: dict[str, dict[str, int]] = {}
    raw: dict[str, dict[str, Any]] = {}
    for r in ranks:
        mine: dict[str, Any] = {}
        for rec in r.records:
            if rec.get("type") == schema.REC_PARAM:
                key = f"{rec['context']}/{rec['name']}" if rec.get("context") else str(rec.get("name"))
                mine[key] = rec.get("value")
        for key, value in mine.items():
            text = json.dumps(value, sort_keys=True, default=str)
            counts = seen.setdefault(key, {})
            counts[text] = counts.get(text, 0) + 1
            raw.setdefault(key, {})[text] = value
    out: dict[str, Any] = {}
    for key in sorted(seen):
        counts = seen[key]
        if len(counts) == 1:
            out[key] = next(iter(raw[key].values()))
        else:
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
            out[key] = {"differs": True, "values": {t: n for t, n in top}}
    return out


def artifacts_of(ranks: list[RankInfo]) -> list[dict[str, Any]]:
    """Artifacts, models and datasets grouped by (kind, name, role) with the ranks that logged them."""
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in ranks:
        for rec in r.records:
            kind = rec.get("type")
            if kind not in (schema.REC_ARTIFACT, schema.REC_MODEL, schema.REC_DATASET):
                continue
            role = str(rec.get("role") or "output")
            e = acc.setdefault(
                (str(kind), str(rec.get("name")), role),
                {
                    "kind": kind,
                    "name": rec.get("name"),
                    "role": role,
                    "ranks": 0,
                    "attempts": set(),
                    "bytes": 0,
                    "sha256": set(),
                    "paths": [],
                },
            )
            e["ranks"] += 1
            e["attempts"].add(r.attempt)
            e["bytes"] += int(rec.get("size") or 0)
            if rec.get("sha256"):
                e["sha256"].add(rec["sha256"])
            if rec.get("path") and len(e["paths"]) < 3:
                e["paths"].append(rec["path"])
    out = []
    for e in acc.values():
        e["attempts"] = sorted(e["attempts"])
        e["distinct_sha256"] = len(e.pop("sha256"))
        out.append(e)
    return sorted(out, key=lambda e: (e["kind"], e["name"], e["role"]))


def energy_totals(ranks: list[RankInfo]) -> dict[str, Any]:
    """Energy and emissions of the job from the ranks' ``totals``: numbers summed over ranks (they are recorded
    once per node), GPU energy per GPU UUID counted once (several ranks of a node can report one GPU)."""
    out: dict[str, Any] = {}
    gpu: dict[str, float] = {}
    for r in ranks:
        totals = r.attrs.get(schema.A_TOTALS)
        if not isinstance(totals, dict):
            continue
        for key, value in totals.items():
            if key == "gpu_energy_j" and isinstance(value, dict):
                for uuid, joules in value.items():
                    if isinstance(joules, int | float):
                        gpu[uuid] = max(gpu.get(uuid, 0.0), float(joules))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    if gpu:
        out["gpu_energy_j"] = sum(gpu.values())
        out["gpus_measured"] = len(gpu)
    return dict(sorted(out.items()))


def file_sizes(run_dir: str) -> dict[str, Any]:
    """Bytes on disk per part of the run directory (rank files, run.h5, provenance.json, artifacts, report)."""
    out: dict[str, Any] = {}
    for name in (schema.RUN_FILE, schema.PROV_FILE, "ro-crate-metadata.json"):
        p = os.path.join(run_dir, name)
        if os.path.exists(p):
            out[name] = os.path.getsize(p)
    for sub in (schema.RANKS_DIR, schema.ARTIFACTS_DIR, schema.REPORT_DIR):
        total, n = 0, 0
        for root, _, files in os.walk(os.path.join(run_dir, sub)):
            for fn in files:
                try:
                    total += os.path.getsize(os.path.join(root, fn))
                    n += 1
                except OSError:
                    pass
        if n:
            out[sub] = {"files": n, "bytes": total}
    out["total_bytes"] = sum(v if isinstance(v, int) else v["bytes"] for v in out.values())
    return out


# ---- text ------------------------------------------------------------------------------------------------------
def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.6g}"
    return str(v)


def format_summary(d: dict[str, Any], *, max_series: int = 40, max_params: int = 40) -> str:
    """The summary as a terminal screen (plain text, about 40-80 lines whatever the number of ranks)."""
    j, lines = d["job"], []
    title = f"run {d['run_id']} (experiment {d['experiment']})"
    lines += [
        title,
        "=" * len(title),
        f"directory  {d['run_dir']}",
        f"read from  {d['source']} ({d['state']})",
    ]
    job_id = j.get("job_id") or "- (not a SLURM job)"
    lines.append(
        f"job        {job_id}" + (f"  {j['name']}" if j.get("name") else "") + f"   state {j.get('state')}"
    )
    nodes = j.get("nodes") or []
    shown = ", ".join(nodes[:4]) + (f", ... ({len(nodes)})" if len(nodes) > 4 else "")
    lines.append(
        f"resources  {j.get('ranks')} ranks on {j.get('nnodes') or '?'} node(s) [{shown}], GPUs: "
        f"{j.get('gpus') or 0}"
    )
    elapsed = j.get("elapsed") or human_seconds(j.get("elapsed_s"))
    lines.append(f"time       {j.get('start') or '-'} -> {j.get('end') or 'now'}  (elapsed {elapsed})")
    if len(j.get("attempts") or []) > 1:
        lines.append(
            f"attempts   {len(j['attempts'])} (requeued; attempt indices "
            f"{', '.join(str(a) for a in j['attempts'])}, 0 is the first run)"
        )
    lines += ["", "ranks"]
    for attempt, groups in d["ranks"]["attempts"].items():
        head = f"  attempt {attempt}: " if len(d["ranks"]["attempts"]) > 1 else "  "
        lines.append(head + ", ".join(f"{g['count']} {status}" for status, g in groups.items()))
        for status, g in groups.items():
            if status == schema.STATUS_COMPLETED:
                continue
            more = f", ... (+{g['count'] - len(g['ranks'])})" if g["count"] > len(g["ranks"]) else ""
            lines.append(f"    {status}: ranks {', '.join(map(str, g['ranks']))}{more}")
            for reason, n in g["reasons"].items():
                lines.append(f"      {n} x {reason[:160]}")
    lines += ["", "series (latest attempt; last = mean over ranks of their last value)"]
    series = d["series"]
    if series:
        w = max(len(f"{s['context']}/{s['name']}") for s in series[:max_series])
        w = min(max(w, 6), 48)
        lines.append(
            f"  {'series':<{w}} {'ranks':>5} {'values':>9} {'last step':>9} {'last':>12} {'best':>16}"
        )
        for s in series[:max_series]:
            key = f"{s['context']}/{s['name']}"[:w]
            best = f"{fmt_value(s['best'])} {s['best_rule']}" if s["best_rule"] else "-"
            lines.append(
                f"  {key:<{w}} {s['ranks']:>5} {s['count']:>9} {fmt_value(s['last_step']):>9} "
                f"{fmt_value(s['last']):>12} {best:>16}"
            )
        if len(series) > max_series:
            lines.append(f"  ... {len(series) - max_series} more series (--json lists all)")
    else:
        lines.append("  none")
    params = d["params"]
    lines += ["", f"parameters ({len(params)})"]
    for key in list(params)[:max_params]:
        value = params[key]
        if isinstance(value, dict) and value.get("differs"):
            text = "differs between ranks: " + ", ".join(
                f"{v} ({n})" for v, n in list(value["values"].items())[:4]
            )
        else:
            text = json.dumps(value, default=str)
        lines.append(f"  {key} = {text[:100]}")
    if len(params) > max_params:
        lines.append(f"  ... {len(params) - max_params} more")
    arts = d["artifacts"]
    lines += ["", f"artifacts, models, datasets ({len(arts)})"]
    for e in arts[:20]:
        lines.append(
            f"  {e['kind']:<8} {e['role']:<6} {e['name']}  x{e['ranks']} ranks, {human_bytes(e['bytes'])}"
        )
    energy = d["energy"]
    if energy:
        lines += ["", "energy"]
        for key, label, scale, unit in (
            ("energy_kwh", "energy", 1.0, "kWh"),
            ("emissions_kg_co2eq", "emissions", 1.0, "kg CO2eq"),
            ("gpu_energy_j", "GPU energy (NVML)", 1 / 3.6e6, "kWh"),
            ("rapl_energy_j", "RAPL energy", 1 / 3.6e6, "kWh"),
        ):
            if isinstance(energy.get(key), int | float):
                lines.append(f"  {label:<18} {energy[key] * scale:.6g} {unit}")
    f = d["files"]
    lines += ["", "files"]
    for key, value in f.items():
        if key == "total_bytes":
            continue
        if isinstance(value, dict):
            lines.append(f"  {key + '/':<24} {human_bytes(value['bytes']):>10}  ({value['files']} files)")
        else:
            lines.append(f"  {key:<24} {human_bytes(value):>10}")
    lines.append(f"  {'total':<24} {human_bytes(f['total_bytes']):>10}")
    if d["problems_total"]:
        lines += ["", f"problems ({d['problems_total']})"]
        lines += [f"  {p[:200]}" for p in d["problems"][:10]]
    return "\n".join(lines) + "\n"


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds")
