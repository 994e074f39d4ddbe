"""Import a yProv4ML run directory as a prov4ml-hpc run: one rank file per yProv4ML rank (GR<n>).

Reads what yProv4ML 3.x writes under ``SAVE_DIR/<exp>_<N>/``: the per-rank PROV-JSON
``prov_<exp>_GR<rank>_<N>.json`` (parameters, artifacts, models, datasets, start/end times, user) and the
metric files ``metrics_GR<rank>/<key>_<context>_<source>_GR<rank>.csv`` (rows ``epoch,value,timestep`` with
the timestep in Unix milliseconds and missing values written ``None``; a first line that is not data names
the columns or gives ``name,context,source``) or ``.nc`` (NetCDF4 = HDF5: variables ``epochs``, ``values``,
``timestamps``, read with h5py).  Zarr stores are reported and skipped.  The rank files are written with the
same writer as a live run, so ``merge``, ``inspect`` and ``report`` work on the result.  A rank without its
PROV-JSON (its process never reached end_run) is imported with status "running", which merge reports as
partial.  Nothing in the source directory is modified.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from .._version import __version__
from ..errors import ConfigError
from ..log import logger

_PROV_JSON = re.compile(r"^prov_(?P<exp>.+)_GR(?P<rank>\d+)_(?P<n>\d+)\.json$")
_METRIC_DIR = re.compile(r"^metrics_GR(?P<rank>\d+)$")
_METRIC_FILE = re.compile(r"^(?P<stem>.+)_GR(?P<rank>\d+)\.(?P<ext>csv|nc|zarr)$")
_RUN_DIR = re.compile(r"^(?P<exp>.+)_(?P<n>\d+)$")
_CONTEXTS = {
    "training": "training",
    "train": "training",
    "context.training": "training",
    "validation": "validation",
    "val": "validation",
    "context.validation": "validation",
    "testing": "testing",
    "test": "testing",
    "context.testing": "testing",
    "evaluation": "evaluation",
    "context.evaluation": "evaluation",
}


@dataclass
class _Series:
    name: str
    context: str
    source: str | None
    rows: list[tuple[int, float, float]] = field(default_factory=list)  # step, value, unix seconds
    file: str = ""


def _context(raw: str) -> str:
    return _CONTEXTS.get(raw.strip().lower(), raw.strip())


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", text).lstrip("._+-")
    return cleaned[:200] or "experiment"


def _num(text: str) -> float:
    text = text.strip()
    if text in ("", "None", "nan", "NaN"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _split_stem(stem: str, known_contexts: set[str]) -> tuple[str, str, str | None]:
    """``<key>_<context>_<source>`` -> parts; a known context is searched first, since keys may hold '_'."""
    parts = stem.split("_")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in known_contexts or parts[i].lower() in _CONTEXTS:
            return "_".join(parts[:i]), parts[i], "_".join(parts[i + 1 :]) or None
    if len(parts) >= 3:
        return "_".join(parts[:-2]), parts[-2], parts[-1]
    return stem, "training", None


def _read_csv(path: str, series: _Series) -> None:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        sample = f.read(4096)
        f.seek(0)
        sep = ";" if sample.count(";") > sample.count(",") else ","
        reader = csv.reader(f, delimiter=sep)
        cols = (0, 1, 2)
        for i, row in enumerate(reader):
            if not row:
                continue
            if i == 0 and math.isnan(_num(row[0])):  # a header, not data
                lower = [c.strip().lower() for c in row]
                if {"epoch", "value"} <= set(lower):
                    tcol = next((lower.index(c) for c in ("timestep", "timestamp", "time") if c in lower), 2)
                    cols = (lower.index("epoch"), lower.index("value"), tcol)
                elif len(row) >= 3:  # name,context,source (yProv4ML 3.x csv files)
                    series.name, series.context = row[0].strip() or series.name, _context(row[1])
                    series.source = row[2].strip() or series.source
                continue
            try:
                step = int(float(row[cols[0]]))
            except (ValueError, IndexError):
                continue
            value = _num(row[cols[1]]) if len(row) > cols[1] else math.nan
            ts = _num(row[cols[2]]) if len(row) > cols[2] else math.nan
            series.rows.append((step, value, ts / 1000.0 if math.isfinite(ts) else math.nan))


def _read_nc(path: str, series: _Series) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        for attr, setter in (
            ("_name", "name"),
            ("name", "name"),
            ("_context", "context"),
            ("context", "context"),
            ("_source", "source"),
            ("source", "source"),
        ):
            if attr in f.attrs:
                value = f.attrs[attr]
                value = value.decode() if isinstance(value, bytes) else str(value)
                setattr(series, setter, _context(value) if setter == "context" else value)
        epochs = np.asarray(f["epochs"][:], dtype=np.int64)
        values = np.asarray(f["values"][:], dtype=np.float64)
        stamps = np.asarray(f["timestamps"][:], dtype=np.float64) / 1000.0 if "timestamps" in f else None
    for i in range(len(epochs)):
        t = float(stamps[i]) if stamps is not None and i < len(stamps) else math.nan
        series.rows.append((int(epochs[i]), float(values[i]) if i < len(values) else math.nan, t))


def _val(x: Any) -> Any:
    if isinstance(x, list):
        x = x[0] if x else None
    if isinstance(x, dict) and "$" in x:
        x = x["$"]
    return x


def _parse_time(x: Any) -> float | None:
    x = _val(x)
    if not isinstance(x, str) or not x:
        return None
    try:
        t = _dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.timestamp()  # yProv4ML writes local time without an offset: read it as this machine's local time


def _param_value(text: Any) -> Any:
    text = _val(text)
    if not isinstance(text, str):
        return text
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def _read_prov(path: str) -> dict[str, Any]:
    """Facts from one yProv4ML PROV-JSON: root activity, user, parameters, files and metric sources."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    out: dict[str, Any] = {"records": [], "activity": {}, "user": None}
    agents = list((doc.get("agent") or {}).keys())
    out["user"] = agents[0].split(":")[-1] if agents else None
    for aid, attrs in (doc.get("activity") or {}).items():
        if "//" not in aid and any(k.endswith("experiment_name") or k.endswith("run_id") for k in attrs):
            out["activity"] = {"id": aid, **{k.split(":")[-1]: _val(v) for k, v in attrs.items()}}
            break
    for eid, attrs in (doc.get("entity") or {}).items():
        a = {k.split(":")[-1]: _val(v) for k, v in attrs.items()}
        etype = str(a.get("type") or "")
        label = str(a.get("label") or eid.split("//")[0])
        context = a.get("context") or (eid.rsplit("//", 1)[1] if "//" in eid else None)
        ctx = _context(str(context)) if context else None
        if etype.endswith("HyperParameter") or ("value" in a and "identifier" not in a and not etype):
            out["records"].append(
                {
                    "type": schema.REC_PARAM,
                    "name": label.split("//")[0],
                    "value": _param_value(a.get("value")),
                    "context": ctx,
                }
            )
        elif etype.endswith("Metric"):
            out["records"].append(
                {
                    "type": schema.REC_EVENT,
                    "name": "metric_source",
                    "context": ctx,
                    "attrs": {
                        "metric": label.split("//")[0],
                        "source": a.get("source"),
                        "file": a.get("identifier"),
                    },
                }
            )
        elif "identifier" in a or etype:
            kind = (
                schema.REC_MODEL
                if etype.endswith("Model")
                else schema.REC_DATASET
                if etype.endswith("Dataset")
                else schema.REC_ARTIFACT
            )
            rec: dict[str, Any] = {
                "type": kind,
                "name": label,
                "role": a.get("role") or "output",
                "context": ctx,
                "step": None,
                "attrs": {k: v for k, v in a.items() if k not in ("label", "type", "role")},
            }
            if a.get("identifier"):
                rec["path"] = str(a["identifier"])
            if isinstance(a.get("file_size"), int | str) and str(a["file_size"]).isdigit():
                rec["size"] = int(a["file_size"])
            out["records"].append(rec)
    return out


