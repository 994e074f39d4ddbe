"""Stream one rank file into the merged file: rows in bounded blocks, split by series, appended per series.

Memory is bounded by a few blocks of rows whatever the size of the rank file: rows are read ``block_rows`` at
a time, sorted by series (stable: logging order is kept), held per series until PENDING_BLOCKS blocks are
pending, then written.  A series that ends before anything was written gets an exactly sized contiguous dataset;
a bigger one a chunked, growing dataset.  The series' summary (count, steps, min/max, last, ...) is updated
from each block; :func:`scan_rank` computes the same summaries without writing (the readers of an unmerged run).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import schema
from . import runfile
from .model import SeriesSummary
from .reader import RankFile
from .stats import StepStats

CHUNK_ROWS = 65536
PENDING_BLOCKS = 1  # rows held before writing: most rank files are written in one go, exactly sized


class _SeriesState:
    __slots__ = ("summary", "path", "pending", "pending_rows", "ds")

    def __init__(self, summary: SeriesSummary, path: str) -> None:
        self.summary = summary
        self.path = path
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.ds = None


def new_summaries(rf: RankFile, stem: str | None) -> list[SeriesSummary]:
    """One empty SeriesSummary per series of the rank file (dataset paths in run.h5 set when stem is given)."""
    return [
        SeriesSummary(
            name=s.name,
            context=s.context,
            kind=s.kind,
            global_rank=rf.global_rank,
            unit=s.unit,
            dataset=runfile.series_path(s.context, s.name, stem) if stem is not None else None,
        )
        for s in rf.series
    ]


def _split(rf: RankFile, block_rows: int):
    """Blocks of trusted rows sorted by series (stable): (rows, counts per series, steps, values, times, finite)."""
    nseries = len(rf.series)
    for block in rf.iter_rows(block_rows):
        n = len(block)
        if not n:
            continue
        sid = block["series"]
        counts = np.bincount(sid, minlength=nseries)
        steps, values, times = (np.ascontiguousarray(block[f]) for f in ("step", "value", "time"))
        if not bool((sid[1:] >= sid[:-1]).all()):  # stable sort by series: logging order kept per series
            order = np.argsort(sid.astype(np.uint16) if nseries <= 65535 else sid, kind="stable")
            steps, values, times = steps.take(order), values.take(order), times.take(order)
        yield n, counts, steps, values, times, np.isfinite(values)


def scan_rank(rf: RankFile, *, block_rows: int = 1_000_000) -> tuple[list[SeriesSummary], int]:
    """The series statistics of a rank file without writing anything: the same numbers :func:`stream_rank` gives.

    Returns the series summaries (no dataset paths) and the number of trusted rows.
    """
    summaries = new_summaries(rf, None)
    rows = 0
    for n, counts, steps, values, times, finite in _split(rf, block_rows):
        lo = 0
        for i in np.flatnonzero(counts):
            hi = lo + int(counts[i])
            _update_summary(summaries[i], steps[lo:hi], values[lo:hi], times[lo:hi], finite[lo:hi])
            lo = hi
        rows += n
    return summaries, rows


def stream_rank(
    rf: RankFile,
    stem: str,
    out,
    *,
    block_rows: int,
    on_rows: Callable[[int], None] | None = None,
    on_stats: Callable[[int, dict[int, StepStats]], None] | None = None,
) -> tuple[list[SeriesSummary], int]:
    """Copy every trusted row of ``rf`` into ``out`` (an open, writable h5py File) under /series/.../stem.

    After each block, ``on_stats(block_index, {series id: per-step statistics})`` receives the block's
    statistics of its metric series (a function of the file and the block size alone, whoever computes them).
    Returns the series summaries (dataset paths set) and the number of rows copied.
    """
    states = [_SeriesState(x, x.dataset) for x in new_summaries(rf, stem)]
    out_dtype = runfile.series_dtype()
    pending_total = 0
    rows_done = 0
    is_metric = [s.kind == schema.KIND_METRIC for s in rf.series]
    for nblock, (n, counts, steps, values, times, finite) in enumerate(_split(rf, block_rows)):
        sorted_block = np.empty(n, out_dtype)
        sorted_block["step"], sorted_block["value"], sorted_block["time"] = steps, values, times
        lo = 0
        stats: dict[int, StepStats] = {}
        for i in np.flatnonzero(counts):
            hi = lo + int(counts[i])
            _update_summary(states[i].summary, steps[lo:hi], values[lo:hi], times[lo:hi], finite[lo:hi])
            if is_metric[i]:
                stats[int(i)] = StepStats.from_values(steps[lo:hi], values[lo:hi])
            states[i].pending.append(sorted_block[lo:hi])
            states[i].pending_rows += hi - lo
            lo = hi
        if on_stats is not None and stats:
            on_stats(nblock, stats)
        pending_total += n
        rows_done += n
        if pending_total >= PENDING_BLOCKS * block_rows:
            for st in states:
                _write_pending(out, st, final=False)
            pending_total = 0
        if on_rows is not None:
            on_rows(n)
    for st in states:
        _write_pending(out, st, final=True)
        _set_dataset_attrs(out[st.path], st.summary, rf.attempt)
    return [st.summary for st in states], rows_done


def _update_summary(
    x: SeriesSummary, steps: np.ndarray, values: np.ndarray, times: np.ndarray, finite: np.ndarray
) -> None:
    k = len(steps)
    nfin = int(np.count_nonzero(finite))
    if x.first_step is None:
        x.first_step = int(steps[0])
    x.last_step = int(steps[-1])
    x.count += k
    x.nonfinite += k - nfin
    if nfin:
        fv = values if nfin == k else values[finite]
        lo, hi = float(fv.min()), float(fv.max())
        x.min = lo if x.min is None else min(x.min, lo)
        x.max = hi if x.max is None else max(x.max, hi)
    tmin, tmax = float(times.min()), float(times.max())
    x.first_time = tmin if x.first_time is None else min(x.first_time, tmin)
    if x.last_time is None or tmax >= x.last_time:
        last = k - 1 - int(np.argmax(times[::-1] == tmax))  # the last row with the latest time
        x.last_time = tmax
        x.last = float(values[last])


def _write_pending(out, st: _SeriesState, *, final: bool) -> None:
    if st.ds is None and not (final or st.pending_rows):
        return
    data = np.concatenate(st.pending) if len(st.pending) > 1 else (st.pending[0] if st.pending else None)
    st.pending, st.pending_rows = [], 0
    if st.ds is None:
        x = st.summary
        group = runfile.require_series_group(out, schema.G_SERIES, x.context, x.name, x.kind, x.unit)
        leaf = st.path.rsplit("/", 1)[1]
        if final:  # the whole series is known: exactly sized, contiguous
            st.ds = group.create_dataset(
                leaf, data=data if data is not None else np.empty(0, runfile.series_dtype())
            )
            return
        st.ds = group.create_dataset(
            leaf, shape=(0,), maxshape=(None,), dtype=runfile.series_dtype(), chunks=(CHUNK_ROWS,)
        )
    if data is None or not len(data):
        return
    start = st.ds.shape[0]
    st.ds.resize((start + len(data),))
    st.ds[start:] = data


def _set_dataset_attrs(ds, x: SeriesSummary, attempt: int) -> None:
    def num(v: float | None) -> float:
        return math.nan if v is None else v

    runfile.set_attrs(
        ds,
        {
            schema.A_NAME: x.name,
            schema.A_CONTEXT: x.context,
            schema.A_KIND: x.kind,
            schema.A_UNIT: x.unit,
            schema.A_GLOBAL_RANK: x.global_rank,
            schema.A_ATTEMPT: attempt,
            schema.A_COUNT: x.count,
            schema.A_NONFINITE: x.nonfinite,
            schema.A_FIRST_STEP: -1 if x.first_step is None else x.first_step,
            schema.A_LAST_STEP: -1 if x.last_step is None else x.last_step,
            schema.A_MIN: num(x.min),
            schema.A_MAX: num(x.max),
            schema.A_LAST: num(x.last),
            schema.A_FIRST_TIME: num(x.first_time),
            schema.A_LAST_TIME: num(x.last_time),
        },
    )
