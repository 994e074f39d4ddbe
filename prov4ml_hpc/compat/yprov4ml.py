"""yProv4ML 3.x drop-in: ``import prov4ml_hpc.compat.yprov4ml as yprov4ml`` and keep the script's calls.

Every yProv4ML 3.x function is accepted with the same arguments and mapped onto prov4ml-hpc's model (one rank
file per rank, one PROV graph per job).  What has no meaning here (file formats, compressors, "collect all
processes": every rank is always recorded) is accepted, stored as an event of the run and reported once in
the log; it never raises.  See docs/migration-yprov4ml.md for the table.  Differences that show in the data:
steps default to 0 as in yProv4ML; the contexts
training/validation/testing/evaluation are matched without case ("Training" -> "training"), others kept; ``timestamp=`` is ignored (values get the time of the call); models are
saved under RUN_DIR/artifacts/rank-NNNNN/models/, never in the current directory.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..log import logger
from ..rank import api

__all__ = [
    "Context",
    "end_run",
    "install_alias",
    "log_artifact",
    "log_context",
    "log_current_execution_time",
    "log_dataset",
    "log_execution_command",
    "log_flops_per_batch",
    "log_flops_per_epoch",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_source_code",
    "log_system_metrics",
    "save_model_version",
    "start_run",
]


class Context(enum.StrEnum):
    """yProv4ML's older context enum; plain strings work everywhere too."""

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"
    EVALUATION = "evaluation"


# yProv4ML scripts write "Training", Context.TRAINING or "training" for the same stage: one context here.
_KNOWN = {c.value: c.value for c in Context}
_warned: set[str] = set()
_model_versions: dict[str, int] = {}
_start_time: float | None = None


def _once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning("yprov4ml compat: " + message, *args)


def _ctx(context: Any, default: str | None = api.TRAINING) -> str | None:
    """A yProv4ML context (None, str, Context or any Enum member) as a prov4ml-hpc context string."""
    if context is None:
        return default
    if isinstance(context, enum.Enum):
        value = context.value
        text = value if isinstance(value, str) else context.name
    else:
        text = str(context)
    return _KNOWN.get(text.lower(), text)


def _safe_name(name: str) -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name)).lstrip("._+-")
    return cleaned[:200] or "experiment"


