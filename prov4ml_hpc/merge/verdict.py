"""The verdict on every rank of a run: which rank files there are, what state each one is in, which are missing.

One place decides, for the merge and for every reader:

- a cleanly closed file keeps its own status (completed, failed, cancelled, signalled);
- a file still marked ``running``: ``running`` when the caller asks about live writers (``live=True``) and its
  writer is alive (same host: the pid is alive and started before the file; another host: flushed within
  ALIVE_SECONDS), else ``partial``, with its rows up to the last flush; a truncated file is ``partial`` too;
- a file that cannot be read: ``corrupt``; an expected rank (0 .. world_size-1 of its attempt, from the files'
  ``world_size``) with no file: ``missing``.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from typing import Any

from .. import schema
from ..errors import RankFileError
from .model import BAD_STATUSES, ArtifactRecord, ContextSpan, ParamRecord, RankSummary, SeriesSummary
from .reader import RankFile, discover_rank_files, read_rank_file

ALIVE_SECONDS = 60.0  # a "running" file of another host flushed this recently counts as a live writer
_FILE_KEYS = ("path", "copy", "sha256", "size", "step", "attrs")


def discover(run_dir: str) -> list[tuple[int, int, str]]:
    """(global_rank, attempt, path relative to run_dir) of every rank file, sorted by (attempt, global_rank)."""
    return discover_rank_files(run_dir)


def open_rank(
    run_dir: str, global_rank: int, attempt: int, rel: str, *, live: bool = False
) -> tuple[RankSummary, RankFile | None]:
    """Read one rank file's header and give its verdict; a file that cannot be read is "corrupt" (no RankFile).

    The series come without statistics (count 0): the merge and the loaders fill them from the rows.
    """
    path = os.path.join(run_dir, rel)
    r = RankSummary(global_rank, attempt, file=rel)
    try:
        st = os.stat(path)  # before reading: a write after this makes the file newer than what was read
        r.file_size, r.file_mtime_ns = st.st_size, st.st_mtime_ns
        rf = read_rank_file(path)
    except (RankFileError, OSError) as exc:
        r.status, r.reason = schema.STATUS_CORRUPT, str(exc)
        return r, None
    except Exception as exc:  # noqa: BLE001 - a bad rank file is a verdict, never a crash of its reader
        r.status, r.reason = (
            schema.STATUS_CORRUPT,
            f"rank file {path} cannot be read: {type(exc).__name__}: {exc}",
        )
        return r, None
    a = rf.attrs
    r.status, r.reason = rf.status, a.get(schema.A_STATUS_REASON) or None
    if not rf.closed_cleanly:
        r.status, r.reason = unclosed_verdict(a, rf.nrows, live=live)
    if rf.read_path not in (None, rf.path):
        r.status = schema.STATUS_PARTIAL
        r.reason = (
            f"the file is truncated (a write failed or it was cut short; file status {rf.status!r}); "
            f"{rf.nrows} rows recovered from what remains"
        )
    r.read_problems = list(rf.problems)
    if (rf.global_rank, rf.attempt) != (global_rank, attempt):
        r.read_problems.append(
            f"its attributes say rank {rf.global_rank} attempt {rf.attempt}; the file name wins"
        )
    fill_rank(r, a, rf.records)
    r.rows = rf.nrows
    r.series = [
        SeriesSummary(name=s.name, context=s.context, kind=s.kind, global_rank=global_rank, unit=s.unit)
        for s in rf.series
    ]
    return r, rf


def unclosed_verdict(attrs: dict[str, Any], nrows: int, *, live: bool) -> tuple[str, str]:
    """(running or partial, reason) for a rank file its writer did not close."""
    flushed = attrs.get(schema.A_LAST_FLUSH_UNIX)
    if live and writer_alive(attrs):
        return schema.STATUS_RUNNING, f"still writing ({nrows} rows flushed so far)"
    when = _iso(flushed) if isinstance(flushed, int | float) else "an unknown time"
    return schema.STATUS_PARTIAL, (
        f"the process stopped without closing its rank file (status {attrs.get(schema.A_STATUS)!r}: killed, "
        f"crashed or still running); {nrows} rows up to the last flush at {when} recovered"
    )


def writer_alive(attrs: dict[str, Any], *, now: float | None = None) -> bool:
    """Is the process that wrote these rank-file attributes still running?

    On this host: its pid is alive, not a zombie, and started no later than the rank file (a reused pid is
    another process).  On another host (no way to ask): it flushed within ALIVE_SECONDS.
    """
    pid, host = attrs.get(schema.A_PID), attrs.get(schema.A_HOSTNAME)
    if host == socket.gethostname() and isinstance(pid, int):
        return _pid_alive(pid, attrs.get(schema.A_START_UNIX))
    flushed = attrs.get(schema.A_LAST_FLUSH_UNIX)
    now = time.time() if now is None else now
    return isinstance(flushed, int | float) and now - flushed < ALIVE_SECONDS


def _pid_alive(pid: int, started: Any) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc: the signal answered
    if fields[0] in ("Z", "X"):  # killed, not yet reaped
        return False
    if isinstance(started, int | float):
        born = _process_start(int(fields[19]))
        if born is not None and born > started + 2.0:  # the pid was reused by a younger process
            return False
    return True


def _process_start(ticks: int) -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def fill_rank(r: RankSummary, a: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Set a rank's facts from its rank-file attributes and its records (params, artifacts, events)."""
    end = a.get(schema.A_END_UNIX)
    if r.status in (schema.STATUS_PARTIAL, schema.STATUS_RUNNING) or not isinstance(end, int | float):
        end = a.get(schema.A_LAST_FLUSH_UNIX)
    r.local_rank = _int(a.get(schema.A_LOCAL_RANK))
    node = a.get(schema.A_NODE)
    r.node = str(node) if node not in (None, "") else None
    r.pid = _int(a.get(schema.A_PID))
    r.start_time = _float(a.get(schema.A_START_UNIX))
    r.end_time = _float(end)
    r.meta = dict(a)
    r.problems = dict(a[schema.A_PROBLEMS]) if isinstance(a.get(schema.A_PROBLEMS), dict) else {}
    r.totals = dict(a[schema.A_TOTALS]) if isinstance(a.get(schema.A_TOTALS), dict) else {}
    r.records = records
    r.params, r.artifacts, r.events = [], [], []
    rank = r.global_rank
    for rec in records:
        if not isinstance(rec, dict):
            continue
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


