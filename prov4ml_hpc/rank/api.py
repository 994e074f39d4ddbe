"""The public logging API: module-level functions acting on this process's one active run.

``start_run`` opens this rank's buffer file in the run directory; ``log_*`` functions add to it;
``end_run`` flushes, closes and (on a multi-rank run) lets rank 0 write the job's merged outputs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import schema, settings
from .._version import __version__
from ..errors import ConfigError, InvalidNameError, NoActiveRunError, RunAlreadyActiveError
from ..log import configure as _configure_logging
from ..log import logger

TRAINING = "training"
VALIDATION = "validation"
TESTING = "testing"

_active: Run | None = None
_closing: Run | None = None  # the run close_run is closing (a second caller returns at once)
_hot: Callable[[Any, Any, Any, Any], None] | None = None  # the active recorder's bound log_metric
_fork_hooks_installed = False
_forked_child_warned = False
_lock = threading.RLock()


class Run:
    """This rank's part of a run.  Use the module functions, or this object (also a context manager)."""

    def __init__(self, location, identity, recorder, *, copy_artifacts: bool) -> None:
        self.location = location
        self.identity = identity
        self.recorder = recorder
        self.copy_artifacts = copy_artifacts
        self.start_time = time.time()
        self.sampler = None
        self._end_hooks: list[Callable[[Run], None]] = []
        self.final_status: str | None = None
        self.started_by: str | None = None  # "launcher" or "hook" when they started it

    # identity -----------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.location.run_id

    @property
    def run_dir(self) -> str:
        return self.location.run_dir

    @property
    def experiment(self) -> str:
        return self.location.experiment

    @property
    def attempt(self) -> int:
        return self.location.attempt

    @property
    def global_rank(self) -> int:
        return self.identity.global_rank

    @property
    def world_size(self) -> int:
        return self.identity.world_size

    @property
    def rank_file(self) -> str:
        return self.recorder.path

    @property
    def status(self) -> str:
        return self.recorder.status

    def __repr__(self) -> str:
        return (
            f"Run(run_id={self.run_id!r}, rank={self.global_rank}/{self.world_size}, "
            f"status={self.status!r}, dir={self.run_dir!r})"
        )

    # context manager ----------------------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.recorder.closed:
            return
        if exc_type is None:
            end_run()
        elif issubclass(exc_type, KeyboardInterrupt):
            end_run(status=schema.STATUS_CANCELLED, reason="KeyboardInterrupt", gather=False)
        else:
            end_run(status=schema.STATUS_FAILED, reason=f"{exc_type.__name__}: {exc}", gather=False)

    # logging (same as the module functions) -----------------------------------------------------------
    def log_metric(self, key: str, value: Any, step: int | None = None, context: str = TRAINING) -> None:
        self.recorder.log_metric(key, value, step, context)

    def add_end_hook(self, hook: Callable[[Run], None]) -> None:
        """Call hook(run) after this rank's file is closed by end_run (used for the in-job gather)."""
        self._end_hooks.append(hook)