def _attrs(other_attrs: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    out = {str(k): api.json_value(v) for k, v in (other_attrs or {}).items()}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _step(step: Any) -> int | None:
    return None if step is None else step


# ---- run --------------------------------------------------------------------------------------------
def start_run(
    experiment_name: str,
    prov_user_namespace: str | None = None,
    provenance_save_dir: str | None = None,
    collect_all_processes: bool = False,
    save_after_n_logs: int = 100,
    rank: int | None = None,
    metrics_file_type: Any = "csv",
    csv_separator: str = ",",
    use_compressor: Any = None,
    use_run_id: Any = None,
    **kwargs: Any,
) -> api.Run:
    """yProv4ML's start_run: starts this rank's prov4ml-hpc run under ``provenance_save_dir``.

    ``use_run_id`` given as a string becomes the run id (it must then be the same on every rank).  The file
    format, separator, compressor, save_after_n_logs and collect_all_processes are accepted and recorded.
    """
    global _start_time
    run_id = use_run_id if isinstance(use_run_id, str) and use_run_id else None
    if use_run_id is not None and run_id is None:
        run_id = f"{_safe_name(experiment_name)}_{use_run_id}"
    run = api.start_run(_safe_name(experiment_name), provenance_save_dir, run_id=run_id)
    _start_time = time.time()
    _model_versions.clear()
    settings = {
        "experiment_name": experiment_name,
        "prov_user_namespace": prov_user_namespace,
        "collect_all_processes": collect_all_processes,
        "save_after_n_logs": save_after_n_logs,
        "rank": rank,
        "metrics_file_type": str(metrics_file_type),
        "csv_separator": csv_separator,
        "use_compressor": str(use_compressor) if use_compressor is not None else None,
        "use_run_id": str(use_run_id) if use_run_id is not None else None,
        **{k: api.json_value(v) for k, v in kwargs.items()},
    }
    api.log_event("yprov4ml_start_run", **settings)
    if rank is not None and int(rank) != run.global_rank:
        _once(
            "rank",
            "start_run(rank=%s) differs from the detected global rank %d (%s); the detected rank is used",
            rank,
            run.global_rank,
            run.identity.source,
        )
    if kwargs:
        _once("kwargs", "start_run(): options %s have no meaning here; recorded and ignored", sorted(kwargs))
    return run


def end_run(
    create_graph: bool = False,
    create_svg: bool = False,
    crate_ro_crate: bool = False,
    create_card: bool = False,
    **kwargs: Any,
) -> str | None:
    """yProv4ML's end_run: flush and close this rank's file.

    The PROV graph is written for the whole job by the in-job gather (under MPI) or by ``prov4ml-hpc merge
    RUN_DIR``; SVG and RO-Crate by ``prov4ml-hpc export``.  For a single process with ``create_graph``, the
    merge is run here when the merge module is available.
    """
    run = api.active_run()
    if run is None:
        return None
    api.log_event(
        "yprov4ml_end_run",
        create_graph=create_graph,
        create_svg=create_svg,
        crate_ro_crate=crate_ro_crate,
        create_card=create_card,
    )
    status = api.end_run()
    if (create_graph or create_svg or crate_ro_crate or create_card) and run.world_size == 1:
        _merge_single(run, svg=create_svg, ro_crate=crate_ro_crate)
    elif create_svg or crate_ro_crate or create_card:
        _once(
            "exports",
            "SVG / RO-Crate / card are made after the job: `prov4ml-hpc export %s --format ...`",
            run.run_dir,
        )
    return status


def _merge_single(run: api.Run, *, svg: bool, ro_crate: bool) -> None:
    try:
        from .. import merge as _merge  # written by the merge module; optional here
    except ImportError:
        _once("merge", "the graph is written by `prov4ml-hpc merge %s`", run.run_dir)
        return
    fn = getattr(_merge, "merge_run", None)
    if fn is None:
        _once("merge", "the graph is written by `prov4ml-hpc merge %s`", run.run_dir)
        return
    try:
        fn(run.run_dir)
    except Exception as exc:  # noqa: BLE001 - the run is closed and safe; the merge can be redone later
        _once(
            "merge_failed",
            "merging %s failed (%s: %s); run `prov4ml-hpc merge` later",
            run.run_dir,
            type(exc).__name__,
            exc,
        )
        return
    if svg or ro_crate:
        _once(
            "exports", "SVG / RO-Crate are made by `prov4ml-hpc export %s --format svg|ro-crate`", run.run_dir
        )


# ---- metrics and parameters ---------------------------------------------------------------------------
_sources_seen: set[tuple[str, str, str]] = set()


def log_metric(
    key: str, value: Any, context: Any = None, step: int | None = 0, source: Any = None, timestamp: Any = None
) -> None:
    """yProv4ML's log_metric (step defaults to 0, as there).  ``source`` is recorded once per series."""
    ctx = _ctx(context)
    api.log_metric(key, value, step=_step(step), context=ctx)
    if source is not None:
        tag = (str(key), str(ctx), str(getattr(source, "value", source)))
        if tag not in _sources_seen:
            _sources_seen.add(tag)
            api.log_event("metric_source", context=ctx, metric=tag[0], source=tag[2])
    if timestamp is not None:
        _once(
            "timestamp", "log_metric(timestamp=...) is ignored: values are stamped with the time of the call"
        )


def log_metrics(
    metrics: Mapping[str, Any], context: Any = None, step: int | None = 0, source: Any = None
) -> None:
    for key, value in metrics.items():
        log_metric(key, value, context=context, step=step, source=source)


def log_param(key: str, value: Any, context: Any = None, source: Any = None, is_input: bool = False) -> None:
    api.log_param(key, value, context=_ctx(context, None))


def log_params(params: Mapping[str, Any], context: Any = None, source: Any = None) -> None:
    for key, value in params.items():
        log_param(key, value, context=context, source=source)


# ---- files, models, datasets -----------------------------------------------------------------------------
def log_artifact(
    artifact_name: str,
    artifact_path: str | os.PathLike,
    context: Any = None,
    source: Any = None,
    step: int | None = 0,
    log_copy_in_prov_directory: bool = True,
    log_copy_subdirectory: str | None = None,
    is_model: bool = False,
    is_input: bool = False,
    other_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a file with size and sha256; copied under RUN_DIR/artifacts/ when log_copy_in_prov_directory."""
    name = f"{log_copy_subdirectory}/{artifact_name}" if log_copy_subdirectory else artifact_name
    attrs = _attrs(other_attrs, source=str(source) if source is not None else None)
    role = "input" if is_input else "output"
    if is_model:
        return api.log_model(
            None,
            name=name,
            path=artifact_path,
            role=role,
            context=_ctx(context, None),
            step=_step(step),
            copy=log_copy_in_prov_directory,
            attrs=attrs,
        )
    return api.log_artifact(
        artifact_path,
        name=name,
        role=role,
        context=_ctx(context, None),
        step=_step(step),
        copy=log_copy_in_prov_directory,
        attrs=attrs,
    )


def _models_dir(run: api.Run) -> str:
    from .. import schema

    path = os.path.join(run.run_dir, schema.ARTIFACTS_DIR, f"rank-{run.global_rank:05d}", "models")
    os.makedirs(path, exist_ok=True)
    return path


def _save_model(run: api.Run, model: Any, file_name: str) -> str | None:
    """torch.save the model's state_dict under the run directory; None when that is not possible."""
    state = getattr(model, "state_dict", None)
    torch = sys.modules.get("torch")
    if torch is None or not callable(state):
        return None
    from ..rank.artifacts import safe_component

    path = os.path.join(_models_dir(run), safe_component(file_name))
    try:
        torch.save(state(), path)
    except Exception as exc:  # noqa: BLE001 - a model that cannot be saved is still recorded by description
        run.recorder.problem(
            "model_save_failed", f"saving model {file_name!r} failed: {type(exc).__name__}: {exc}"
        )
        return None
    return path


def _layers(model: Any, limit: int = 200) -> list[list[str]] | None:
    named = getattr(model, "named_modules", None)
    if not callable(named):
        return None
    out = []
    for name, module in named():
        if name:
            out.append([name, type(module).__name__])
        if len(out) >= limit:
            break
    return out


def log_model(
    model_name: str,
    model: Any,
    context: Any = None,
    source: Any = None,
    log_model_info: bool = True,
    log_model_layers: bool = False,
    log_copy_in_prov_directory: bool = True,
    is_input: bool = False,
    other_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a model (class, parameter count); its state_dict is saved in the run directory when asked."""
    run = api.active_run()
    if run is None:
        return api.log_model(model, name=model_name)  # raises NoActiveRunError (or drops in a forked child)
    path = _save_model(run, model, f"{model_name}.pt") if log_copy_in_prov_directory else None
    attrs = _attrs(
        other_attrs,
        source=str(source) if source is not None else None,
        layers=_layers(model) if log_model_layers else None,
    )
    return api.log_model(
        model if log_model_info else None,
        name=model_name,
        path=path,
        role="input" if is_input else "output",
        context=_ctx(context, None),
        copy=False,
        attrs=attrs,
    )


def save_model_version(
    model_name: str,
    model: Any,
    context: Any = None,
    source: Any = None,
    step: int | None = None,
    incremental: bool = True,
    is_input: bool = False,
    log_copy_in_prov_directory: bool = True,
    other_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record one version of a model (``version`` attribute counts up per model name)."""
    run = api.active_run()
    if run is None:
        return api.log_model(model, name=model_name)
    version = _model_versions.get(model_name, -1) + 1
    _model_versions[model_name] = version
    path = _save_model(run, model, f"{model_name}_{version}.pt") if log_copy_in_prov_directory else None
    attrs = _attrs(
        other_attrs,
        source=str(source) if source is not None else None,
        version=version,
        incremental=incremental,
    )
    return api.log_model(
        model,
        name=model_name,
        path=path,
        role="input" if is_input else "output",
        context=_ctx(context, None),
        step=step,
        copy=False,
        attrs=attrs,
    )


def log_dataset(
    dataset_label: str,
    dataset: Any,
    context: Any = None,
    source: Any = None,
    log_dataset_info: bool = True,
    other_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a dataset or DataLoader (length, batch size, workers, samples when known)."""
    info: dict[str, Any] = {}
    if log_dataset_info:
        for attr in ("batch_size", "num_workers"):
            value = getattr(dataset, attr, None)
            if isinstance(value, int):
                info[attr] = value
        inner = getattr(dataset, "dataset", None)
        if inner is not None:
            try:
                info["total_samples"] = len(inner)
            except Exception:  # noqa: BLE001, S110 - an iterable dataset has no length
                pass
    attrs = _attrs(other_attrs, source=str(source) if source is not None else None, **info)
    return api.log_dataset(
        dataset if log_dataset_info else None, name=dataset_label, context=_ctx(context, None), attrs=attrs
    )


# ---- system, time, code ---------------------------------------------------------------------------------
def log_system_metrics(context: Any = None, step: int | None = 0) -> None:
    """Take a system sample now (the sampler thread already samples CPU/memory/GPU/energy every second)."""
    api.log_system_metrics()


def log_carbon_metrics(context: Any = None, step: int | None = 0) -> None:
    """Energy and emissions are sampled by the run's sampler thread (codecarbon when installed)."""
    api.log_system_metrics()


def log_current_execution_time(label: str, context: Any = None, step: int | None = None) -> None:
    """Log the seconds elapsed since start_run as metric ``label``."""
    start = _start_time if _start_time is not None else time.time()
    api.log_metric(label, time.time() - start, step=step, context=_ctx(context))


def log_execution_command(cmd: str, path: str) -> None:
    api.log_event("execution_command", command=str(cmd), path=str(path))


def log_source_code(path: str | None = None, use_git: bool = False) -> None:
    """Record the running script (sha256) and its git state (commit, branch, dirty, remote without credentials)."""
    from ..job.capture import capture_source

    main = sys.modules.get("__main__")
    script = path or getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else None)
    if not script:
        _once("source", "log_source_code(): no script path is known (interactive session?); nothing recorded")
        return
    info = capture_source(script)
    api.log_event("source_code", **info)
    if os.path.isfile(info["script"]):
        api.log_artifact(
            info["script"],
            name=os.path.basename(info["script"]),
            role="input",
            copy=False,
            attrs={"kind": "source_code"},
        )


def log_context(context: Any, is_subcontext_of: Any = None, source_of_data: Any = None) -> None:
    api.log_event(
        "context",
        context=_ctx(context),
        parent=_ctx(is_subcontext_of, None),
        source=str(source_of_data) if source_of_data is not None else None,
    )


def _flops(model: Any, batch: Any) -> float | None:
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        _once("flops", "log_flops_*: needs torch; nothing recorded")
        return None
    inputs = batch[0] if isinstance(batch, list | tuple) else batch
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(inputs)
        return float(counter.get_total_flops())
    except Exception as exc:  # noqa: BLE001
        _once("flops_failed", "counting FLOPs failed (%s: %s); nothing recorded", type(exc).__name__, exc)
        return None


def log_flops_per_batch(
    label: str, model: Any, batch: Any, context: Any = None, step: int | None = None
) -> None:
    """Count the forward FLOPs of ``model`` on ``batch`` (its first element if a tuple) with torch's counter."""
    flops = _flops(model, batch)
    if flops is not None:
        api.log_metric(label, flops, step=step, context=_ctx(context))


def log_flops_per_epoch(
    label: str, model: Any, dataset: Any, context: Any = None, step: int | None = None
) -> None:
    """Sum the forward FLOPs of ``model`` over every batch of ``dataset`` (a DataLoader or any iterable)."""
    total = 0.0
    for batch in dataset:
        flops = _flops(model, batch)
        if flops is None:
            return
        total += flops
    api.log_metric(label, total, step=step, context=_ctx(context))


def install_alias() -> None:
    """Make ``import yprov4ml`` give this module (for scripts that cannot be edited at all)."""
    sys.modules.setdefault("yprov4ml", sys.modules[__name__])
