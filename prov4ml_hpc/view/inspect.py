"""What is in a run directory, for people and for tools: ``summarize(run_dir)`` and its terminal screen.

Built on the one read model (``prov4ml_hpc.merge.load.load_run``: verdicts, missing ranks, totals, series
statistics; it works on running, unmerged, merged, stale and requeued runs).  This module only shapes it into a
JSON-able summary and a screen whose size grows with the number of ranks and series, never with what is
printed: ranks are grouped by status and only a few of each group are named.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import time
from typing import Any

from .. import schema
from ..merge.model import RankSummary, RunSummary

LISTED = 5  # ranks named per status group, reasons per status
LOWER_IS_BETTER = ("loss", "error")

STATUS_ORDER = (
    schema.STATUS_COMPLETED,
    schema.STATUS_RUNNING,
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


# ---- the summary -----------------------------------------------------------------------------------------------
def summarize(run_dir: str | os.PathLike, *, listed: int = LISTED) -> dict[str, Any]:
    """Describe a run directory as a JSON-able dict (see docs/report.md, "inspect").

    Args:
        run_dir: the run directory (running, unmerged, merged or requeued).
        listed: at most this many ranks are named per status group (the counts are always complete).

    Raises:
        ConfigError: run_dir is not a run directory.
    """
    from ..merge.load import load_run

    return summarize_run(load_run(run_dir), listed=listed)


def summarize_run(run: RunSummary, *, listed: int = LISTED) -> dict[str, Any]:
    """:func:`summarize` of an already loaded run."""
    main = run.main_rank()
    a = main.meta if main is not None else {}
    latest = run.latest()
    return {
        "run_dir": run.run_dir,
        "run_id": run.run_id,
        "experiment": run.experiment,
        "source": run.source,
        "state": run.state,
        "graph": run.graph,
        "job": _job_section(run),
        "ranks": _ranks_section(run, listed),
        "series": series_table(latest),
        "params": params_of(latest),
        "artifacts": artifacts_of(run.ranks),
        "energy": run.totals,
        "files": file_sizes(run.run_dir),
        "problems": run.problems[:20],
        "problems_total": len(run.problems),
        "software": {
            "prov4ml_hpc": a.get(schema.A_PACKAGE_VERSION),
            "python": a.get(schema.A_PYTHON_VERSION),
        },
        "script": run.script(),
    }


def _job_section(run: RunSummary) -> dict[str, Any]:
    j = dataclasses.asdict(run.job)
    start, end = run.time_span()
    running = run.state == "running"
    if running and start is not None:
        end = time.time()
    gpus = j.get("gpus")
    if not gpus:
        hardware = [r.meta.get(schema.A_HARDWARE) for r in run.ranks if r.readable]
        seen = {
            (r.node, g.get("uuid") or g.get("index"))
            for r, hw in zip([r for r in run.ranks if r.readable], hardware, strict=True)
            if isinstance(hw, dict) and isinstance(hw.get("gpus"), list)
            for g in hw["gpus"]
            if isinstance(g, dict)
        }
        gpus = len(seen) or None
    nodes = list(j.get("nodes") or [])
    if not nodes:
        nodes = sorted({r.node for r in run.ranks if r.node})
    main = run.main_rank()
    return {
        "job_id": j.get("job_id"),
        "name": j.get("name"),
        "state": j.get("state") or _derived_state(run),
        "user": j.get("user") or run.user or (main.meta.get(schema.A_USER) if main else None),
        "partition": j.get("partition"),
        "nodes": nodes[:50],
        "nnodes": j.get("nnodes") or len(nodes) or None,
        "ranks": run.world_size,
        "gpus": gpus,
        "elapsed": j.get("elapsed"),
        "elapsed_s": (end - start) if start is not None and end is not None else None,
        "start": _iso(start) if start is not None else None,
        "end": _iso(end) if end is not None and not running else None,
        "attempts": run.attempts,
        "exit_code": j.get("exit_code"),
        "time_limit": j.get("time_limit"),
    }


def _derived_state(run: RunSummary) -> str:
    statuses = {r.status for r in run.latest()}
    if schema.STATUS_RUNNING in statuses:
        return "RUNNING (from rank statuses)"
    if statuses == {schema.STATUS_COMPLETED}:
        return "COMPLETED (from rank statuses)"
    worst = next(s for s in reversed(STATUS_ORDER) if s in statuses) if statuses & set(STATUS_ORDER) else "?"
    return f"{worst.upper()} (from rank statuses)"


def _ranks_section(run: RunSummary, listed: int) -> dict[str, Any]:
    attempts = {}
    for attempt in run.attempts:
        groups: dict[str, dict[str, Any]] = {}
        for r in (x for x in run.ranks if x.attempt == attempt):
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
    nodes = {r.node for r in run.ranks if r.node}
    return {
        "world_size": run.world_size,
        "nodes": len(nodes),
        "attempts": attempts,
        "rows": sum(r.rows for r in run.ranks),
    }


def _reason_key(reason: str) -> str:
    """Reasons that differ only in numbers (rows, times) are grouped: digits become #."""
    import re

    return re.sub(r"\d+(\.\d+)?", "#", reason)[:300]


def series_table(ranks: list[RankSummary]) -> list[dict[str, Any]]:
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


def params_of(ranks: list[RankSummary]) -> dict[str, Any]:
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


def artifacts_of(ranks: list[RankSummary]) -> list[dict[str, Any]]:
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
        f"read from  {d['source']} ({d['state']})"
        + (f"; provenance.json: {d['graph']}" if d.get("graph") not in (None, "current", "absent") else ""),
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
            value = energy.get(key)
            parts = value.items() if isinstance(value, dict) else [("", value)]  # RAPL: per domain
            for part, v in parts:
                if not isinstance(v, int | float):
                    continue
                more = f" ({energy.get('gpus_measured')} GPUs)" if key == "gpu_energy_j" else ""
                text = f"{label} {part}".strip()
                lines.append(f"  {text:<18} {v * scale:.6g} {unit}{more}")
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