# ---------------------------------------------------------------------------------------------------------
def start_run(
    experiment: str | None = None,
    run_dir: str | None = None,
    *,
    run_id: str | None = None,
    flush_interval: float | None = None,
    buffer_rows: int | None = None,
    copy_artifacts: bool | None = None,
    system_metrics: bool | None = None,
    sample_interval: float | None = None,
    gather: bool | None = None,
    graph: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Run:
    """Start this process's run and open its rank file.

    Args:
        experiment: experiment name (a directory under run_dir); default PROV4ML_HPC_EXPERIMENT or "experiment".
        run_dir: RUN_ROOT; default PROV4ML_HPC_RUN_DIR or ./prov4ml_runs.
        run_id: force the run id (every rank must pass the same); default from SLURM, torchrun or MPI.
        flush_interval: seconds between flushes (default 1.0, PROV4ML_HPC_FLUSH_INTERVAL).
        buffer_rows: rows buffered before an early flush (default 8192, PROV4ML_HPC_BUFFER_ROWS).
        copy_artifacts: copy logged artifacts into the run directory (default False).
        system_metrics: sample CPU/memory/GPU/energy in a thread (default True, see docs/metrics.md).
        sample_interval: seconds between system samples (default 1.0).
        gather: on a multi-rank run, let rank 0 write run.h5 and provenance.json at end_run once every rank
            closed its file (default True; no MPI involved, see docs/merge.md).
        graph: detail level of that provenance.json: "auto" (default, PROV4ML_HPC_GRAPH), "job", "node", "rank".
        environ: environment to read instead of os.environ (tests).

    Returns:
        The active :class:`Run` (also a context manager).

    Raises:
        RunAlreadyActiveError: a run is already active in this process.
        ConfigError: a bad option or environment variable (the message says which and how to fix it).
    """
    global _active, _hot
    from ..job.environment import detect_identity, environment_snapshot, slurm_snapshot
    from ..job.location import resolve_location
    from . import lifecycle
    from .recorder import (
        Recorder,
        RecorderConfig,
        iso_utc,
        package_versions,
        python_version,
    )

    with _lock:
        if _active is not None and getattr(_active, "started_by", None) in ("launcher", "hook"):
            # the script runs under `prov4ml-hpc run` or the import hook: its own start_run joins that run
            logger.info(
                "start_run: using the run %s already started by the %s (arguments ignored)",
                _active.run_id,
                _active.started_by,
            )
            return _active
        if _active is not None:
            raise RunAlreadyActiveError(
                f"a run is already active in this process ({_active.run_id}, rank file {_active.rank_file}); "
                "call end_run() first"
            )
        env = os.environ if environ is None else environ
        identity = detect_identity(env)
        _configure_logging(identity.global_rank, identity.node)
        # every setting is checked before anything collective (the run id may be agreed over MPI) or on disk
        options = lifecycle.resolve(
            env, system_metrics=system_metrics, sample_interval=sample_interval, gather=gather, graph=graph
        )
        config = RecorderConfig(
            flush_interval=settings.get(settings.FLUSH_INTERVAL, env, flush_interval),
            buffer_rows=settings.get(settings.BUFFER_ROWS, env, buffer_rows),
        )
        copy = settings.get(settings.COPY_ARTIFACTS, env, copy_artifacts)
        location = resolve_location(identity, run_dir, experiment, run_id, env)
        path = location.rank_file(identity.global_rank)
        if os.path.exists(path):
            raise ConfigError(
                f"{path} already exists: rank {identity.global_rank} of run {location.run_id} attempt "
                f"{location.attempt} was recorded before, and nothing is ever overwritten. Use another run id, "
                "or set PROV4ML_HPC_ATTEMPT to continue the run as a new attempt"
            )
        now, mono = time.time(), time.monotonic()
        attrs = {
            schema.A_RUN_ID: location.run_id,
            schema.A_EXPERIMENT: location.experiment,
            schema.A_RUN_ID_SOURCE: location.id_source,
            schema.A_JOB_ID: identity.job_id,
            schema.A_GLOBAL_RANK: identity.global_rank,
            schema.A_LOCAL_RANK: identity.local_rank,
            schema.A_WORLD_SIZE: identity.world_size,
            schema.A_NODE: identity.node,
            schema.A_PID: os.getpid(),
            schema.A_ATTEMPT: location.attempt,
            schema.A_IDENTITY_SOURCE: identity.source,
            schema.A_START_TIME: iso_utc(now),
            schema.A_START_UNIX: now,
            schema.A_START_MONOTONIC: mono,
            schema.A_PYTHON_VERSION: python_version(),
            schema.A_PACKAGE_VERSION: __version__,
            schema.A_PACKAGES: package_versions(),
            schema.A_ARGV: list(sys.argv),
            schema.A_CWD: os.getcwd(),
            schema.A_ENV: environment_snapshot(env),
            schema.A_SLURM: slurm_snapshot(env),
            schema.A_USER: _user_name(),
            schema.A_HOSTNAME: _hostname(),
            schema.A_SOURCE: _capture_source(git=identity.global_rank == 0),
        }
        if identity.local_rank == 0:  # once per node: the software stack is the node's
            attrs[schema.A_DISTRIBUTIONS] = _distributions()
        try:
            recorder = Recorder(path, attrs, config)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the rank file {path}: {exc}. Check that the run directory is "
                "writable, or choose another one (start_run(run_dir=...) or PROV4ML_HPC_RUN_DIR)"
            ) from exc
        run = Run(location, identity, recorder, copy_artifacts=copy)
        _active, _hot = run, recorder.log_metric
        _install_process_hooks()
        logger.info("run %s started: rank file %s", location.run_id, path)
    lifecycle.on_start(run, options)
    return run


