"""Reading rank files: version-checked, tolerant of files left behind by a killed rank.

Used by the tests, ``merge``, ``inspect`` and users::

    rf = read_rank_file("prov4ml_runs/exp/slurm-123/ranks/rank-00000.h5")
    rf.status, rf.params, rf.series_names()
    steps_values = rf.values("loss", "training")   # structured array: step, value, time
    for block in rf.iter_rows(1_000_000): ...       # every row of every series, in write order
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from shutil import rmtree as _rmtree
from typing import Any

from .. import schema
from ..errors import RankFileError
from ..h5 import decode_attr


@dataclass(frozen=True)
class SeriesDef:
    id: int
    name: str
    context: str
    kind: str
    unit: str | None = None


@dataclass
class RankFile:
    """An opened-and-read rank file (metadata, series, records); rows are read on demand."""

    path: str
    attrs: dict[str, Any]
    series: list[SeriesDef]
    records: list[dict[str, Any]]
    nrows: int  # rows a reader can trust (up to the last flush)
    problems: list[str] = field(default_factory=list)  # what the reader had to work around
    read_path: str | None = None  # where rows are read from (a repaired temporary copy for a truncated file)
    _keep: Any = field(default=None, repr=False)  # keeps a repaired copy alive as long as this object

    # metadata ------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.attrs.get(schema.A_STATUS) or schema.STATUS_RUNNING)

    @property
    def closed_cleanly(self) -> bool:
        return self.status in schema.FINAL_STATUSES

    @property
    def global_rank(self) -> int:
        return int(self.attrs.get(schema.A_GLOBAL_RANK, -1))

    @property
    def attempt(self) -> int:
        return int(self.attrs.get(schema.A_ATTEMPT, 0))

    @property
    def params(self) -> dict[str, Any]:
        """Parameters by name (the last value logged wins; all values stay in ``records``)."""
        return {r["name"]: r.get("value") for r in self.records if r.get("type") == schema.REC_PARAM}

    def records_of(self, *types: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") in types]

    def series_names(self) -> list[tuple[str, str]]:
        return [(s.context, s.name) for s in self.series]

    def find_series(self, name: str, context: str = "training") -> SeriesDef:
        for s in self.series:
            if s.name == name and s.context == context:
                return s
        known = ", ".join(f"{c}/{n}" for c, n in self.series_names()[:20])
        raise KeyError(f"no series {name!r} in context {context!r} in {self.path}; known: {known}")

    # rows ----------------------------------------------------------------------------------------------
    def iter_rows(self, block: int = 1_000_000, start: int = 0, stop: int | None = None) -> Iterator[Any]:
        """Yield the trusted rows (numpy structured arrays of schema.row_dtype()) in blocks, in write order."""
        stop = self.nrows if stop is None else min(stop, self.nrows)
        if start >= stop:
            return
        from ..h5 import open_h5

        with open_h5(self.read_path or self.path, "r") as f:
            ds = f[schema.DS_ROWS]
            nseries = len(self.series)
            for lo in range(start, stop, block):
                rows = ds[lo : min(stop, lo + block)]
                bad = (rows["series"] < 0) | (rows["series"] >= nseries) | ~(rows["time"] > 0)
                if bad.any():  # a torn tail: never hand out rows that point at no series
                    rows = rows[~bad]
                yield rows

    def rows(self) -> Any:
        """All trusted rows at once (mind the memory for big files: prefer iter_rows)."""
        import numpy as np

        parts = list(self.iter_rows())
        return np.concatenate(parts) if parts else np.empty(0, dtype=schema.row_dtype())

    def values(self, name: str, context: str = "training") -> Any:
        """One series' rows (fields step, value, time), in logging order."""
        import numpy as np

        sid = self.find_series(name, context).id
        parts = [b[b["series"] == sid] for b in self.iter_rows()]
        out = np.concatenate(parts) if parts else np.empty(0, dtype=schema.row_dtype())
        return out[["step", "value", "time"]]


