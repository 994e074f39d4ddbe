"""Several runs side by side: the parameters that differ, final and best metric values, an overlay plot.

Each run is read like ``inspect`` reads it (run.h5 when merged, else the rank files; the latest attempt).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .. import schema
from ..errors import ConfigError
from ..merge.load import load_run
from ..merge.model import RunSummary
from .inspect import best_rule, fmt_value, params_of, series_table


def _label(run: RunSummary) -> str:
    return run.run_id


def _labels(infos: list[RunSummary]) -> list[str]:
    labels = [_label(i) for i in infos]
    if len(set(labels)) < len(labels):  # same run id in two experiments: add the experiment
        labels = [
            f"{os.path.basename(os.path.dirname(i.run_dir))}/{lab}"
            for i, lab in zip(infos, labels, strict=True)
        ]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{n}]" for n, lab in enumerate(labels)]
    return labels


def compare_runs(run_dirs: Sequence[str | os.PathLike], *, metrics_only: bool = True) -> dict[str, Any]:
    """Compare runs: {"runs": [...], "params": {"differ": {...}, "same": {...}}, "metrics": [...]}.

    ``metrics`` has one entry per (context, name) with, per run, the last value (mean over the ranks of their
    last values), the best value (min for names with loss/error, else max) and the last step; None where a
    run lacks the series.  System series are left out unless ``metrics_only`` is False.

    Raises:
        ConfigError: fewer than two runs, or a path that is not a run directory.
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least two run directories, got {len(run_dirs)}")
    infos = [load_run(d) for d in run_dirs]
    labels = _labels(infos)
    runs, params, tables = [], [], []
    for info, label in zip(infos, labels, strict=True):
        latest = info.latest()
        statuses: dict[str, int] = {}
        for r in latest:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        runs.append(
            {
                "label": label,
                "run_dir": info.run_dir,
                "source": info.source,
                "state": info.state,
                "world_size": info.world_size,
                "statuses": statuses,
            }
        )
        params.append(params_of(latest))
        tables.append({(s["context"], s["name"]): s for s in series_table(latest)})
    keys = sorted({k for p in params for k in p})
    differ, same = {}, {}
    for k in keys:
        values = [p.get(k) for p in params]
        texts = {json.dumps(v, sort_keys=True, default=str) for v in values}
        if len(texts) > 1 or any(k not in p for p in params):
            differ[k] = values
        else:
            same[k] = values[0]
    metrics = []
    all_keys = sorted({k for t in tables for k in t})
    for ctx, name in all_keys:
        entries = [t.get((ctx, name)) for t in tables]
        kind = next(e["kind"] for e in entries if e is not None)
        if metrics_only and kind != schema.KIND_METRIC:
            continue
        rule = best_rule(name)
        metrics.append(
            {
                "context": ctx,
                "name": name,
                "kind": kind,
                "best_rule": rule,
                "last": [e["last"] if e else None for e in entries],
                "best": [(e["min"] if rule == "min" else e["max"]) if e else None for e in entries],
                "last_step": [e["last_step"] if e else None for e in entries],
            }
        )
    return {"runs": runs, "params": {"differ": differ, "same": same}, "metrics": metrics}


def format_comparison(c: dict[str, Any], *, width: int = 14) -> str:
    """The comparison as a text table (one column per run)."""
    labels = [r["label"] for r in c["runs"]]
    heads = [f"[{i}]" for i in range(len(labels))]
    lines = ["runs"]
    for head, r in zip(heads, c["runs"], strict=True):
        st = ", ".join(f"{n} {s}" for s, n in r["statuses"].items())
        lines.append(f"  {head} {r['label']}  ({r['world_size']} ranks: {st}; {r['source']})  {r['run_dir']}")
    key_w = max(
        [
            len("parameter"),
            *(len(k) for k in c["params"]["differ"]),
            *(len(f"{m['context']}/{m['name']}") + 7 for m in c["metrics"]),
        ]
    )
    key_w = min(key_w, 50)
    row = "  {:<" + str(key_w) + "} " + " ".join("{:>" + str(width) + "}" for _ in labels)
    lines += ["", "parameters that differ" + ("" if c["params"]["differ"] else ": none")]
    if c["params"]["differ"]:
        lines.append(row.format("parameter", *heads))
        for k, values in c["params"]["differ"].items():
            cells = ["-" if v is None else _cell(v, width) for v in values]
            lines.append(row.format(k[:key_w], *cells))
    if c["params"]["same"]:
        same = ", ".join(f"{k}={_cell(v, 20)}" for k, v in list(c["params"]["same"].items())[:12])
        more = len(c["params"]["same"]) - 12
        lines.append(f"  same in all runs: {same}" + (f", ... (+{more})" if more > 0 else ""))
    lines += ["", "metrics (last = mean over ranks of their last value; best = min for loss/error, else max)"]
    if not c["metrics"]:
        lines.append("  none")
    else:
        lines.append(row.format("metric", *heads))
    for m in c["metrics"]:
        key = f"{m['context']}/{m['name']}"[: key_w - 7]
        lines.append(row.format(f"{key} last", *(_cell(v, width) for v in m["last"])))
        lines.append(row.format(f"{key} {m['best_rule']}", *(_cell(v, width) for v in m["best"])))
    return "\n".join(lines) + "\n"


def _cell(v: Any, width: int) -> str:
    text = fmt_value(v) if isinstance(v, int | float) or v is None else json.dumps(v, default=str)
    return text if len(text) <= width else text[: width - 1] + "~"


def plot_overlay(
    run_dirs: Sequence[str | os.PathLike],
    metric: str,
    context: str = "training",
    out_png: str | os.PathLike = "compare.png",
) -> str:
    """One metric of several runs in one PNG: per run, the across-rank mean with its min-max band.

    Raises:
        ConfigError: no run has the metric (the message lists the metrics they have).
    """
    from .report.data import load_plot_data
    from .report.plots import _ATTEMPT_COLORS, _figure, _pixels, band
    from .report.thin import decimate

    infos = [load_run(d, values=False) for d in run_dirs]
    labels = _labels(infos)
    fig, (ax,) = _figure(1, 3.6)
    px = _pixels(fig)
    found, known = 0, set()
    for i, (info, label) in enumerate(zip(infos, labels, strict=True)):
        data = load_plot_data(info, few=0)
        known.update(f"{m.context}/{m.name}" for m in data.metrics)
        md = next((m for m in data.metrics if m.name == metric and m.context == context), None)
        if md is None or not md.aggregates:
            continue
        found += 1
        color = _ATTEMPT_COLORS[i % len(_ATTEMPT_COLORS)] if i < len(_ATTEMPT_COLORS) else f"C{i % 10}"
        for j, (_attempt, agg) in enumerate(sorted(md.aggregates.items())):
            if not len(agg):
                continue
            x, lo, mid, hi = band(agg["step"], agg["min"], agg["mean"], agg["max"], px)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
            xd, yd = decimate(x, mid, px)
            ax.plot(xd, yd, color=color, linewidth=1.3, label=label if j == 0 else None)
    if not found:
        raise ConfigError(
            f"no run has metric {metric!r} in context {context!r}; metrics present: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    ax.set_title(f"{metric} ({context}): mean over ranks, band min-max", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = os.path.abspath(os.fspath(out_png))
    fig.savefig(out, format="png")
    return out
