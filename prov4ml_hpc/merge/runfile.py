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
from ..h5 import decode_attr, encode_attr, json_text, open_h5

# the names of groups, datasets and attributes are in schema.py ("run.h5"); this module has the dtypes and paths
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
    return f"/{schema.G_SERIES}/{schema.escape_name(context)}/{schema.escape_name(name)}/{stem}"


def aggregate_path(context: str, name: str, attempt: int) -> str:
    return (
        f"/{schema.G_AGGREGATES}/{schema.escape_name(context)}/{schema.escape_name(name)}/attempt-{attempt}"
    )


def require_series_group(f, top: str, context: str, name: str, kind: str, unit: str | None):
    """The group /top/<ctx>/<name>, created with its name attributes when new."""
    ctx_key, name_key = schema.escape_name(context), schema.escape_name(name)
    parent = f.require_group(top)
    if ctx_key not in parent:
        parent.create_group(ctx_key).attrs[schema.A_CONTEXT] = encode_attr(context)
    ctx = parent[ctx_key]
    if name_key not in ctx:
        g = ctx.create_group(name_key)
        pairs = (
            (schema.A_NAME, name),
            (schema.A_CONTEXT, context),
            (schema.A_KIND, kind),
            (schema.A_UNIT, unit),
        )
        for key, value in pairs:
            g.attrs[key] = encode_attr(value)
    return ctx[name_key]


def set_attrs(obj, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = encode_attr(value)


def write_records(group, records: list[dict[str, Any]]) -> None:
    write_json_lines(group, schema.DS_RANK_RECORDS, records, ascii_only=False)


def write_json_lines(group, name: str, items: list[Any], *, ascii_only: bool = True) -> None:
    """A 1-D UTF-8 string dataset, one JSON text per item (keys sorted: the same items give the same bytes)."""
    import h5py

    if ascii_only:  # ASCII JSON: any HDF5 string holds it
        texts = [json.dumps(x, sort_keys=True, ensure_ascii=True, default=str) for x in items]
    else:
        texts = [json_text(x, sort_keys=True, default=str) for x in items]
    group.create_dataset(name, data=texts, dtype=h5py.string_dtype("utf-8"), shape=(len(texts),))


# ---- reading -------------------------------------------------------------------------------------------
def decode_attrs(obj, json_attrs: frozenset[str] = schema.RUN_JSON_ATTRS) -> dict[str, Any]:
    """The attributes of an HDF5 object, decoded (JSON ones parsed)."""
    return {k: decode_attr(v, k in json_attrs) for k, v in obj.attrs.items()}


def decode_job(group) -> dict[str, Any]:
    """The /job group's attributes as JobInfo keyword arguments: list and dict fields parsed, "" as None."""
    import dataclasses

    from ..job.jobinfo import JobInfo

    fields = dataclasses.fields(JobInfo)
    empty = {f.name: f.default_factory for f in fields if f.default_factory is not dataclasses.MISSING}
    known = {f.name for f in fields}
    out: dict[str, Any] = {}
    for key, value in decode_attrs(group, frozenset(empty)).items():
        if key in empty:  # a list or a dict
            out[key] = value if isinstance(value, type(empty[key]())) else empty[key]()
        elif key in known:
            out[key] = None if value == "" else value
    return out


def check_run_file(path: str, attrs: dict[str, Any]) -> None:
    """Raise MergeError unless the root attributes are those of a run file this version reads."""
    from ..errors import MergeError

    if attrs.get(schema.A_FORMAT) != schema.RUN_FORMAT:
        raise MergeError(f"{path} is not a prov4ml-hpc run file (format {attrs.get(schema.A_FORMAT)!r})")
    try:
        version = int(attrs.get(schema.A_SCHEMA_VERSION, -1))
    except (TypeError, ValueError):
        version = -1
    if version > schema.SCHEMA_VERSION or version < 1:
        raise MergeError(
            f"{path} has schema version {attrs.get(schema.A_SCHEMA_VERSION)!r}; this prov4ml-hpc reads versions "
            f"1 to {schema.SCHEMA_VERSION}: upgrade prov4ml-hpc to read it"
        )


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
    """Open run.h5 and read its metadata and its index of series and aggregates (values are read on demand).

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
        attrs = decode_attrs(f)
        check_run_file(path, attrs)
        job = decode_job(f[schema.G_JOB]) if schema.G_JOB in f else {}
        ranks = {stem: decode_attrs(g, schema.JSON_ATTRS) for stem, g in f.get(schema.G_RANKS, {}).items()}
        out = RunFile(path, attrs, job, ranks)
        for top, sink in ((schema.G_SERIES, out.series), (schema.G_AGGREGATES, out.aggregate_keys)):
            for ctx_key, ctx_group in f.get(top, {}).items():
                ctx = schema.unescape_name(ctx_key)  # exact, where the attribute may hold an escaped form
                for name_key, name_group in ctx_group.items():
                    name = schema.unescape_name(name_key)
                    for leaf, ds in name_group.items():
                        if top == schema.G_SERIES:
                            sink.append((ctx, name, leaf, ds.name))
                        else:
                            sink.append((ctx, name, int(leaf.split("-", 1)[1]), ds.name))
    return out