def discover_rank_files(run_dir: str | os.PathLike) -> list[tuple[int, int, str]]:
    """(global_rank, attempt, path relative to run_dir) of every rank file of a run, sorted by attempt then
    rank; [] when there is no ranks/ folder.  Other names in ranks/ (temporary files) are ignored."""
    ranks_dir = os.path.join(run_dir, schema.RANKS_DIR)
    try:
        names = os.listdir(ranks_dir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parsed = schema.parse_rank_file_name(name)
        if parsed is not None:
            out.append((parsed[0], parsed[1], os.path.join(schema.RANKS_DIR, name)))
    return sorted(out, key=lambda x: (x[1], x[0]))


def _decode_attr(key: str, value: Any) -> Any:
    return decode_attr(value, key in schema.JSON_ATTRS)


def _json_lines(ds, what: str, problems: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, text in enumerate(ds.asstr()[:]):
        try:
            out.append(json.loads(text))
        except ValueError:
            problems.append(f"{what} entry {i} is not valid JSON; skipped")
    return out


class _Unstable(RankFileError):
    """A read failed in a way a concurrent writer can cause (the file may just be mid-flush)."""


def read_rank_file(path: str | os.PathLike, *, retries: int = 4) -> RankFile:
    """Open a rank file, check its format and schema version, and read its metadata and records.

    A rank file being written (a running job) has no SWMR guarantee: a read that races the writer's flush can
    fail or see half-written metadata.  Such failures are retried ``retries`` times, 0.2 s apart (the writer
    flushes in milliseconds), before the file is called damaged.

    Raises:
        RankFileError: the file is missing, is not an HDF5 file, was not written by prov4ml-hpc, or has a
            newer schema version than this reader understands.
    """
    import time

    for attempt in range(retries + 1):
        try:
            return _read_rank_file(os.fspath(path))
        except _Unstable as exc:
            if attempt == retries:
                raise RankFileError(str(exc)) from exc
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _read_rank_file(path: str) -> RankFile:
    if not os.path.exists(path):
        raise RankFileError(f"rank file {path} does not exist")
    from ..h5 import open_h5

    problems: list[str] = []
    read_path, keep = path, None
    try:
        f = open_h5(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, sometimes others
        repaired = _repair_truncated(path, str(exc))
        if repaired is None:
            raise _Unstable(
                f"rank file {path} cannot be opened as HDF5 ({type(exc).__name__}: {exc}); it "
                "may be truncated or corrupt"
            ) from exc
        read_path, keep = repaired
        problems.append(
            "the file is shorter than HDF5 expects (a write failed: full disk, quota or file size "
            "limit); read from a zero-padded temporary copy, rows written by the failed flush are "
            "dropped"
        )
        try:
            f = open_h5(read_path, "r")
        except Exception as exc2:  # noqa: BLE001 - e.g. a file its writer is still creating
            raise _Unstable(
                f"rank file {path} cannot be opened as HDF5, even padded ({type(exc2).__name__}: "
                f"{exc2}); it may be truncated or corrupt"
            ) from exc2
    try:
        with f:
            attrs = {k: _decode_attr(k, v) for k, v in f.attrs.items()}
            fmt = attrs.get(schema.A_FORMAT)
            if fmt is None:  # a file just created by its writer has no attributes on disk yet
                raise _Unstable(f"{path} has no format attribute yet (being created?)")
            if fmt != schema.RANK_FORMAT:
                raise RankFileError(
                    f"{path} is not a prov4ml-hpc rank file (format attribute {fmt!r}, expected "
                    f"{schema.RANK_FORMAT!r})"
                )
            version = int(attrs.get(schema.A_SCHEMA_VERSION, -1))
            if version > schema.SCHEMA_VERSION or version < 1:
                raise RankFileError(
                    f"{path} has schema version {version}; this prov4ml-hpc reads versions 1 to "
                    f"{schema.SCHEMA_VERSION}: upgrade prov4ml-hpc to read it"
                )
            for name in (schema.DS_ROWS, schema.DS_SERIES, schema.DS_RECORDS):
                if name not in f:
                    raise _Unstable(f"{path} has no {name!r} dataset: the file is incomplete")
            raw_series = _json_lines(f[schema.DS_SERIES], "series", problems)
            series = [
                SeriesDef(
                    int(s["id"]), s["name"], s["context"], s.get("kind", schema.KIND_METRIC), s.get("unit")
                )
                for s in raw_series
            ]
            for i, s in enumerate(series):
                if s.id != i:
                    raise RankFileError(f"{path}: series table out of order at entry {i} (id {s.id})")
            records = _json_lines(f[schema.DS_RECORDS], "records", problems)
            shape_rows = int(f[schema.DS_ROWS].shape[0])
    except RankFileError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _Unstable(f"rank file {path} is damaged: {type(exc).__name__}: {exc}") from exc
    flushed = attrs.get(schema.A_FLUSHED_ROWS)
    nrows = shape_rows if flushed is None else min(shape_rows, int(flushed))
    if flushed is not None and shape_rows != int(flushed):
        problems.append(
            f"rows dataset holds {shape_rows} rows, last flush recorded {flushed}; trusting {nrows}"
        )
    return RankFile(
        path=path,
        attrs=attrs,
        series=series,
        records=records,
        nrows=nrows,
        problems=problems,
        read_path=read_path,
        _keep=keep,
    )


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def _repair_truncated(path: str, message: str) -> tuple[str, Any] | None:
    """A write that failed half-way (disk full, quota) can leave the superblock's end-of-file beyond the real
    end.  Everything flushed before is still there: read it from a copy padded with zeros to the stored size
    (zeros are never valid rows: their time is 0).  The rank file itself is never modified."""
    m = _TRUNCATED.search(message)
    if not m:
        return None
    stored = int(m.group(2))
    if stored > 64 * os.path.getsize(path) + (1 << 30):
        return None
    import shutil
    import tempfile

    tmp = _TempDir(tempfile.mkdtemp(prefix="prov4ml-hpc-repair-"))
    copy = os.path.join(tmp.path, os.path.basename(path))
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as fh:
        fh.truncate(stored)
    return copy, tmp


class _TempDir:
    """A temporary directory removed when the last reference goes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        _rmtree(self.path, ignore_errors=True)  # bound at import: __del__ may run at interpreter shutdown
