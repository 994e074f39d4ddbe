"""Rank files as the merge sees them (found, verdict, header) and the RunSummary built from them.

A header holds what is small (attributes, series definitions, records); the rows stay in the file.  Verdicts:
a cleanly closed file keeps its own status (completed, failed, cancelled, signalled); a file still marked
"running" was left by a dead process: "partial", with its rows up to the last flush; a file that cannot be read:
"corrupt"; an expected rank (from the files' world_size) with no file: "missing".
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from .._version import __version__
from ..errors import RankFileError
from ..job.jobinfo import JobInfo
from .model import ArtifactRecord, ContextSpan, ParamRecord, RankSummary, RunSummary, SeriesSummary
from .reader import RankFile, SeriesDef, read_rank_file
from .runfile import rank_stem

BAD_STATUSES = (schema.STATUS_PARTIAL, schema.STATUS_MISSING, schema.STATUS_CORRUPT)
_FILE_KEYS = ("path", "copy", "sha256", "size", "step", "attrs")


@dataclass(frozen=True)
class Found:
    """A rank file found in ranks/ (or an expected one that is missing: path None)."""

    global_rank: int
    attempt: int
    path: str | None  # absolute
    relpath: str | None  # relative to the run directory

    @property
    def stem(self) -> str:
        return rank_stem(self.global_rank, self.attempt)


@dataclass
class RankHeader:
    """Small, picklable facts about one rank file (sent to the root process in a parallel merge)."""

    found: Found
    status: str  # the merge's verdict
    reason: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    series: list[SeriesDef] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    nrows: int = 0
    read_problems: list[str] = field(default_factory=list)


def discover(run_dir: str) -> list[Found]:
    """Rank files under run_dir/ranks, sorted by (attempt, global_rank); [] when there are none."""
    from .reader import discover_rank_files

    return [
        Found(rank, attempt, os.path.join(run_dir, rel), rel)
        for rank, attempt, rel in discover_rank_files(run_dir)
    ]


def open_rank(found: Found) -> tuple[RankHeader, RankFile | None]:
    """Read a rank file's header; a file that cannot be read gives a "corrupt" header and no RankFile."""
    assert found.path is not None
    try:
        rf = read_rank_file(found.path)
    except RankFileError as exc:
        return RankHeader(found, schema.STATUS_CORRUPT, str(exc)), None
    status, reason = rf.status, rf.attrs.get(schema.A_STATUS_REASON) or None
    if not rf.closed_cleanly:
        flushed = rf.attrs.get(schema.A_LAST_FLUSH_UNIX)
        when = _iso(flushed) if isinstance(flushed, int | float) else "an unknown time"
        status = schema.STATUS_PARTIAL
        reason = (
            f"the process stopped without closing its rank file (status {rf.status!r}: killed, crashed or "
            f"still running); {rf.nrows} rows up to the last flush at {when} recovered"
        )
    if rf.read_path not in (None, rf.path):
        status = schema.STATUS_PARTIAL
        reason = (
            f"the file is truncated (a write failed or it was cut short; file status {rf.status!r}); "
            f"{rf.nrows} rows recovered from what remains"
        )
    if (rf.global_rank, rf.attempt) != (found.global_rank, found.attempt):
        rf.problems.append(
            f"its attributes say rank {rf.global_rank} attempt {rf.attempt}; the file name wins"
        )
    return RankHeader(found, status, reason, rf.attrs, rf.series, rf.records, rf.nrows, list(rf.problems)), rf


def add_missing(headers: list[RankHeader]) -> tuple[list[RankHeader], int, list[str]]:
    """Add "missing" headers for expected ranks with no file, per attempt.  Returns (headers, world_size, notes)."""
    notes: list[str] = []
    sizes = [int(h.attrs.get(schema.A_WORLD_SIZE, 0) or 0) for h in headers]
    world = max(sizes, default=0) or (max((h.found.global_rank for h in headers), default=-1) + 1)
    out = list(headers)
    for attempt in sorted({h.found.attempt for h in headers}):
        mine = [h for h in headers if h.found.attempt == attempt]
        expected = max((int(h.attrs.get(schema.A_WORLD_SIZE, 0) or 0) for h in mine), default=0) or world
        have = {h.found.global_rank for h in mine}
        for rank in range(expected):
            if rank not in have:
                out.append(
                    RankHeader(
                        Found(rank, attempt, None, None),
                        schema.STATUS_MISSING,
                        f"no rank file for rank {rank} of {expected} (attempt {attempt})",
                    )
                )
        extra = sorted(r for r in have if r >= expected)
        if extra:
            notes.append(f"attempt {attempt}: rank files {extra} are beyond the world size {expected}")
    return sorted(out, key=lambda h: (h.found.attempt, h.found.global_rank)), world, notes


def run_problems(headers: list[RankHeader]) -> list[str]:
    out = []
    for h in headers:
        name = h.found.relpath or h.found.stem
        if h.status in BAD_STATUSES:
            out.append(f"{h.status} {name}: {h.reason}")
        out.extend(f"{name}: {p}" for p in h.read_problems)
    return out


