"""PNG plots of a run with matplotlib (Agg, headless): metrics, GPUs, nodes' CPU and memory, energy.

Every curve is thinned for display only, to at most two points (min and max) per horizontal pixel, so a plot
of 10^7 points draws as fast as one of 10^3 and still shows every spike.  Stored data are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import MetricData, PlotData, SystemSeries, gpu_field
from .thin import bucket_ids, decimate

WIDTH_IN, DPI = 9.0, 100
METRIC_WIDTH_IN = 6.0  # metric plots sit two to a row: drawn at about the size they are shown, text legible
LEGEND_FONT = 8
MAX_LINES = 16  # more series than this in one panel: drawn as a mean line with a min-max band
_RANK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_ATTEMPT_COLORS = ("#1f4e9c", "#c0392b", "#27ae60", "#8e44ad", "#d35400")


# ---- thinning ----------------------------------------------------------------------------------------------
def band(x: Any, lo: Any, mid: Any, hi: Any, buckets: int):
    """Thin a mean line with a min-max band: per bucket the mean of x and mid, the min of lo, the max of hi."""
    x = np.asarray(x, np.float64)
    lo, mid, hi = (np.asarray(a, np.float64) for a in (lo, mid, hi))
    if len(x) <= 2 * buckets:
        return x, lo, mid, hi
    b = bucket_ids(x, buckets)
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    counts = np.diff(np.append(starts, len(x)))
    with np.errstate(all="ignore"):
        xm = np.add.reduceat(x, starts) / counts
        fin = np.isfinite(mid)
        mm = np.add.reduceat(np.where(fin, mid, 0.0), starts) / np.add.reduceat(
            fin.astype(np.float64), starts
        )
        lo2 = np.fmin.reduceat(lo, starts)
        hi2 = np.fmax.reduceat(hi, starts)
    return xm, lo2, mm, hi2


def _pixels(fig) -> int:
    return max(100, int(fig.get_figwidth() * fig.dpi * 0.85))


# ---- helpers -----------------------------------------------------------------------------------------------
def _figure(rows: int, height: float = 2.6, width: float = WIDTH_IN):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 0.6 + height * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax in axes:  # no "1e-5+1.2579" offset labels: the ticks show the values themselves
        ax.ticklabel_format(axis="y", useOffset=False)
    return fig, axes


def _save(fig, path: str) -> str:
    fig.savefig(path, format="png")
    return path


def time_axis(t: np.ndarray, t0: float, span: float) -> tuple[np.ndarray, str]:
    if span > 3 * 3600:
        return (t - t0) / 3600.0, "hours since job start"
    if span > 180:
        return (t - t0) / 60.0, "minutes since job start"
    return t - t0, "seconds since job start"


def _span(series: Sequence[SystemSeries], t0: float | None) -> tuple[float, float]:
    starts = [float(s.t[0]) for s in series if len(s.t)]
    ends = [float(s.t[-1]) for s in series if len(s.t)]
    origin = t0 if t0 is not None else (min(starts) if starts else 0.0)
    return origin, (max(ends) - origin) if ends else 0.0


# ---- metrics -----------------------------------------------------------------------------------------------
def plot_metric(md: MetricData, path: str, *, title: str | None = None) -> str:
    """One metric: per attempt, the across-rank mean with its min-max band; per-rank lines when given."""
    fig, (ax,) = _figure(1, 3.0, METRIC_WIDTH_IN)
    px = _pixels(fig)
    multi = len(md.aggregates) > 1
    for i, (attempt, agg) in enumerate(sorted(md.aggregates.items())):
        if not len(agg):
            continue
        color = _ATTEMPT_COLORS[i % len(_ATTEMPT_COLORS)] if multi else "#1f4e9c"
        x, lo, mid, hi = band(agg["step"], agg["min"], agg["mean"], agg["max"], px)
        nranks = int(np.max(agg["count"] + agg["nonfinite"])) if len(agg) else 0
        suffix = f" attempt {attempt}" if multi else ""
        if nranks > 1:
            ax.fill_between(
                x, lo, hi, color=color, alpha=0.18, linewidth=0, label=f"min-max over ranks{suffix}"
            )
        xd, yd = decimate(x, mid, px) if len(x) > 2 * px else (x, mid)
        ax.plot(
            xd,
            yd,
            color=color,
            linewidth=1.6 if md.per_rank else 1.2,
            marker="o" if len(xd) <= 30 else None,
            markersize=4,
            label=(f"mean of {nranks} ranks" if nranks > 1 else "value") + suffix,
            zorder=3,
        )
    for j, ((rank, attempt), (steps, values)) in enumerate(sorted(md.per_rank.items())):
        xs, ys = decimate(steps, values, px)
        label = f"rank {rank}" + (f" (attempt {attempt})" if multi else "")
        ax.plot(
            xs,
            ys,
            color=_RANK_COLORS[j % len(_RANK_COLORS)],
            linewidth=0.6,
            alpha=0.7,
            label=label,
            marker="." if len(xs) <= 30 else None,
        )
    ax.set_title(title or f"{md.name}  ({md.context})", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(md.name)
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=LEGEND_FONT, ncols=2, loc="best")
    return _save(fig, path)


# ---- system --------------------------------------------------------------------------------------------------
def _draw_group(ax, items: list[tuple[str, np.ndarray, np.ndarray]], px: int, what: str) -> None:
    """Lines (one per item) when few, else the mean across items with a min-max band on a common time grid."""
    if len(items) <= MAX_LINES:
        for j, (label, x, y) in enumerate(items):
            xs, ys = decimate(x, y, px)
            ax.plot(xs, ys, linewidth=0.9, label=label, color=f"C{j % 10}")
        if items:
            ax.legend(fontsize=LEGEND_FONT, ncols=4, loc="best")
        return
    lo_x = min(float(x[0]) for _, x, _ in items if len(x))
    hi_x = max(float(x[-1]) for _, x, _ in items if len(x))
    grid = np.linspace(lo_x, hi_x, px)
    acc_min = np.full(px, np.inf)
    acc_max = np.full(px, -np.inf)
    acc_sum = np.zeros(px)
    acc_n = np.zeros(px)
    for _, x, y in items:
        if not len(x):
            continue
        b = np.minimum(((x - lo_x) * ((px - 1) / max(hi_x - lo_x, 1e-12))).astype(np.int64), px - 1)
        fin = np.isfinite(y)
        b, yy = b[fin], y[fin]
        np.minimum.at(acc_min, b, yy)
        np.maximum.at(acc_max, b, yy)
        np.add.at(acc_sum, b, yy)
        np.add.at(acc_n, b, 1)
    ok = acc_n > 0
    ax.fill_between(
        grid[ok],
        acc_min[ok],
        acc_max[ok],
        color="#1f4e9c",
        alpha=0.2,
        linewidth=0,
        label=f"min-max over {len(items)} {what}",
    )
    ax.plot(
        grid[ok],
        acc_sum[ok] / acc_n[ok],
        color="#1f4e9c",
        linewidth=1.2,
        label=f"mean of {len(items)} {what}",
    )
    ax.legend(fontsize=LEGEND_FONT, loc="best")


def plot_gpus(data: PlotData, path: str) -> str | None:
    """GPU utilisation, memory used and power per node and GPU over time; None when there are no GPU samples."""
    fields = (
        ("utilization", "utilisation (%)", 1.0),
        ("memory_used", "memory used (GiB)", 1 / 2**30),
        ("power", "power (W)", 1.0),
    )
    gpu = [(s, gpu_field(s.name)) for s in data.system]
    gpu = [(s, f) for s, f in gpu if f is not None]
    if not gpu:
        return None
    origin, span = _span([s for s, _ in gpu], data.t0)
    fig, axes = _figure(len(fields))
    px = _pixels(fig)
    xlabel = ""
    for ax, (field, label, scale) in zip(axes, fields, strict=True):
        items = []
        for s, (index, name) in gpu:
            if name == field:
                x, xlabel = time_axis(s.t, origin, span)
                items.append(
                    (f"{s.node} gpu{index}" + (f" a{s.attempt}" if s.attempt else ""), x, s.v * scale)
                )
        _draw_group(ax, items, px, "GPUs")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("GPUs per node", fontsize=11)
    axes[-1].set_xlabel(xlabel)
    return _save(fig, path)


def plot_nodes(data: PlotData, path: str) -> str | None:
    """CPU (% of the node's cores) and memory used per node over time; None without node samples."""
    fields = (
        ("node.cpu_percent", "CPU busy (% of node)", 1.0),
        ("node.memory_used", "memory used (GiB)", 1 / 2**30),
    )
    series = [s for s in data.system if s.name in dict((f, 0) for f, _, _ in fields)]
    if not series:
        return None
    origin, span = _span(series, data.t0)
    fig, axes = _figure(len(fields))
    px = _pixels(fig)
    xlabel = ""
    for ax, (field, label, scale) in zip(axes, fields, strict=True):
        items = []
        for s in series:
            if s.name == field:
                x, xlabel = time_axis(s.t, origin, span)
                items.append((s.node + (f" a{s.attempt}" if s.attempt else ""), x, s.v * scale))
        _draw_group(ax, items, px, "nodes")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("CPU and memory per node", fontsize=11)
    axes[-1].set_xlabel(xlabel)
    return _save(fig, path)


def _sum_on_grid(series: list[SystemSeries], grid: np.ndarray) -> np.ndarray:
    """Sum of cumulative counters (one per node) on a common time grid (each held at its last value)."""
    total = np.zeros(len(grid))
    for s in series:
        if not len(s.t):
            continue
        fin = np.isfinite(s.v)
        t, v = s.t[fin], s.v[fin]
        if not len(t):
            continue
        total += np.interp(grid, t, v, left=0.0, right=float(v[-1]))
    return total


def plot_energy(data: PlotData, path: str) -> str | None:
    """Cumulative energy (kWh, all nodes) and the emission rate (g CO2eq per hour); None without energy.*."""
    energy = [s for s in data.system if s.name == "energy.consumed"]
    emissions = [s for s in data.system if s.name == "energy.emissions"]
    if not energy and not emissions:
        return None
    origin, span = _span(energy + emissions, data.t0)
    lo = min(float(s.t[0]) for s in energy + emissions if len(s.t))
    hi = max(float(s.t[-1]) for s in energy + emissions if len(s.t))
    grid = np.linspace(lo, hi, 400) if hi > lo else np.array([lo])
    x, xlabel = time_axis(grid, origin, span)
    fig, axes = _figure(2)
    ax1, ax2 = axes
    if energy:
        ax1.plot(
            x,
            _sum_on_grid(energy, grid),
            color="#27ae60",
            linewidth=1.4,
            label=f"total of {len(energy)} node(s)",
            marker="o" if len(grid) < 3 else None,
        )
        ax1.legend(fontsize=LEGEND_FONT)
    ax1.set_ylabel("energy (kWh, cumulative)")
    ax1.set_title("energy and emissions", fontsize=11)
    if emissions:
        kg = _sum_on_grid(emissions, grid)
        if len(grid) > 1:
            dt_h = np.diff(grid) / 3600.0
            rate = np.diff(kg) * 1000.0 / np.where(dt_h > 0, dt_h, np.nan)
            ax2.step(
                x[1:], rate, where="pre", color="#c0392b", linewidth=1.2, label="emission rate, all nodes"
            )
        else:
            ax2.plot(x, kg * 1000.0, "o", color="#c0392b", label="emissions so far (g)")
        ax2.legend(fontsize=LEGEND_FONT)
    ax2.set_ylabel("g CO2eq per hour")
    ax2.set_xlabel(xlabel)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def nice_number(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"
