"""yProv4ML's file calls for the drop-in: log_artifact, log_model, save_model_version, log_dataset, log_source_code.

Records have the same shape as prov4ml-hpc's own artifact/model/dataset records (size, sha256, role, context,
step, attrs).  Copies and saved models go under RUN_DIR/artifacts/rank-NNNNN/ (yProv4ML's ``artifacts_GR<n>``),
keep the file's name and extension, and can never land outside the run directory; nothing is written into
the current directory (yProv4ML saves every model there first).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import schema
from ..rank import api
from .yprov_run import STATE, get_artifacts_dir, once

MAX_SOURCE_FILES = 500


def _ctx(context: Any) -> str | None:
    from .yprov_core import ctx

    return ctx(context, None)


def _source(source: Any) -> str | None:
    return None if source is None else str(getattr(source, "value", source))


def _attrs(other_attrs: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    out = {str(k): api.json_value(v) for k, v in (other_attrs or {}).items()}
    out.update({k: api.json_value(v) for k, v in extra.items() if v is not None})
    return out


def _run(what: str) -> api.Run | None:
    """The active run; without one the usual NoActiveRunError (a forked worker gets a notice and None)."""
    run = api.active_run()
    if run is None:
        api._no_run(f"yprov4ml.{what}")
    return run


def _check_exists(path: str | os.PathLike, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"yprov4ml.{what}: no such file or directory", os.fspath(path))


def file_record(
    run: api.Run,
    kind: str,
    name: str,
    path: str | os.PathLike | None,
    *,
    role: str,
    context: str | None,
    step: int | None,
    copy_as: str | None,
    attrs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store one artifact/model/dataset record; ``copy_as`` (a relative name) copies the file under this rank's
    artifacts folder first.  A copy that fails is reported and the record kept."""
    from ..rank.artifacts import copy_into, describe_path

    api._check_name(name, kind)
    rec: dict[str, Any] = {
        "type": kind,
        "name": name,
        "role": role,
        "context": context,
        "step": step,
        "attrs": attrs,
    }
    if extra:
        rec.update(extra)
    if path is not None:
        rec.update(describe_path(path))
        if copy_as is not None:
            dest_root = get_artifacts_dir()
            try:
                dest = copy_into(path, dest_root, copy_as) if os.fspath(path) else None
            except (OSError, ValueError) as exc:
                run.recorder.problem(
                    f"{kind}_copy_failed", f"yprov4ml.log_artifact: copying {path!r} failed: {exc}"
                )
            else:
                if dest is not None:
                    rec["copy"] = os.path.relpath(dest, run.run_dir)
    run.recorder.add_record(rec)
    return rec


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
    """yProv4ML's log_artifact: a file with its size and sha256, copied (by default) as
    ``artifacts/rank-NNNNN/[<subdirectory>/]<file name>``; ``is_model`` makes it a model record.  An integer
    where 3.x has ``source`` is 2.x's positional ``step``.

    Raises:
        FileNotFoundError: ``artifact_path`` does not exist (as yProv4ML).
        NoActiveRunError: no run is active.
    """
    if isinstance(source, int) and not isinstance(
        source, bool
    ):  # 2.x: log_artifact(name, path, context, step)
        source, step = None, source
    run = _run("log_artifact")
    if run is None:
        return None
    _check_exists(artifact_path, "log_artifact")
    base = os.path.basename(os.path.normpath(os.fspath(artifact_path))) or "artifact"
    copy_as = f"{log_copy_subdirectory}/{base}" if log_copy_subdirectory else base
    return file_record(
        run,
        schema.REC_MODEL if is_model else schema.REC_ARTIFACT,
        artifact_name,
        artifact_path,
        role="input" if is_input else "output",
        context=_ctx(context),
        step=step,
        copy_as=copy_as if log_copy_in_prov_directory else None,
        attrs=_attrs(other_attrs, source=_source(source)),
    )


# ---- models ---------------------------------------------------------------------------------------------------
def model_facts(model_name: str, model: Any) -> dict[str, Any]:
    """yProv4ML's model attributes: total_params, memory_of_model and total_memory_load_of_model (MB)."""
    params = getattr(model, "parameters", None)
    if not callable(params):
        return {}
    try:
        total = int(sum(int(p.numel()) for p in params()))
    except Exception:  # noqa: BLE001 - facts are best effort
        return {}
    bits = {"64": 64, "32": 32, "16": 16, "bf16": 16}
    try:
        precision = bits.get(str(model.trainer.precision), 32) if hasattr(model, "trainer") else 32
    except Exception:  # noqa: BLE001 - Lightning raises when no trainer is attached
        precision = 32
    memory = total * precision / 8 / 1e6
    return {
        "total_params": total,
        "memory_of_model": memory,
        "total_memory_load_of_model": memory + 2 * total * 4e-6,  # + gradients + optimizer state, fp32
    }


