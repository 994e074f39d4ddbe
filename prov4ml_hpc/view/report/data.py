"""The arrays the report draws, read from run.h5 (aggregates and series) or, before a merge, from the rank files.

Metric series: per-step statistics across the ranks of each attempt (the merge's /aggregates, or the same
StepStats computed here from the rank files) and, for a few ranks, each rank's own values.  System series: the
GPU, node CPU/memory and energy samples, one series per node (and GPU index), deduplicated across the ranks of a
node.  Nothing here is written anywhere; long system series are thinned for display only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import schema
from ...merge.model import SOURCE_RUN_FILE, RunSummary

FEW_RANKS = 8  # per-rank lines are drawn up to this many ranks
MAX_SYSTEM_POINTS = 8000  # a system series longer than this is thinned (min/max per bucket) when loaded
_GPU = re.compile(r"^gpu\.(\d+)\.(utilization|memory_used|memory_total|power)$")
_NODE = ("node.cpu_percent", "node.memory_used")
_ENERGY = ("energy.consumed", "energy.emissions")
Progress = Callable[[int, int, str], None]


@dataclass
class MetricData:
    """One metric (context, name): per-attempt aggregates and, for few ranks, per-rank values."""

    context: str
    name: str
    aggregates: dict[int, Any] = field(
        default_factory=dict
    )  # attempt -> structured (step, count, min, mean, max)
    per_rank: dict[tuple[int, int], tuple[Any, Any]] = field(
        default_factory=dict
    )  # (rank, attempt) -> steps, values
    ranks: int = 0


@dataclass
class SystemSeries:
    """One system series of one node (GPU series: of one GPU of the node), times in Unix seconds."""

    name: str  # e.g. gpu.0.power, node.cpu_percent, energy.consumed
    node: str
    global_rank: int
    attempt: int
    t: Any
    v: Any
    unit: str | None = None


@dataclass
class PlotData:
    metrics: list[MetricData]
    system: list[SystemSeries]
    t0: float | None  # the job's start (Unix seconds), origin of time axes
    nranks: int


def wanted_system(name: str) -> bool:
    return bool(_GPU.match(name)) or name in _NODE or name in _ENERGY


def gpu_field(name: str) -> tuple[int, str] | None:
    m = _GPU.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def load_plot_data(run: RunSummary, *, few: int = FEW_RANKS, progress: Progress | None = None) -> PlotData:
    """Read what the report draws from a loaded run (see :func:`prov4ml_hpc.merge.load.load_run`)."""
    from ...merge.model import time_span

    present = [r for r in run.ranks if r.readable]
    t0, _ = time_span(present)
    per_attempt = {a: sum(1 for r in present if r.attempt == a) for a in run.attempts}
    keep_ranks = max(per_attempt.values(), default=0) <= few
    if run.source == SOURCE_RUN_FILE:
        metrics, system = _from_run_file(run, keep_ranks, progress)
    else:
        metrics, system = _from_rank_files(run, keep_ranks, progress)
    for m in metrics:
        m.ranks = len({g for g, _ in m.per_rank}) if m.per_rank else 0
    return PlotData(metrics, system, t0, len({r.global_rank for r in present}))


def _node_of(run: RunSummary) -> dict[tuple[int, int], tuple[str, int]]:
    return {(r.global_rank, r.attempt): (r.node or "?", r.local_rank or 0) for r in run.ranks if r.readable}


def _dedupe(system: list[SystemSeries], local: dict[tuple[int, int], tuple[str, int]]) -> list[SystemSeries]:
    """One series per (attempt, node, name): the one of the lowest local rank (several ranks see one GPU)."""
    best: dict[tuple[int, str, str], SystemSeries] = {}
    for s in system:
        key = (s.attempt, s.node, s.name)
        cur = best.get(key)
        if (
            cur is None
            or local.get((s.global_rank, s.attempt), ("", 0))[1]
            < local.get((cur.global_rank, cur.attempt), ("", 0))[1]
        ):
            best[key] = s
    return sorted(best.values(), key=lambda s: (s.name, s.node, s.attempt))


def _from_run_file(run: RunSummary, keep_ranks: bool, progress: Progress | None):
    import numpy as np

    from ...h5 import open_h5

    path = os.path.join(run.run_dir, schema.RUN_FILE)
    local = _node_of(run)
    metrics: dict[tuple[str, str], MetricData] = {}
    system: list[SystemSeries] = []
    with open_h5(path, "r") as f:
        for ctx_group in f.get(schema.G_AGGREGATES, {}).values():
            for g in ctx_group.values():
                ctx, name = _s(g.attrs[schema.A_CONTEXT]), _s(g.attrs[schema.A_NAME])
                md = metrics.setdefault((ctx, name), MetricData(ctx, name))
                for leaf, ds in g.items():
                    md.aggregates[int(leaf.split("-", 1)[1])] = ds[()]
        groups = [g for c in f.get(schema.G_SERIES, {}).values() for g in c.values()]
        for i, g in enumerate(groups):
            ctx, name = _s(g.attrs[schema.A_CONTEXT]), _s(g.attrs[schema.A_NAME])
            kind = _s(g.attrs.get(schema.A_KIND, schema.KIND_METRIC))
            if progress is not None:
                progress(i + 1, len(groups), f"{ctx}/{name}")
            if kind == schema.KIND_METRIC:
                md = metrics.setdefault((ctx, name), MetricData(ctx, name))
                if keep_ranks:
                    for stem, ds in g.items():
                        rank, attempt = _stem(stem)
                        data = ds[()]
                        md.per_rank[(rank, attempt)] = (data["step"], data["value"])
                continue
            if not wanted_system(name):
                continue
            unit = _s(g.attrs.get(schema.A_UNIT, "")) or None
            for stem, ds in g.items():
                rank, attempt = _stem(stem)
                node = local.get((rank, attempt), ("?", 0))[0]
                data = ds[()]
                t, v = _thin(np.asarray(data["time"]), np.asarray(data["value"]))
                system.append(SystemSeries(name, node, rank, attempt, t, v, unit))
    return sorted(metrics.values(), key=lambda m: (m.context, m.name)), _dedupe(system, local)


def _from_rank_files(run: RunSummary, keep_ranks: bool, progress: Progress | None):
    import numpy as np

    from ...merge.reader import read_rank_file
    from ...merge.stats import StepStats

    stats: dict[tuple[str, str, int], StepStats] = {}
    metrics: dict[tuple[str, str], MetricData] = {}
    system: list[SystemSeries] = []
    readable = [r for r in run.ranks if r.readable and r.file]
    for i, r in enumerate(readable):
        if progress is not None:
            progress(i + 1, len(readable), r.file or "")
        rf = read_rank_file(os.path.join(run.run_dir, r.file))
        parts: dict[int, list[Any]] = {}
        for rows in rf.iter_rows():
            if not len(rows):
                continue
            order = np.argsort(rows["series"], kind="stable")
            sorted_rows = rows[order]
            ids, starts = np.unique(sorted_rows["series"], return_index=True)
            for sid, chunk in zip(ids, np.split(sorted_rows, starts[1:]), strict=True):
                parts.setdefault(int(sid), []).append(chunk)
        for s in rf.series:
            chunks = parts.get(s.id)
            if not chunks:
                continue
            data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            if s.kind == schema.KIND_METRIC:
                md = metrics.setdefault((s.context, s.name), MetricData(s.context, s.name))
                acc = stats.setdefault((s.context, s.name, r.attempt), StepStats())
                acc.add(StepStats.from_values(data["step"], data["value"]))
                if keep_ranks:
                    md.per_rank[(r.global_rank, r.attempt)] = (data["step"], data["value"])
            elif wanted_system(s.name):
                t, v = _thin(data["time"], data["value"])
                system.append(SystemSeries(s.name, r.node or "?", r.global_rank, r.attempt, t, v, s.unit))
    for (ctx, name, attempt), acc in stats.items():
        metrics[(ctx, name)].aggregates[attempt] = acc.result()
    return sorted(metrics.values(), key=lambda m: (m.context, m.name)), _dedupe(system, _node_of(run))


def _thin(t, v, limit: int = MAX_SYSTEM_POINTS):
    import numpy as np

    t, v = np.asarray(t, np.float64), np.asarray(v, np.float64)
    if len(t) > 1 and not bool((t[1:] >= t[:-1]).all()):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    if len(t) <= limit:
        return t, v
    from .thin import decimate

    return decimate(t, v, limit // 2)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stem(stem: str) -> tuple[int, int]:
    parsed = schema.parse_rank_file_name(stem + ".h5")
    return parsed if parsed is not None else (-1, 0)
