"""The core of the yProv4ML drop-in: its context names and enums, and log_metric/log_param mapped onto our API.

The other compat modules build on these (they import this module, never the facade :mod:`.yprov4ml`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

from .. import schema
from ..rank import api
from .yprov_run import STATE, once

ROOT_CONTEXT = ""  # a metric logged without a context: the run's root context, as in yProv4ML


class Context(enum.StrEnum):
    """yProv4ML's context enum (2.x; 3.x takes plain strings, which work everywhere too)."""

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"
    EVALUATION = "evaluation"
    DATASETS = "datasets"
    MODELS = "models"


Contexts = Context  # the name some yProv4ML examples use


class MetricsType(enum.Enum):
    """yProv4ML's metric file formats: accepted by start_run and recorded (one HDF5 rank file here)."""

    CSV = "csv"
    ZARR = "zarr"
    NETCDF = "netcdf"


class CompressorType(enum.Enum):
    """yProv4ML's compressors: accepted by start_run and recorded (rank files are not compressed here)."""

    NONE = None
    ZIP = "zip"
    BLOSC_ZSTD = "blosc_zstd"
    LZ4 = "l4"


_KNOWN = {c.value: c.value for c in Context}
_KNOWN.update({f"context.{c.value}": c.value for c in Context})  # str(Context.TRAINING) in yProv4ML 2.x
_CTX: dict[Any, str] = {}  # context objects seen -> our context string (the hot path looks here first)


def _ctx_slow(context: Any) -> str:
    if isinstance(context, enum.Enum):
        value = context.value
        text = value if isinstance(value, str) else context.name
    else:
        text = str(context)
    out = _KNOWN.get(text.lower(), text)
    if len(_CTX) < 10_000:
        try:
            _CTX[context] = out
        except TypeError:  # unhashable: not cached
            pass
    return out


def ctx(context: Any, default: str | None = ROOT_CONTEXT) -> str | None:
    """A yProv4ML context (None, str, Context or any Enum member) as a prov4ml-hpc context string."""
    if context is None:
        return default
    try:
        out = _CTX.get(context)
    except TypeError:
        out = None
    return out if out is not None else _ctx_slow(context)


# ---- metrics (the hot path) ---------------------------------------------------------------------------------
def log_metric(
    key: str, value: Any, context: Any = None, step: int | None = 0, source: Any = None, timestamp: Any = None
) -> None:
    """yProv4ML's log_metric: ``step`` defaults to 0; no context is the run's root context.

    ``source`` is recorded once per series (event ``metric_source``); ``timestamp`` (Unix milliseconds) becomes
    the value's time; a list, tuple or array value is kept as one value per element, all at ``step``.
    """
    if context is None:
        c = ROOT_CONTEXT
    else:
        try:
            c = _CTX[context]
        except (KeyError, TypeError):
            c = _ctx_slow(context)
    t = type(value)
    if t is not float and t is not int and (t is list or t is tuple or getattr(value, "ndim", 0)):
        return _log_many(key, value, c, step, source, timestamp)
    if source is not None:
        _note_source(key, c, source)
    if timestamp is None:
        return api.log_metric(key, value, step, c)
    _log_at(key, value, c, step, timestamp)


def _note_source(key: str, c: str, source: Any) -> None:
    tag = (str(key), c, str(getattr(source, "value", source)))
    if tag not in STATE.sources:
        STATE.sources.add(tag)
        api.log_event("metric_source", context=c, metric=tag[0], source=tag[2])


def _log_at(key: str, value: Any, c: str, step: int | None, timestamp: Any) -> None:
    run = api.active_run()
    if run is None:
        return api.log_metric(key, value, step, c)
    try:
        t = float(timestamp) / 1000.0
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t):
        once(
            "timestamp",
            "log_metric(timestamp=%r) is not Unix milliseconds; the time of the call is used",
            timestamp,
        )
        return run.recorder.log_metric(key, value, step, c)
    run.recorder.log_metric(key, value, step, c, _time=lambda: t)


def _flatten(value: Any) -> list[Any]:
    if hasattr(value, "tolist") and not isinstance(value, list | tuple):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        return [value]
    out: list[Any] = []
    for item in value:
        out.extend(_flatten(item))
    return out


def _log_many(key: str, value: Any, c: str, step: int | None, source: Any, timestamp: Any) -> None:
    for item in _flatten(value):
        log_metric(key, item, c, step, source, timestamp)


def log_metrics(
    metrics: Mapping[str, Any], context: Any = None, step: int | None = 0, source: Any = None
) -> None:
    """Several metrics at the same step and context."""
    for key, value in metrics.items():
        log_metric(key, value, context, step, source)


# ---- parameters ---------------------------------------------------------------------------------------------
def log_param(key: str, value: Any, context: Any = None, source: Any = None, is_input: bool = False) -> None:
    """yProv4ML's log_param: a parameter of ``context`` (None: the run), used (``is_input``) or generated by it
    (yProv4ML's default), with its ``source``; the value is kept typed (yProv4ML writes ``str(value)``).

    Raises:
        InvalidNameError: ``key`` is not a string.
        NoActiveRunError: no run is active.
    """
    run = api.active_run()
    if run is None:
        return api.log_param(key, value)  # the usual NoActiveRunError (or a forked child's notice)
    if not isinstance(key, str):
        return api.log_param(key, value)  # the usual InvalidNameError
    if len(key) > schema.MAX_NAME_LENGTH:
        return api.log_param(key, value)  # reported and dropped as for every parameter
    rec: dict[str, Any] = {
        "type": schema.REC_PARAM,
        "name": key,
        "value": api.json_value(value),
        "context": ctx(context, None),
        "role": "input" if is_input else "output",
        "attrs": {} if source is None else {"source": str(getattr(source, "value", source))},
    }
    run.recorder.add_record(rec)


def log_params(
    params: Mapping[str, Any], context: Any = None, source: Any = None, is_input: bool = False
) -> None:
    """Several parameters."""
    for key, value in params.items():
        log_param(key, value, context, source, is_input)