def _layer_description(module: Any) -> dict[str, Any]:
    children = dict(module.named_children())
    if children:
        return {name: _layer_description(child) for name, child in children.items()}
    node: dict[str, Any] = {"layer_type": str(type(module))}
    for attr in (
        "in_features",
        "out_features",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
    ):
        if hasattr(module, attr):
            node[attr] = str(getattr(module, attr))
    weight = getattr(module, "weight", None)
    if weight is not None and hasattr(weight, "dtype"):
        node["dtype"] = str(weight.dtype)
    return node


def _save_state(run: api.Run, model: Any, folder: str, file_name: str) -> str | None:
    """torch.save the model's state_dict as artifacts/rank-NNNNN/<folder>/<file>; None when not possible."""
    from ..rank.artifacts import safe_component

    state = getattr(model, "state_dict", None)
    torch = sys.modules.get("torch")
    if torch is None or not callable(state):
        once("no_torch_save", "models that are not torch modules are recorded by description only")
        return None
    path = os.path.join(get_artifacts_dir(), safe_component(folder), safe_component(file_name))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(state(), path)
    except Exception as exc:  # noqa: BLE001 - the model is still recorded by description
        run.recorder.problem(
            "model_save_failed", f"saving model {file_name!r} failed: {type(exc).__name__}: {exc}"
        )
        return None
    return path


def _model_record(
    run: api.Run,
    model_name: str,
    model: Any,
    path: str | None,
    *,
    context: Any,
    step: int | None,
    is_input: bool,
    attrs: dict[str, Any],
) -> dict[str, Any]:
    extra = {"model": api._model_facts(model)}
    rec = file_record(
        run,
        schema.REC_MODEL,
        model_name,
        path,
        role="input" if is_input else "output",
        context=_ctx(context),
        step=step,
        copy_as=None,
        attrs=attrs,
        extra=extra,
    )
    return rec


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
    """yProv4ML's save_model_version: ``artifacts/rank-NNNNN/<name>/<name>_<version>.pt`` (version 0, 1, ...).

    An integer where 3.x has ``source`` is 2.x's positional ``step`` (``save_model_version(name, m, ctx, epoch)``).
    """
    if isinstance(source, int) and not isinstance(source, bool) and step is None:
        source, step = None, source
    run = _run("save_model_version")
    if run is None:
        return None
    version = None
    if incremental:
        version = STATE.model_versions.get(model_name, -1) + 1
        STATE.model_versions[model_name] = version
    file_name = f"{model_name}_{version}.pt" if incremental else f"{model_name}.pt"
    path = _save_state(run, model, model_name, file_name) if log_copy_in_prov_directory else None
    attrs = _attrs(other_attrs, source=_source(source), version=version, incremental=incremental)
    rec = _model_record(
        run, model_name, model, path, context=context, step=step, is_input=is_input, attrs=attrs
    )
    return rec


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
    """yProv4ML's log_model: ``artifacts/rank-NNNNN/<name>/<name>.pt`` with total_params and the memory figures
    (``log_model_info``) and ``<name>_layers_description.json`` beside it (``log_model_layers``)."""
    run = _run("log_model")
    if run is None:
        return None
    path = _save_state(run, model, model_name, f"{model_name}.pt") if log_copy_in_prov_directory else None
    info = model_facts(model_name, model) if log_model_info else {}
    if log_model_layers and callable(getattr(model, "named_children", None)):
        from ..rank.artifacts import safe_component

        folder = os.path.join(get_artifacts_dir(), safe_component(model_name))
        os.makedirs(folder, exist_ok=True)
        desc = os.path.join(folder, safe_component(f"{model_name}_layers_description.json"))
        with open(desc, "w", encoding="utf-8") as fh:
            json.dump(_layer_description(model), fh)
        info["layers_description_path"] = os.path.relpath(desc, run.run_dir)
    attrs = _attrs(other_attrs, source=_source(source), **info)
    return _model_record(
        run, model_name, model, path, context=context, step=None, is_input=is_input, attrs=attrs
    )


# ---- datasets -------------------------------------------------------------------------------------------------
def _len(obj: Any) -> int | None:
    try:
        return len(obj)
    except Exception:  # noqa: BLE001 - an iterable dataset has no length
        return None


