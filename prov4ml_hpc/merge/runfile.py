"""The merged run file (run.h5): its layout, the small writing helpers the merge uses, and a reader.

Layout (documented in docs/format.md, section "run.h5")::

    /                                   attrs: format, schema_version, run_id, experiment, world_size, job_id, ...
    /job                                attrs: the JobInfo fields (lists and dicts as JSON text, None as "")
    /ranks/<stem>                       one group per rank file (stem: rank-00007 or rank-00007.attempt-1) and
                                        per missing rank; attrs: the rank file's attributes + the merge verdict;
                                        dataset "records": the rank's JSON records (params, artifacts, ...)
    /series/<ctx>/<name>/<stem>         step (int64), value (float64), time (float64): one series of one rank
    /aggregates/<ctx>/<name>/attempt-K  per step across the ranks of attempt K: step, count, nonfinite, min,
                                        mean, max, std (metric series only)

``<ctx>`` and ``<name>`` are ``schema.escape_name`` of the user's names: the exact names are always
``schema.unescape_name`` of those links (any ``str``, NUL and lone surrogates included).  The groups' and datasets'
``name``/``context`` attributes repeat them for h5py users (a name HDF5 cannot hold is written there with backslash
escapes, see ``h5.attr_text``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..h5 import encode_attr, json_text, open_h5

G_JOB = "job"
G_RANKS = "ranks"
G_SERIES = "series"
G_AGGREGATES = "aggregates"
DS_RECORDS = "records"

# root attributes of run.h5 that change from one merge of the same files to the next
A_MERGE_TIME = "merge_time"
A_MERGE_UNIX = "merge_time_unix"
A_MERGE_PROCESSES = "merge_processes"
A_MERGED_BY = "merged_by"
VOLATILE_ATTRS = frozenset({A_MERGE_TIME, A_MERGE_UNIX, A_MERGE_PROCESSES, A_MERGED_BY})

# per-rank verdict attributes in /ranks/<stem> (the rank file's own status is kept as file_status)
A_FILE_STATUS = "file_status"
A_FILE = "file"
A_ROWS = "rows"

SERIES_FIELDS = (("step", "<i8"), ("value", "<f8"), ("time", "<f8"))
AGG_FIELDS = (
    ("step", "<i8"),
    ("count", "<i8"),
    ("nonfinite", "<i8"),
    ("min", "<f8"),
    ("mean", "<f8"),
    ("max", "<f8"),
    ("std", "<f8"),
)


def series_dtype():
    import numpy as np

    return np.dtype(list(SERIES_FIELDS))


def agg_dtype():
    import numpy as np

    return np.dtype(list(AGG_FIELDS))


def rank_stem(global_rank: int, attempt: int) -> str:
    """``rank-00007`` or ``rank-00007.attempt-2``: the rank file name without ``.h5``."""
    return schema.rank_file_name(global_rank, attempt)[: -len(".h5")]


def series_path(context: str, name: str, stem: str) -> str:
    return f"/{G_SERIES}/{schema.escape_name(context)}/{schema.escape_name(name)}/{stem}"


def aggregate_path(context: str, name: str, attempt: int) -> str:
    return f"/{G_AGGREGATES}/{schema.escape_name(context)}/{schema.escape_name(name)}/attempt-{attempt}"


def require_series_group(f, top: str, context: str, name: str, kind: str, unit: str | None):
    """The group /top/<ctx>/<name>, created with its name attributes when new."""
    ctx_key, name_key = schema.escape_name(context), schema.escape_name(name)
    parent = f.require_group(top)
    if ctx_key not in parent:
        parent.create_group(ctx_key).attrs["context"] = encode_attr(context)
    ctx = parent[ctx_key]
    if name_key not in ctx:
        g = ctx.create_group(name_key)
        for key, value in (("name", name), ("context", context), ("kind", kind), ("unit", unit)):
            g.attrs[key] = encode_attr(value)
    return ctx[name_key]


def set_attrs(obj, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = encode_attr(value)


def write_records(group, records: list[dict[str, Any]]) -> None:
    import h5py

    texts = [json_text(r, sort_keys=True, default=str) for r in records]
    group.create_dataset(DS_RECORDS, data=texts, dtype=h5py.string_dtype("utf-8"))


# ---- reading -------------------------------------------------------------------------------------------
def _decode(value: Any, as_json: bool = True) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if as_json and isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass
class RunFile:
    """What :func:`read_run_file` returns: metadata in memory, values read on demand."""

    path: str
    attrs: dict[str, Any]
    job: dict[str, Any]
    ranks: dict[str, dict[str, Any]]  # stem -> attributes (status is the merge's verdict)
    series: list[tuple[str, str, str, str]] = field(default_factory=list)  # (context, name, stem, path)
    aggregate_keys: list[tuple[str, str, int, str]] = field(
        default_factory=list
    )  # (ctx, name, attempt, path)

    def _read(self, path: str):
        with open_h5(self.path, "r") as f:
            if path not in f:
                raise KeyError(f"{path} is not in {self.path}")
            return f[path][()]

    def values(self, name: str, context: str = "training", global_rank: int = 0, attempt: int = 0):
        """One series of one rank: a structured array (step, value, time) in logging order."""
        return self._read(series_path(context, name, rank_stem(global_rank, attempt)))

    def aggregates(self, name: str, context: str = "training", attempt: int = 0):
        """Per-step statistics across ranks: (step, count, nonfinite, min, mean, max, std), sorted by step."""
        return self._read(aggregate_path(context, name, attempt))


def read_run_file(path: str | os.PathLike) -> RunFile:
    """Open run.h5 and read its metadata and its index of series and aggregates.

    Raises:
        MergeError: the file is not a prov4ml-hpc run file or has a newer schema version.
    """
    from ..errors import MergeError

    path = os.fspath(path)
    try:
        f = open_h5(path, "r")
    except Exception as exc:  # noqa: BLE001
        raise MergeError(f"cannot open {path} as HDF5: {type(exc).__name__}: {exc}") from exc
    with f:
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
        if attrs.get(schema.A_FORMAT) != schema.RUN_FORMAT:
            raise MergeError(f"{path} is not a prov4ml-hpc run file (format {attrs.get(schema.A_FORMAT)!r})")
        if int(attrs.get(schema.A_SCHEMA_VERSION, -1)) > schema.SCHEMA_VERSION:
            raise MergeError(
                f"{path} has schema version {attrs.get(schema.A_SCHEMA_VERSION)}; upgrade prov4ml-hpc"
            )
        job = {k: _decode(v) for k, v in f[G_JOB].attrs.items()} if G_JOB in f else {}
        ranks = {stem: {k: _decode(v) for k, v in g.attrs.items()} for stem, g in f.get(G_RANKS, {}).items()}
        out = RunFile(path, attrs, job, ranks)
        for top, sink in ((G_SERIES, out.series), (G_AGGREGATES, out.aggregate_keys)):
            for ctx_key, ctx_group in f.get(top, {}).items():
                ctx = schema.unescape_name(ctx_key)  # exact, where the attribute may hold an escaped form
                for name_key, name_group in ctx_group.items():
                    name = schema.unescape_name(name_key)
                    for leaf, ds in name_group.items():
                        if top == G_SERIES:
                            sink.append((ctx, name, leaf, ds.name))
                        else:
                            sink.append((ctx, name, int(leaf.split("-", 1)[1]), ds.name))
    return out
