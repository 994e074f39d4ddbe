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

import sys
import time
from typing import Any

from ..rank import api
from . import yprov_run as functs
from .yprov_core import (
    CompressorType,
    Context,
    Contexts,
    MetricsType,
    ctx,
    log_metric,
    log_metrics,
    log_param,
    log_params,
)
from .yprov_files import log_artifact, log_dataset, log_model, log_source_code, save_model_version
from .yprov_flops import log_flops_per_batch, log_flops_per_epoch
from .yprov_run import (
    end_run,
    get_artifacts_dir,
    get_run_dir,
    log_provenance_documents,
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