def dataset_stats(dataset: Any) -> dict[str, Any]:
    """yProv4ML's ``stat_*`` figures of a DataLoader, Subset or Dataset, with the true counts.

    yProv4ML 3.2.8 writes ``total_samples`` = len(dataset) x batch_size and ``total_batches`` = len(dataset)
    for a DataLoader (5120 and 160 for 160 samples in batches of 32); here they are 160 and 5.
    """
    out: dict[str, Any] = {}
    if hasattr(dataset, "batch_size") and hasattr(dataset, "sampler") and hasattr(dataset, "dataset"):
        out["stat_batch_size"] = dataset.batch_size
        out["stat_num_workers"] = getattr(dataset, "num_workers", None)
        out["stat_shuffle"] = type(dataset.sampler).__name__ == "RandomSampler"
        out["stat_total_steps"] = _len(dataset)
        out["stat_total_batches"] = _len(dataset)
        out["stat_total_samples"] = _len(dataset.dataset)
    elif hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        out["stat_total_samples"] = _len(dataset)
        out["stat_parent_samples"] = _len(dataset.dataset)
    else:
        out["stat_total_samples"] = _len(dataset)
    return {k: v for k, v in out.items() if v is not None}


def log_dataset(
    dataset_label: str,
    dataset: Any,
    context: Any = None,
    source: Any = None,
    log_dataset_info: bool = True,
    other_attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """yProv4ML's log_dataset: an input dataset record with its class and length, and for a DataLoader its
    batch size, workers, shuffle, steps, batches and samples (:func:`dataset_stats`)."""
    run = _run("log_dataset")
    if run is None:
        return None
    extra = None
    if log_dataset_info:
        facts: dict[str, Any] = {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}"}
        length = _len(dataset)
        if length is not None:
            facts["length"] = length
        extra = {"dataset": facts}
    stats = dataset_stats(dataset) if log_dataset_info else {}
    return file_record(
        run,
        schema.REC_DATASET,
        dataset_label,
        None,
        role="input",
        context=_ctx(context),
        step=None,
        copy_as=None,
        attrs=_attrs(other_attrs, source=_source(source), **stats),
        extra=extra,
    )


# ---- source code ----------------------------------------------------------------------------------------------
def _script() -> str | None:
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else None)
    return os.path.abspath(script) if script and os.path.isfile(script) else None


def project_files(script: str, run_dir: str) -> list[str]:
    """The script and the loaded modules below its directory (never the interpreter's, a venv's or the run's)."""
    root = Path(script).resolve().parent
    skip = {Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, run_dir}}
    found = {Path(script).resolve()}
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if not isinstance(f, str) or not f.endswith(".py") or not os.path.isabs(f) or not os.path.isfile(f):
            continue  # torch's lazy modules name a bare "_classes.py": not a file of the project
        p = Path(f).resolve()
        if not p.is_relative_to(root) or "site-packages" in p.parts or any(p.is_relative_to(s) for s in skip):
            continue
        found.add(p)
        if len(found) >= MAX_SOURCE_FILES:
            break
    return sorted(str(p) for p in found)


def log_source_code(use_git: bool | str | os.PathLike | None = False, *, path: str | None = None) -> None:
    """yProv4ML's log_source_code.

    ``use_git=True`` (3.x): parameter ``source_code`` = ``<remote>/<commit>`` (credentials stripped; the commit
    alone without a remote).  ``False``: the script and the project's loaded modules as input artifacts (sha256;
    copied under artifacts/rank-NNNNN/src/ by global rank 0).  A path (2.x's ``log_source_code(path)``): that
    file or folder, copied, and parameter ``source_code`` = the copy.
    """
    from ..job.capture import capture_source

    if isinstance(use_git, str | os.PathLike):
        path, use_git = os.fspath(use_git), False
    run = _run("log_source_code")
    if run is None:
        return None
    if path is not None:
        _check_exists(path, "log_source_code")
        rec = file_record(
            run,
            schema.REC_ARTIFACT,
            "source_code",
            path,
            role="input",
            context=None,
            step=None,
            copy_as=f"src/{os.path.basename(os.path.normpath(path))}",
            attrs={"kind": "source_code"},
        )
        from .yprov_core import log_param

        log_param("source_code", rec.get("copy") or rec.get("path"))
        return
    script = _script()
    if script is None:
        once("source", "log_source_code(): no script path is known (interactive session?); nothing recorded")
        return
    info = capture_source(script, git=bool(use_git))
    api.log_event("source_code", **info)
    if use_git:
        from .yprov_core import log_param

        commit, remote = info.get("git_commit"), info.get("git_remote_url")
        if commit:
            log_param("source_code", f"{remote}/{commit}" if remote else commit)
        else:
            once("source_git", "log_source_code(use_git=True): %s is not in a git work tree", script)
        return
    root = os.path.dirname(script)
    for f in project_files(script, run.run_dir):
        rel = os.path.relpath(f, root)
        file_record(
            run,
            schema.REC_ARTIFACT,
            rel,
            f,
            role="input",
            context=None,
            step=None,
            copy_as=f"src/{rel}" if run.global_rank == 0 else None,
            attrs={"kind": "source_code"},
        )