def _read_metrics(metric_dir: str) -> tuple[list[_Series], list[str]]:
    problems: list[str] = []
    found: list[tuple[str, str]] = []
    for name in sorted(os.listdir(metric_dir)):
        m = _METRIC_FILE.match(name)
        if m:
            found.append((name, m.group("stem")))
    contexts: set[str] = set()
    out: list[_Series] = []
    for name, stem in found:
        key, ctx, source = _split_stem(stem, contexts)
        s = _Series(key, _context(ctx), source, file=name)
        path = os.path.join(metric_dir, name)
        try:
            if name.endswith(".csv"):
                _read_csv(path, s)
            elif name.endswith(".nc"):
                _read_nc(path, s)
            else:
                problems.append(f"{name}: zarr metric stores are not imported (convert them to csv first)")
                continue
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the import
            problems.append(f"{name}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        contexts.add(s.context)
        out.append(s)
    return out, problems


def _write_rank(
    path: str, attrs: dict[str, Any], series: list[_Series], records: list[dict[str, Any]]
) -> int:
    import numpy as np

    from ..rank.rankfile import RankFileWriter

    writer = RankFileWriter(path, attrs)
    try:
        merged: dict[tuple[str, str], _Series] = {}
        for s in series:  # the same (name, context) from two files (two sources) becomes one series
            merged.setdefault((s.name, s.context), _Series(s.name, s.context, s.source)).rows.extend(s.rows)
        defs, blocks = [], []
        for sid, s in enumerate(merged.values()):
            defs.append(
                json.dumps(
                    {
                        "id": sid,
                        "name": s.name,
                        "context": s.context,
                        "kind": schema.KIND_METRIC,
                        "unit": None,
                    },
                    ensure_ascii=False,
                )
            )
            block = np.empty(len(s.rows), dtype=schema.row_dtype())
            if s.rows:
                arr = np.array(s.rows, dtype=np.float64)
                block["series"], block["step"], block["value"], block["time"] = (
                    sid,
                    arr[:, 0],
                    arr[:, 1],
                    arr[:, 2],
                )
            blocks.append(block)
        writer.append_strings(schema.DS_SERIES, defs)
        writer.append_strings(
            schema.DS_RECORDS, [json.dumps(r, ensure_ascii=False, default=str) for r in records]
        )
        rows = np.concatenate(blocks) if blocks else np.empty(0, dtype=schema.row_dtype())
        if len(rows):
            rows = rows[np.argsort(rows["time"], kind="stable")]
        writer.append_rows(rows)
        writer.set_attrs({schema.A_FLUSHED_ROWS: writer.rows, schema.A_LAST_FLUSH_UNIX: time.time()})
        writer.flush()
    finally:
        writer.close()
    return int(len(rows))


def import_yprov4ml(
    src_dir: str | os.PathLike[str], run_root: str | os.PathLike[str], experiment: str | None = None
) -> str:
    """Turn a yProv4ML run directory into RUN_ROOT/EXPERIMENT/yprov4ml-<exp>_<N>/ranks/rank-*.h5.

    Args:
        src_dir: the yProv4ML experiment directory (``<exp>_<N>``, holding prov_*.json / metrics_GR*/).
        run_root: RUN_ROOT to import into.
        experiment: experiment name (default: yProv4ML's experiment name, made directory-safe).

    Returns:
        The new run directory.

    Raises:
        ConfigError: src_dir is not a yProv4ML run directory, or the target run already exists.
    """
    from ..job.location import check_component

    src = os.path.abspath(os.fspath(src_dir))
    if not os.path.isdir(src):
        raise ConfigError(f"{src} is not a directory: give the yProv4ML run directory (SAVE_DIR/<exp>_<N>)")
    names = os.listdir(src)
    prov_files: dict[int, str] = {}
    exp_name, run_n = None, None
    for name in names:
        m = _PROV_JSON.match(name)
        if m:
            prov_files[int(m.group("rank"))] = os.path.join(src, name)
            exp_name, run_n = m.group("exp"), m.group("n")
    metric_dirs = {
        int(m.group("rank")): os.path.join(src, n)
        for n in names
        if (m := _METRIC_DIR.match(n)) and os.path.isdir(os.path.join(src, n))
    }
    ranks = sorted(set(prov_files) | set(metric_dirs))
    if not ranks:
        raise ConfigError(
            f"{src} holds no prov_<exp>_GR<rank>_<N>.json and no metrics_GR<rank>/ directory: it is "
            "not a yProv4ML run directory (expected SAVE_DIR/<exp>_<N>)"
        )
    if exp_name is None:
        m = _RUN_DIR.match(os.path.basename(src))
        exp_name, run_n = (m.group("exp"), m.group("n")) if m else (os.path.basename(src), "0")
    exp = check_component(experiment or _safe(exp_name), "experiment name")
    run_id = check_component(_safe(f"yprov4ml-{exp_name}_{run_n}"), "run id")
    run_dir = os.path.join(os.path.abspath(os.fspath(run_root)), exp, run_id)
    if os.path.exists(os.path.join(run_dir, schema.RANKS_DIR)):
        raise ConfigError(
            f"{run_dir} already exists: {src} was imported before (nothing is ever overwritten); "
            "remove that run directory or import into another run root"
        )
    world = max(ranks) + 1
    now = time.time()
    for rank in ranks:
        prov = (
            _read_prov(prov_files[rank])
            if rank in prov_files
            else {"records": [], "activity": {}, "user": None}
        )
        series, problems = _read_metrics(metric_dirs[rank]) if rank in metric_dirs else ([], [])
        act = prov["activity"]
        times = [t for s in series for _, _, t in s.rows if math.isfinite(t)]
        start = _parse_time(act.get("startedAtTime")) or (min(times) if times else now)
        end = _parse_time(act.get("endedAtTime")) or (max(times) if times else None)
        complete = rank in prov_files
        records = [
            {
                "type": schema.REC_EVENT,
                "name": "imported",
                "context": None,
                "time": now,
                "attrs": {
                    "from": "yprov4ml",
                    "source_dir": src,
                    "prov_json": prov_files.get(rank),
                    "metric_files": [s.file for s in series],
                },
            }
        ]
        records += [{**r, "time": start} for r in prov["records"]]
        records += [
            {"type": schema.REC_PROBLEM, "reason": "import", "message": p, "time": now} for p in problems
        ]
        attrs: dict[str, Any] = {
            schema.A_RUN_ID: run_id,
            schema.A_EXPERIMENT: exp,
            schema.A_RUN_ID_SOURCE: "yprov4ml-import",
            schema.A_JOB_ID: None,
            schema.A_GLOBAL_RANK: rank,
            schema.A_LOCAL_RANK: 0,
            schema.A_WORLD_SIZE: world,
            schema.A_NODE: str(act.get("hostname") or act.get("host") or "unknown"),
            schema.A_ATTEMPT: 0,
            schema.A_IDENTITY_SOURCE: "yprov4ml",
            schema.A_START_UNIX: start,
            schema.A_START_TIME: _dt.datetime.fromtimestamp(start, _dt.UTC).isoformat(),
            schema.A_PYTHON_VERSION: str(act.get("python_version") or "").split(" ")[0] or None,
            schema.A_PACKAGE_VERSION: __version__,
            schema.A_USER: prov["user"],
            schema.A_STATUS: schema.STATUS_COMPLETED if complete else schema.STATUS_RUNNING,
            schema.A_STATUS_REASON: ""
            if complete
            else "imported from yProv4ML without its PROV-JSON: the rank never reached end_run",
            schema.A_PROBLEMS: {"import": len(problems)} if problems else {},
        }
        if end is not None:
            attrs[schema.A_END_UNIX] = end
            attrs[schema.A_END_TIME] = _dt.datetime.fromtimestamp(end, _dt.UTC).isoformat()
        path = os.path.join(run_dir, schema.RANKS_DIR, schema.rank_file_name(rank))
        n = _write_rank(path, attrs, series, records)
        for p in problems:
            logger.warning("import of rank %d: %s", rank, p)
        logger.info(
            "imported rank %d: %d series, %d values, %d records -> %s",
            rank,
            len(series),
            n,
            len(records),
            path,
        )
    return run_dir