def end_run(status: str | None = None, reason: str | None = None, *, gather: bool = True) -> str | None:
    """Flush and close this rank's file and set its final status (default "completed").

    On a multi-rank run, rank 0 then waits for the other ranks' files to be closed and writes run.h5 and
    provenance.json (see docs/merge.md); ``gather=False`` skips that (`prov4ml-hpc merge` does it after the job).  Under the launcher or the import hook, the script's own end_run() is left to them.
    Returns the final status, or None when no run was active.
    """
    run = _active
    if run is not None and run.started_by in ("launcher", "hook"):
        logger.info("end_run: the %s ends this run when the script is done", run.started_by)
        return run.status
    return close_run(status, reason, gather=gather)


def close_run(status: str | None = None, reason: str | None = None, *, gather: bool = True) -> str | None:
    """end_run for the launcher, the import hook, signal handlers and interpreter exit: always closes.

    The run stays active until its file is closed (a signal handler arriving meanwhile finds it, and in the
    main thread the signals are held until the file is closed: :class:`holding.hold`); then the end hooks
    (the in-job end of job) run.
    """
    global _active, _hot, _closing
    run = _active
    if run is None:
        return None
    if _closing is not None:  # another caller (a signal's helper thread) is closing it
        return run.recorder.status
    _closing = run
    from . import holding, lifecycle

    try:
        with holding.hold():
            if not gather:
                run._end_hooks.clear()
            # after a signal SLURM sends SIGKILL KillWait seconds later: the rank file must be closed well
            # before, so the sampler (whose energy totals can take a second) gets half a second, not ten
            hurry = status in (schema.STATUS_CANCELLED, schema.STATUS_SIGNALLED)
            lifecycle.on_end(run, timeout=0.5 if hurry else 10.0)
            final = run.recorder.close(status or schema.STATUS_COMPLETED, reason)
            run.final_status = final
            if _active is run:  # no lock: a signal's helper thread may close while the main thread holds it
                _active, _hot = None, None
    finally:
        _closing = None
    for hook in run._end_hooks:
        try:
            hook(run)
        except Exception as exc:  # noqa: BLE001 - the rank file is closed and safe; say what failed
            logger.error(
                "after closing the rank file: %s failed: %s: %s",
                getattr(hook, "__name__", hook),
                type(exc).__name__,
                exc,
            )
    return final


def active_run() -> Run | None:
    """The active run of this process, or None."""
    return _active


def _no_run(what: str) -> None:
    if _forked_from_pid is not None:
        global _forked_child_warned
        if not _forked_child_warned:
            _forked_child_warned = True
            logger.warning(
                "%s called in a forked child process (pid %d) of the rank process (pid %d): values logged in "
                "worker processes are not recorded; log from the training process instead",
                what,
                os.getpid(),
                _forked_from_pid,
            )
        return
    raise NoActiveRunError(
        f"{what}() needs an active run: call prov4ml_hpc.start_run() first "
        "(or launch the script with `prov4ml-hpc run`)"
    )


# ---- hot path ------------------------------------------------------------------------------------------
def log_metric(key: str, value: Any, step: int | None = None, context: str = TRAINING) -> None:
    """Log one value of the series (key, context).  ``step=None`` continues the series' own counter."""
    hot = _hot
    if hot is None:
        return _no_run("log_metric")
    hot(key, value, step, context)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, context: str = TRAINING) -> None:
    """Log several metrics at the same step."""
    hot = _hot
    if hot is None:
        return _no_run("log_metrics")
    for key, value in metrics.items():
        hot(key, value, step, context)


# ---- records -------------------------------------------------------------------------------------------
def _run(what: str) -> Run | None:
    run = _active
    if run is None:
        _no_run(what)
    return run


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} name must be a str, got {type(name).__name__} {name!r}")


def _check_context(context: Any) -> None:
    if context is not None and not isinstance(context, str):
        raise InvalidNameError(f"context must be a str or None, got {type(context).__name__} {context!r}")