# ---- the RunSummary --------------------------------------------------------------------------------------
def rank_summary(h: RankHeader, series: list[SeriesSummary], rows: int) -> RankSummary:
    a = h.attrs
    end = a.get(schema.A_END_UNIX)
    if h.status == schema.STATUS_PARTIAL or not isinstance(end, int | float):
        end = a.get(schema.A_LAST_FLUSH_UNIX)
    r = RankSummary(
        global_rank=h.found.global_rank,
        attempt=h.found.attempt,
        status=h.status,
        reason=h.reason,
        file=h.found.relpath,
        local_rank=_int(a.get(schema.A_LOCAL_RANK)),
        node=a.get(schema.A_NODE) or None,
        pid=_int(a.get(schema.A_PID)),
        start_time=_float(a.get(schema.A_START_UNIX)),
        end_time=_float(end),
        rows=rows,
        meta=dict(a),
        series=series,
        problems=dict(a[schema.A_PROBLEMS]) if isinstance(a.get(schema.A_PROBLEMS), dict) else {},
        totals=dict(a[schema.A_TOTALS]) if isinstance(a.get(schema.A_TOTALS), dict) else {},
    )
    rank = r.global_rank
    for rec in h.records:
        kind, t = rec.get("type"), _float(rec.get("time")) or 0.0
        if kind == schema.REC_PARAM:
            role = rec.get("role") if rec.get("role") in ("input", "output") else None
            attrs = rec.get("attrs") if isinstance(rec.get("attrs"), dict) else {}
            r.params.append(
                ParamRecord(str(rec.get("name")), rec.get("value"), rec.get("context"), rank, t, role, attrs)
            )
        elif kind in (schema.REC_ARTIFACT, schema.REC_MODEL, schema.REC_DATASET):
            extra = {
                k: v
                for k, v in rec.items()
                if k not in ("type", "name", "role", "context", "time", *_FILE_KEYS)
            }
            r.artifacts.append(
                ArtifactRecord(
                    name=str(rec.get("name")),
                    kind=kind,
                    role=str(rec.get("role") or "output"),
                    context=rec.get("context"),
                    global_rank=rank,
                    time=t,
                    path=rec.get("path"),
                    copy=rec.get("copy"),
                    sha256=rec.get("sha256"),
                    size=_int(rec.get("size")),
                    step=_int(rec.get("step")),
                    attrs={**(rec.get("attrs") or {}), **extra},
                )
            )
        elif kind == schema.REC_EVENT:
            r.events.append(rec)
    r.contexts = _contexts(series, h.records)
    return r


def _contexts(series: list[SeriesSummary], records: list[dict[str, Any]]) -> list[ContextSpan]:
    spans: dict[str, list[float]] = {}
    for x in series:
        if x.kind == schema.KIND_SYSTEM or x.first_time is None or x.last_time is None:
            continue
        spans.setdefault(x.context, []).extend((x.first_time, x.last_time))
    for rec in records:
        ctx, t = rec.get("context"), _float(rec.get("time"))
        if isinstance(ctx, str) and t is not None and rec.get("type") != schema.REC_PROBLEM:
            spans.setdefault(ctx, []).append(t)
    return [ContextSpan(name, min(ts), max(ts)) for name, ts in sorted(spans.items())]


def build_run_summary(
    run_dir: str,
    headers: list[RankHeader],
    ranks: list[RankSummary],
    world: int,
    job: JobInfo,
    problems: list[str],
) -> RunSummary:
    main = _main_header(headers)
    a = main.attrs if main is not None else {}
    totals: dict[str, Any] = {}
    for r in ranks:
        _sum_into(totals, r.totals)
    return RunSummary(
        run_id=str(a.get(schema.A_RUN_ID) or os.path.basename(run_dir)),
        experiment=str(a.get(schema.A_EXPERIMENT) or os.path.basename(os.path.dirname(run_dir))),
        run_dir=run_dir,
        job=job,
        ranks=ranks,
        world_size=world,
        software_version=str(a.get(schema.A_PACKAGE_VERSION) or __version__),
        user=a.get("user") or None,
        problems=problems,
        totals=totals,
    )


def _main_header(headers: list[RankHeader]) -> RankHeader | None:
    """The header that describes the job: the lowest readable rank of the latest attempt."""
    readable = [h for h in headers if h.attrs]
    if not readable:
        return None
    last = max(h.found.attempt for h in readable)
    return min((h for h in readable if h.found.attempt == last), key=lambda h: h.found.global_rank)


def job_snapshot(headers: list[RankHeader]) -> tuple[dict[str, str] | None, str | None]:
    main = _main_header(headers)
    if main is None:
        return None, None
    snap = main.attrs.get("slurm")
    job_id = main.attrs.get(schema.A_JOB_ID)
    return (snap if isinstance(snap, dict) else None), (str(job_id) if job_id not in (None, "") else None)


def _sum_into(acc: dict[str, Any], totals: dict[str, Any]) -> None:
    """Add numeric leaves (energy, emissions); nested dicts (per GPU) are summed key by key."""
    for key, value in totals.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            prev = acc.get(key, 0)
            if isinstance(prev, int | float):
                acc[key] = prev + value
        elif isinstance(value, dict):
            sub = acc.setdefault(key, {})
            if isinstance(sub, dict):
                _sum_into(sub, value)


def _int(v: Any) -> int | None:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat()
