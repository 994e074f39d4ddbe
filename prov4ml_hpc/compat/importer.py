"""Import a yProv4ML run directory (3.x or 2.x output) as a prov4ml-hpc run: one rank file per yProv4ML rank.

Reads ``SAVE_DIR/<exp>_<N>/``: each rank's PROV-JSON ``prov_<exp>_GR<rank>_<N>.json`` (see
:mod:`.importer_prov`) and its metric files ``metrics_GR<rank>/``: 3.x ``<key>_<context>_<source>_GR<rank>.csv``
(rows ``epoch,value,timestep``, Unix ms, ``None`` for a missing value, a list value as ``[1, 2, 3]``) or
``.nc`` (NetCDF4 = HDF5: ``epochs``, ``values``, ``timestamps``, attributes ``_name``/``_context``/``_source``,
read with h5py), 2.x ``<key>_<context>_GR<rank>.csv`` whose first line is ``name,context,source``.  A file's
key, context and source come from the PROV-JSON's metric entity, else from the file itself, else from its name
split at a known context (the ambiguous rest is reported).  Zarr stores are reported and skipped.  The rank
files are written with the same writer as a live run, so ``merge``, ``inspect`` and ``report`` work on the
result.  A rank without its PROV-JSON (its process never reached end_run) is imported with status "running",
which merge reports as partial.  Nothing in the source directory is modified.
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
from .importer_prov import ProvFacts, context_of, read_prov

_PROV_JSON = re.compile(r"^prov_(?P<exp>.+)_GR(?P<rank>\d+)_(?P<n>\d+)\.json$")
_METRIC_DIR = re.compile(r"^metrics_GR(?P<rank>\d+)$")
_METRIC_FILE = re.compile(r"^(?P<stem>.+)_GR(?P<rank>\d+)\.(?P<ext>csv|nc|zarr)$")
_RUN_DIR = re.compile(r"^(?P<exp>.+)_(?P<n>\d+)$")
_OTHER_ROOT = re.compile(r"^(?P<key>.+?)_(?P<ctx>.+_GR\d+_\d+)_(?P<src>[^_]+)$")
_WORDS = (
    "Training",
    "Validation",
    "Testing",
    "Evaluation",
    "training",
    "validation",
    "testing",
    "evaluation",
)


@dataclass
class _Series:
    name: str | None
    context: str | None
    source: str | None
    rows: list[tuple[int, float, float]] = field(default_factory=list)  # step, value, unix seconds
    file: str = ""


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", text).lstrip("._+-")
    return cleaned[:200] or "experiment"


def _values(text: str) -> list[float]:
    """One CSV value: a number, ``None``/empty (NaN), or a list ``[1, 2, 3]`` (one value per element)."""
    text = text.strip()
    if text in ("", "None", "nan", "NaN", "--"):
        return [math.nan]
    if text[:1] == "[":
        try:
            items = json.loads(text)
        except ValueError:
            return [math.nan]
        out: list[float] = []
        stack = [items]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                out.append(float(item) if isinstance(item, int | float) else math.nan)
        return out
    try:
        return [float(text)]
    except ValueError:
        return [math.nan]


def _read_csv(path: str, series: _Series, root: str) -> None:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        sample = f.read(4096)
        f.seek(0)
        sep = ";" if sample.count(";") > sample.count(",") else ","
        lines = list(csv.reader(f, delimiter=sep))
    cols = (0, 1, 2)
    for i, row in enumerate(lines):
        if not row:
            continue
        if i == 0 and not row[0].strip().lstrip("-").isdigit():  # a header, not data
            lower = [c.strip().lower() for c in row]
            if {"epoch", "value"} <= set(lower):
                tcol = next((lower.index(c) for c in ("timestep", "timestamp", "time") if c in lower), 2)
                cols = (lower.index("epoch"), lower.index("value"), tcol)
            elif len(row) >= 3:  # name,context,source (yProv4ML 2.x)
                series.name = series.name or row[0].strip() or None
                series.context = series.context if series.context is not None else context_of(row[1], root)
                src = row[2].strip()
                series.source = series.source or (None if src in ("", "None") else src)
            continue
        if len(row) > 3:  # a list value written with the separator inside: epoch,[1, 2, 3],timestep
            row = [row[0], sep.join(row[1:-1]), row[-1]]
        try:
            raw = row[cols[0]].strip()
            step = (series.rows[-1][0] + 1 if series.rows else 0) if raw == "None" else int(float(raw))
        except (ValueError, IndexError):
            continue
        ts = _values(row[cols[2]])[0] if len(row) > cols[2] else math.nan
        t = ts / 1000.0 if math.isfinite(ts) else math.nan
        for v in _values(row[cols[1]]) if len(row) > cols[1] else [math.nan]:
            series.rows.append((step, v, t))


def _read_nc(path: str, series: _Series, root: str) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        found: dict[str, str] = {}
        for attr in ("_name", "name", "_context", "context", "_source", "source"):
            if attr in f.attrs:
                value = f.attrs[attr]
                found.setdefault(attr.lstrip("_"), value.decode() if isinstance(value, bytes) else str(value))
        epochs = np.asarray(f["epochs"][:], dtype=np.int64)
        values = np.asarray(f["values"][:], dtype=np.float64)
        stamps = np.asarray(f["timestamps"][:], dtype=np.float64) / 1000.0 if "timestamps" in f else None
    series.name = series.name or found.get("name")
    if series.context is None and "context" in found:
        series.context = context_of(found["context"], root)
    if series.source is None and found.get("source") not in (None, "None"):
        series.source = found["source"]
    for i in range(len(epochs)):
        t = float(stamps[i]) if stamps is not None and i < len(stamps) else math.nan
        series.rows.append((int(epochs[i]), float(values[i]) if i < len(values) else math.nan, t))


def split_stem(stem: str, known: set[str], root: str, v2: bool) -> tuple[str, str, str | None, bool]:
    """``<key>_<context>[_<source>]`` -> (key, yProv4ML context, source, certain) when nothing else names them.

    A known context (any rank's PROV-JSON, the run's root context, the usual stage names) is looked for first,
    longest first, since keys, contexts and sources may all hold '_'; else the last parts are taken.
    """
    for ctx_name in sorted(
        known | {root, *_WORDS} | {f"Context.{w.upper()}" for w in _WORDS}, key=len, reverse=True
    ):
        if v2 and stem.endswith(f"_{ctx_name}") and len(stem) > len(ctx_name) + 1:
            return stem[: -len(ctx_name) - 1], ctx_name, None, True
        marker = f"_{ctx_name}_"
        at = stem.rfind(marker)
        if not v2 and at > 0 and len(stem) > at + len(marker):
            return stem[:at], ctx_name, stem[at + len(marker) :], True
    other_root = _OTHER_ROOT.match(stem)  # another run's root context <exp>_GR<rank>_<N>: still a root
    if other_root and not v2:
        return other_root.group("key"), root, other_root.group("src"), False
    parts = stem.split("_")
    if v2 and len(parts) >= 2:
        return "_".join(parts[:-1]), parts[-1], None, False
    if len(parts) >= 3:
        return "_".join(parts[:-2]), parts[-2], parts[-1], False
    return stem, root, None, False


def _read_metrics(
    metric_dir: str, facts: ProvFacts | None, known: set[str], root: str, v2: bool
) -> tuple[list[_Series], list[str]]:
    problems: list[str] = []
    out: list[_Series] = []
    for name in sorted(os.listdir(metric_dir)):
        m = _METRIC_FILE.match(name)
        if not m:
            continue
        if m.group("ext") == "zarr":
            problems.append(f"{name}: zarr metric stores are not imported (convert them to csv first)")
            continue
        exact = facts.metric_files.get(name) if facts is not None else None
        s = _Series(*exact, file=name) if exact else _Series(None, None, None, file=name)
        path = os.path.join(metric_dir, name)
        try:
            (_read_csv if name.endswith(".csv") else _read_nc)(path, s, root)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the import
            problems.append(f"{name}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        if s.name is None or s.context is None:
            key, ctx_name, source, certain = split_stem(m.group("stem"), known, root, v2)
            if not certain:
                problems.append(
                    f"{name}: key, context and source are not recorded anywhere; read as key {key!r}, "
                    f"context {ctx_name!r}, source {source!r}"
                )
            s.name = s.name or key
            s.context = s.context if s.context is not None else context_of(ctx_name, root)
            s.source = s.source or (None if source in (None, "None") else source)
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
            key = (str(s.name), str(s.context))
            merged.setdefault(key, _Series(key[0], key[1], s.source)).rows.extend(s.rows)
        defs, blocks = [], []
        for sid, s in enumerate(merged.values()):
            d = {"id": sid, "name": s.name, "context": s.context, "kind": schema.KIND_METRIC, "unit": None}
            defs.append(json.dumps(d, ensure_ascii=False))
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


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat()


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
        ConfigError: src_dir is not a yProv4ML run directory, a PROV-JSON in it is not yProv4ML 3.x or 2.x
            output, or the target run already exists.
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
    facts = {
        rank: read_prov(path) for rank, path in prov_files.items()
    }  # all read before anything is written
    versions = {f.version for f in facts.values()}
    v2 = versions == {"2"} or (not versions and _looks_v2(metric_dirs))
    known = {c for f in facts.values() for c in f.contexts}
    world = max(ranks) + 1
    now = time.time()
    for rank in ranks:
        fact = facts.get(rank)
        root = fact.root if fact is not None else f"{exp_name}_GR{rank}_{run_n}"
        if rank in metric_dirs:
            series, problems = _read_metrics(metric_dirs[rank], fact, known, root, v2)
        else:
            series, problems = [], []
        times = [t for s in series for _, _, t in s.rows if math.isfinite(t)]
        start = (fact.start if fact else None) or (min(times) if times else now)
        end = (fact.end if fact else None) or (max(times) if times else None)
        records: list[dict[str, Any]] = [
            {
                "type": schema.REC_EVENT,
                "name": "imported",
                "context": None,
                "time": now,
                "attrs": {
                    "from": f"yprov4ml {fact.version}.x" if fact else "yprov4ml",
                    "source_dir": src,
                    "prov_json": prov_files.get(rank),
                    "metric_files": [s.file for s in series],
                },
            }
        ]
        records += [{**r, "time": r.get("time") or start} for r in (fact.records if fact else [])]
        records += [
            {"type": schema.REC_EVENT, "name": "metric_source", "context": s.context, "time": start,
             "attrs": {"metric": s.name, "source": s.source, "file": s.file}}
            for s in series
            if s.source
        ]  # fmt: skip
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
            schema.A_NODE: str((fact.host if fact else None) or "unknown"),
            schema.A_ATTEMPT: 0,
            schema.A_IDENTITY_SOURCE: "yprov4ml",
            schema.A_START_UNIX: start,
            schema.A_START_TIME: _iso(start),
            schema.A_PYTHON_VERSION: str((fact.python_version if fact else None) or "").split(" ")[0] or None,
            schema.A_PACKAGE_VERSION: __version__,
            schema.A_USER: fact.user if fact else None,
            schema.A_STATUS: schema.STATUS_COMPLETED if fact else schema.STATUS_RUNNING,
            schema.A_STATUS_REASON: ""
            if fact
            else "imported from yProv4ML without its PROV-JSON: the rank never reached end_run",
            schema.A_PROBLEMS: {"import": len(problems)} if problems else {},
        }
        if end is not None:
            attrs[schema.A_END_UNIX] = end
            attrs[schema.A_END_TIME] = _iso(end)
        path = os.path.join(run_dir, schema.RANKS_DIR, schema.rank_file_name(rank))
        n = _write_rank(path, attrs, series, records)
        for p in problems:
            logger.warning("import of rank %d: %s", rank, p)
        logger.info(
            "imported rank %d (yProv4ML %s.x): %d series, %d values, %d records -> %s",
            rank,
            fact.version if fact else ("2" if v2 else "3"),
            len(series),
            n,
            len(records),
            path,
        )
    return run_dir


def _looks_v2(metric_dirs: dict[int, str]) -> bool:
    """No PROV-JSON at all: 2.x csv files start with ``name,context,source``, 3.x ones with ``epoch,value``."""
    for d in metric_dirs.values():
        for name in sorted(os.listdir(d)):
            if name.endswith(".csv"):
                with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                    return not f.readline().lower().startswith("epoch")
    return False