def json_value(value: Any) -> Any:
    """A parameter value as JSON: numbers, bools, strings and None as they are; numpy scalars unwrapped;
    lists/dicts of those kept; anything else as its repr."""
    import json
    import math

    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 and getattr(value, "size", 1) == 1:
        try:
            return json_value(value.item())
        except Exception:  # noqa: BLE001, S110
            pass
    if isinstance(value, list | tuple | dict):
        try:
            return json.loads(json.dumps(value, allow_nan=False, default=str))
        except (TypeError, ValueError):
            pass
    return repr(value)


def log_param(key: str, value: Any, context: str | None = None) -> None:
    """Record a parameter (hyperparameter, configuration value)."""
    run = _run("log_param")
    if run is None:
        return
    _check_name(key, "parameter")
    _check_context(context)
    if len(key) > schema.MAX_NAME_LENGTH:
        run.recorder.problem(
            "name_too_long",
            f"parameter name {key[:40]!r}... is longer than {schema.MAX_NAME_LENGTH} characters; dropped",
        )
        return
    run.recorder.add_record(
        {"type": schema.REC_PARAM, "name": key, "value": json_value(value), "context": context}
    )


def log_params(params: Mapping[str, Any], context: str | None = None) -> None:
    """Record several parameters."""
    for key, value in params.items():
        log_param(key, value, context)


