"""yProv4ML drop-in: ``import prov4ml_hpc.compat.yprov4ml as yprov4ml`` and keep the script's calls (3.x and 2.x).

Every yProv4ML function and name is provided with yProv4ML's arguments and what it records, mapped onto
prov4ml-hpc's model (one rank file per rank, one PROV graph per job); docs/migration-yprov4ml.md has the
call-by-call table.  What has no meaning here (file formats, compressors, "collect all processes": every rank
is always recorded) is accepted, recorded as an event and reported once in the log; it never raises.
Contexts: a metric without one goes to the run's root context (here the empty context "", the rank activity
itself in the graph), training/validation/testing/evaluation/datasets/models are matched without case
("Training" and ``Context.TRAINING`` -> "training"), other names are kept as written.
"""

from __future__ import annotations

import enum
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from .. import api, schema
from . import yprov_run as functs
from .yprov_files import (
    log_artifact,
    log_dataset,
    log_model,
    log_source_code,
    save_model_version,
)
from .yprov_flops import log_flops_per_batch, log_flops_per_epoch
from .yprov_run import (
    STATE,
    end_run,
    get_artifacts_dir,
    get_run_dir,
    log_provenance_documents,
    once,
    start_run,
)
from .yprov_system import log_carbon_metrics, log_system_metrics
from .yprov_wrappers import ProvenanceTrackedFunction

__all__ = [
    "CompressorType",
    "Context",
    "Contexts",
    "MetricsType",
    "ProvenanceTrackedFunction",
    "create_context",
    "end_run",
    "functs",
    "get_artifacts_dir",
    "get_run_dir",
    "install_alias",
    "log_artifact",
    "log_carbon_metrics",
    "log_context",
    "log_current_execution_time",
    "log_dataset",
    "log_execution_command",
    "log_execution_end_time",
    "log_execution_start_time",
    "log_flops_per_batch",
    "log_flops_per_epoch",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_provenance_documents",
    "log_source_code",
    "log_system_metrics",
    "save_model_version",
    "start_run",
]

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


# ---- contexts, command, times -------------------------------------------------------------------------------
def log_context(context: Any, is_subcontext_of: Any = None, source_of_data: Any = None) -> None:
    """Declare a context; in the graph it is informed by ``is_subcontext_of`` (else by the rank)."""
    attrs: dict[str, Any] = {"parent": ctx(is_subcontext_of, None)}
    if source_of_data is not None:
        attrs["source"] = str(getattr(source_of_data, "value", source_of_data))
    api.log_event("context", context=ctx(context), **attrs)


def create_context(context: Any, is_subcontext_of: Any = None) -> None:
    """yProv4ML 2.x's create_context: the same as log_context (use the string afterwards, not ``Context.X``)."""
    log_context(context, is_subcontext_of)


def log_execution_command(cmd: str, path: str) -> None:
    """Parameter ``execution_command`` = ``"<cmd> <path>"`` (yProv4ML prefixes the path with a made-up
    ``/workspace/<exp>_<N>/artifacts/``; the path is kept as given here)."""
    log_param("execution_command", f"{cmd} {path}")


def log_current_execution_time(label: str, context: Any = None, step: int | None = None) -> None:
    """Metric ``label`` = the current Unix time in seconds (yProv4ML 2.x; 3.2.8's own call raises TypeError)."""
    log_metric(label, time.time(), context, step, source="std.time")


def log_execution_start_time() -> None:
    """yProv4ML 2.x: parameter ``execution_start_time`` = the current Unix time in seconds."""
    log_param("execution_start_time", time.time())


def log_execution_end_time() -> None:
    """yProv4ML 2.x: parameter ``execution_end_time`` = the current Unix time in seconds."""
    log_param("execution_end_time", time.time())


# ---- names that need torch or pandas: made on first use ----------------------------------------------------
def __getattr__(name: str) -> Any:
    if name in ("ProvenanceTrackedModel", "WeightDistributionTrackedModel"):
        from . import yprov_wrappers

        return getattr(yprov_wrappers, name)
    if name == "getters":
        from . import yprov_getters

        return yprov_getters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_alias() -> None:
    """Make ``import yprov4ml`` (and its ``functs``, ``utils.getters`` submodules) give the drop-in, for scripts
    that cannot be edited at all."""
    import types

    from . import yprov_getters

    utils = types.ModuleType("yprov4ml.utils", "yProv4ML's utils package: its getters")
    utils.getters = yprov_getters  # type: ignore[attr-defined]
    sys.modules.setdefault("yprov4ml", sys.modules[__name__])
    sys.modules.setdefault("yprov4ml.functs", functs)
    sys.modules.setdefault("yprov4ml.utils", utils)
    sys.modules.setdefault("yprov4ml.utils.getters", yprov_getters)