def set_contexts(r: RankSummary) -> None:
    """The contexts of a rank with their time spans, from its (metric) series' times and its records."""
    spans: dict[str, list[float]] = {}
    for x in r.series:
        if x.kind == schema.KIND_SYSTEM or x.first_time is None or x.last_time is None:
            continue
        spans.setdefault(x.context, []).extend((x.first_time, x.last_time))
    for rec in r.records:
        if not isinstance(rec, dict):
            continue
        ctx, t = rec.get("context"), _float(rec.get("time"))
        if isinstance(ctx, str) and t is not None and rec.get("type") != schema.REC_PROBLEM:
            spans.setdefault(ctx, []).append(t)
    r.contexts = [ContextSpan(name, min(ts), max(ts)) for name, ts in sorted(spans.items())]


def add_missing(ranks: list[RankSummary]) -> tuple[list[RankSummary], int, list[str]]:
    """Add "missing" ranks for expected ranks with no file, per attempt.  Returns (ranks, world_size, notes).

    The world size of an attempt is the largest ``world_size`` its readable files state; the run's is the
    largest over attempts (with no readable file: the highest rank number seen + 1).
    """
    notes: list[str] = []

    def size(r: RankSummary) -> int:
        return _int(r.meta.get(schema.A_WORLD_SIZE)) or 0

    world = max((size(r) for r in ranks), default=0) or (max((r.global_rank for r in ranks), default=-1) + 1)
    out = list(ranks)
    for attempt in sorted({r.attempt for r in ranks}):
        mine = [r for r in ranks if r.attempt == attempt]
        expected = max((size(r) for r in mine), default=0) or world
        have = {r.global_rank for r in mine}
        for rank in range(expected):
            if rank not in have:
                out.append(
                    RankSummary(
                        rank,
                        attempt,
                        schema.STATUS_MISSING,
                        f"no rank file for rank {rank} of {expected} (attempt {attempt})",
                    )
                )
        extra = sorted(r for r in have if r >= expected)
        if extra:
            notes.append(f"attempt {attempt}: rank files {extra} are beyond the world size {expected}")
    return sorted(out, key=lambda r: (r.attempt, r.global_rank)), world, notes


def problem_lines(ranks: list[RankSummary]) -> list[str]:
    """One line per rank that is partial, missing or corrupt, and per workaround of the reader."""
    out = []
    for r in ranks:
        name = r.file or r.stem
        if r.status in BAD_STATUSES:
            out.append(f"{r.status} {name}: {r.reason}")
        out.extend(f"{name}: {p}" for p in r.read_problems)
    return out


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


def _iso(t: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{t!r} (not a valid time)"