def _log_file(
    kind: str,
    path: str | os.PathLike | None,
    name: str | None,
    role: str,
    context: str | None,
    step: int | None,
    copy: bool | None,
    hash_files: bool,
    attrs: Mapping[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    from .artifacts import copy_into, describe_path

    run = _run(f"log_{kind}")
    if run is None:
        return None
    if role not in ("input", "output"):
        raise ConfigError(f"role must be 'input' or 'output', got {role!r}")
    _check_context(context)
    if name is not None:
        _check_name(name, kind)
    if path is None and name is None:
        raise ConfigError(f"log_{kind} needs a path or a name")
    rec: dict[str, Any] = {
        "type": kind,
        "name": name if name is not None else os.fspath(path),
        "role": role,
        "context": context,
        "step": step,
        "attrs": dict(attrs or {}),
    }
    if extra:
        rec.update(extra)
    if path is not None:
        try:
            rec.update(describe_path(path, hash_files=hash_files))
        except OSError as exc:
            run.recorder.problem(f"{kind}_unreadable", f"log_{kind}: cannot read {path!r}: {exc}")
            rec["error"] = str(exc)
        do_copy = run.copy_artifacts if copy is None else copy
        if do_copy and rec.get("exists") is not False and "error" not in rec:
            try:
                dest_root = os.path.join(run.run_dir, schema.ARTIFACTS_DIR, f"rank-{run.global_rank:05d}")
                dest = copy_into(path, dest_root, rec["name"])
                rec["copy"] = os.path.relpath(dest, run.run_dir)
            except (OSError, ValueError) as exc:
                run.recorder.problem(f"{kind}_copy_failed", f"log_{kind}: copying {path!r} failed: {exc}")
        elif rec.get("exists") is False:
            run.recorder.problem(f"{kind}_missing", f"log_{kind}: {path!r} does not exist; recorded by name")
    run.recorder.add_record(rec)
    return rec


def log_artifact(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    role: str = "output",
    context: str | None = None,
    step: int | None = None,
    copy: bool | None = None,
    hash: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a file the run used (role="input") or produced (role="output") with its size and sha256.

    ``copy=True`` (or start_run(copy_artifacts=True)) also copies it under RUN_DIR/artifacts/rank-NNNNN/.
    Returns the stored record.
    """
    return _log_file(schema.REC_ARTIFACT, path, name, role, context, step, copy, hash, attrs)


def _model_facts(model: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            facts["parameters"] = int(sum(int(p.numel()) for p in params()))
        except Exception:  # noqa: BLE001, S110 - facts are best effort
            pass
    return facts


def log_model(
    model: Any = None,
    name: str = "model",
    *,
    path: str | os.PathLike | None = None,
    role: str = "output",
    context: str | None = None,
    step: int | None = None,
    copy: bool | None = None,
    hash: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a model: its class and parameter count when an object is given, the file when a path is."""
    extra = {"model": _model_facts(model)} if model is not None else None
    return _log_file(schema.REC_MODEL, path, name, role, context, step, copy, hash, attrs, extra)


def log_dataset(
    dataset: Any = None,
    name: str = "dataset",
    *,
    path: str | os.PathLike | None = None,
    role: str = "input",
    context: str | None = None,
    hash: bool = True,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a dataset used by the run: its length/class when an object is given, the file when a path is."""
    extra = None
    if dataset is not None:
        extra = {"dataset": {"class": f"{type(dataset).__module__}.{type(dataset).__qualname__}"}}
        try:
            extra["dataset"]["length"] = len(dataset)
        except Exception:  # noqa: BLE001, S110
            pass
    return _log_file(schema.REC_DATASET, path, name, role, context, None, False, hash, attrs, extra)


def log_event(name: str, context: str | None = None, **attrs: Any) -> None:
    """Record a one-off event (checkpoint written, epoch started, ...) with free attributes."""
    run = _run("log_event")
    if run is None:
        return
    _check_name(name, "event")
    run.recorder.add_record(
        {
            "type": schema.REC_EVENT,
            "name": name,
            "context": context,
            "attrs": {k: json_value(v) for k, v in attrs.items()},
        }
    )


def log_system_metrics() -> None:
    """Take one system sample now (CPU, memory, GPU, energy), as the sampler thread does every interval."""
    run = _run("log_system_metrics")
    if run is None:
        return
    from . import lifecycle

    lifecycle.sample_now(run)


# ---- process hooks ---------------------------------------------------------------------------------------
_forked_from_pid: int | None = None
_prev_excepthook = None


def _before_fork() -> None:
    run = _active
    if run is not None:
        run.recorder.before_fork()


def _after_fork_parent() -> None:
    run = _active
    if run is not None:
        run.recorder.after_fork_parent()


def _after_fork_child() -> None:
    global _active, _hot, _forked_from_pid
    run = _active
    if run is None:
        return
    run.recorder.after_fork_child()
    _forked_from_pid = run.recorder._pid
    _active, _hot = None, None


def _excepthook(exc_type, exc, tb) -> None:
    # Only the main thread's uncaught exception ends the run.  C extensions (h5py among them) may call
    # PyErr_Print, and so this hook, from any thread in the middle of their work: never act there.
    run = _active
    if run is not None and threading.current_thread() is threading.main_thread():
        try:
            if issubclass(exc_type, KeyboardInterrupt):
                close_run(status=schema.STATUS_CANCELLED, reason="KeyboardInterrupt", gather=False)
            else:
                close_run(
                    status=schema.STATUS_FAILED, reason=f"uncaught {exc_type.__name__}: {exc}", gather=False
                )
        except Exception:  # noqa: BLE001, S110 - never hide the user's traceback
            pass
    (_prev_excepthook or sys.__excepthook__)(exc_type, exc, tb)
    if threading.current_thread() is threading.main_thread():
        from . import mpiworld

        if (
            mpiworld.should_abort()
        ):  # the other ranks may wait in a collective: end the job, as mpi4py's runner
            mpiworld.abort_mpi()


def _at_exit() -> None:
    if _active is not None and os.getpid() == _active.recorder._pid:
        close_run()


def _install_process_hooks() -> None:
    global _fork_hooks_installed, _prev_excepthook
    if _fork_hooks_installed:
        return
    _fork_hooks_installed = True
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )
    _prev_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    import atexit

    atexit.register(_at_exit)


def _capture_source(git: bool) -> dict[str, Any]:
    """The script's sha256 and its git commit/dirty flag/remote (never raises)."""
    try:
        from ..job.capture import capture_source

        main = sys.modules.get("__main__")
        script = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else None)
        if not script or not os.path.isfile(script):
            return {"script": script or "<interactive>"}
        return capture_source(script, git=git)
    except Exception as exc:  # noqa: BLE001 - capture is best effort
        return {"error": f"{type(exc).__name__}: {exc}"}


def _distributions() -> dict[str, str]:
    try:
        from ..job.capture import installed_distributions

        return installed_distributions()
    except Exception:  # noqa: BLE001
        return {}


def _user_name() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return os.environ.get("USER")


def _hostname() -> str:
    import socket

    return socket.gethostname()
