"""A PyTorch Lightning logger that records every rank's metrics, hyperparameters and checkpoints.

Usage::

    from prov4ml_hpc.integrations.lightning import Prov4mlHpcLogger

    logger = Prov4mlHpcLogger("mnist", run_dir="prov4ml_runs")
    trainer = Trainer(logger=logger, max_epochs=2)
    trainer.fit(model, datamodule=dm); trainer.test(model, datamodule=dm)

Each rank records into its own rank file (not only rank 0).  The context of a metric is Lightning's own stage
when it is logged (training -> "training", validating and sanity checking -> "validation", testing ->
"testing", predicting -> "prediction"), never a guess from the metric's name; the step is the one Lightning
passes.  The logger learns its trainer from Lightning's ``log_graph`` call at the start of every
fit/validate/test; with ``Trainer(enable_autolog_hparams=False)`` also pass the logger in ``callbacks=[...]``.

The logger uses the active run if there is one (launcher, import hook or an explicit ``start_run``) and
otherwise starts one on first use; it never installs signal handlers.  Lightning's SLURM auto-requeue calls
``finalize("finished")`` before requeueing: a run the logger started is then closed with status "signalled".
After a normal fit/validate/test it is only flushed, so that one script can fit, then validate and test; it
is closed at process exit (or by ``prov4ml_hpc.end_run()``).
"""

from __future__ import annotations

import os
import weakref
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers.logger import Logger
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning.callbacks import Callback
        from pytorch_lightning.loggers.logger import Logger
    except ImportError:
        raise ImportError(
            "prov4ml_hpc.integrations.lightning needs PyTorch Lightning: pip install lightning "
            "(install torch first, so that pip does not pick another torch build)"
        ) from None

from .. import schema
from ..log import logger as _log
from ..rank import api

STAGE_CONTEXTS = {
    "train": api.TRAINING,
    "sanity_check": api.VALIDATION,
    "validate": api.VALIDATION,
    "test": api.TESTING,
    "predict": "prediction",
}
FN_CONTEXTS = {"fit": api.TRAINING, "validate": api.VALIDATION, "test": api.TESTING, "predict": "prediction"}


def flatten_params(params: Mapping[str, Any] | Namespace, sep: str = "/") -> dict[str, Any]:
    """Nested dicts and Namespaces as one flat dict (``{"opt": {"lr": 1}}`` -> ``{"opt/lr": 1}``)."""
    if isinstance(params, Namespace):
        params = vars(params)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif callable(value) and not isinstance(value, type):
            out[prefix] = (
                getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or repr(value)
            )
        else:
            out[prefix] = value

    for key, value in dict(params).items():
        walk(str(key), value)
    return out


class Prov4mlHpcLogger(Logger, Callback):
    """Lightning logger writing into prov4ml-hpc rank files (see the module docstring).

    Args:
        experiment: experiment name for a run the logger starts (default: PROV4ML_HPC_EXPERIMENT / "experiment").
        run_dir: RUN_ROOT for a run the logger starts (default: PROV4ML_HPC_RUN_DIR / ./prov4ml_runs).
        run_id: force the run id (same on every rank); default from SLURM, torchrun or MPI.
        hash_checkpoints: record the sha256 of every checkpoint file (reads the whole file on rank 0).
        start_run_kwargs: more keyword arguments for :func:`prov4ml_hpc.start_run`.
    """

    def __init__(
        self,
        experiment: str | None = None,
        run_dir: str | None = None,
        *,
        run_id: str | None = None,
        hash_checkpoints: bool = True,
        start_run_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._experiment_name = experiment
        self._run_dir = run_dir
        self._run_id = run_id
        self._hash = hash_checkpoints
        self._start_kwargs = dict(start_run_kwargs or {})
        self._run: api.Run | None = None
        self._owner_pid: int | None = None  # pid that started our run (a spawned/forked copy starts its own)
        self._trainer_ref: Any = None
        self._logged_ckpts: dict[str, float] = {}
        self._closed_warned = False

    # ---------------------------------------------------------------------------------------- run
    def _ensure_run(self) -> api.Run | None:
        active = api.active_run()
        if active is not None:
            return active
        if self._run is not None and self._owner_pid == os.getpid():
            if not self._closed_warned:  # the run was closed (requeue finalize or end_run): drop, say once
                self._closed_warned = True
                _log.warning(
                    "Prov4mlHpcLogger: the run %s is closed; later Lightning logs are not recorded",
                    self._run.run_id,
                )
            return None
        self._run = api.start_run(
            self._experiment_name, self._run_dir, run_id=self._run_id, **self._start_kwargs
        )
        self._owner_pid = os.getpid()
        api.log_event("lightning_logger", logger=type(self).__name__)
        return self._run

    @property
    def run(self) -> api.Run | None:
        """The run this logger records into (starting it if needed)."""
        return self._ensure_run()

    @property
    def experiment(self) -> api.Run | None:
        return self._ensure_run()

    @property
    def name(self) -> str:
        run = self._ensure_run() or self._run
        return run.experiment if run is not None else (self._experiment_name or "experiment")

    @property
    def version(self) -> str:
        run = self._ensure_run() or self._run
        return run.run_id if run is not None else "unknown"

    @property
    def save_dir(self) -> str | None:
        """RUN_ROOT: Lightning puts checkpoints in save_dir/name/version/checkpoints, inside the run directory."""
        run = self._ensure_run() or self._run
        return run.location.root if run is not None else self._run_dir

    @property
    def root_dir(self) -> str | None:
        return self.save_dir

    @property
    def log_dir(self) -> str | None:
        run = self._ensure_run() or self._run
        return run.run_dir if run is not None else None

    # ---------------------------------------------------------------------------------------- trainer
    def _remember_trainer(self, trainer: Any) -> None:
        if trainer is None:
            return
        try:
            self._trainer_ref = weakref.ref(trainer)
        except TypeError:
            self._trainer_ref = lambda: trainer

    def _trainer(self) -> Any:
        return self._trainer_ref() if self._trainer_ref is not None else None

    def _context(self) -> str:
        trainer = self._trainer()
        state = getattr(trainer, "state", None)
        if state is None:
            return api.TRAINING
        stage = getattr(state, "stage", None)
        value = getattr(stage, "value", stage)
        if value in STAGE_CONTEXTS:
            return STAGE_CONTEXTS[value]
        fn = getattr(state, "fn", None)
        return FN_CONTEXTS.get(getattr(fn, "value", fn), api.TRAINING)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:  # Callback hook (optional)
        self._remember_trainer(trainer)

    # ---------------------------------------------------------------------------------------- Logger API
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning calls this at the start of every fit/validate/test: remember the trainer, log the model."""
        self._remember_trainer(getattr(model, "_trainer", None) or getattr(model, "trainer", None))
        if self._ensure_run() is None:
            return
        if not getattr(self, "_model_logged", False):
            self._model_logged = True
            api.log_model(model, name=type(model).__name__, role="input", context=api.TRAINING)

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if self._ensure_run() is None:
            return
        api.log_params(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._ensure_run() is None:
            return
        context = self._context()
        for key, value in metrics.items():
            api.log_metric(key, value, step=step, context=context)

    def save(self) -> None:
        """Nothing to do: the rank file is flushed by its own thread."""

    def finalize(self, status: str) -> None:
        run = api.active_run()
        if run is None:
            return
        if status == "finished" and run is self._run and self._owner_pid == os.getpid():
            # Lightning's SLURM auto-requeue: the job is about to be requeued; close this attempt cleanly.
            api.log_event("lightning_finalize", status=status)
            api.end_run(status=schema.STATUS_SIGNALLED, reason="Lightning SLURM auto-requeue (finalize)")
            return
        api.log_event("lightning_finalize", status=status)
        run.recorder.flush()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Record each new checkpoint file (path, size, sha256, monitor and score) as an output model."""
        if self._ensure_run() is None:
            return
        best = getattr(checkpoint_callback, "best_model_path", "") or ""
        scores = dict(getattr(checkpoint_callback, "best_k_models", {}) or {})
        paths = [
            getattr(checkpoint_callback, "_last_checkpoint_saved", ""),
            getattr(checkpoint_callback, "last_model_path", ""),
            best,
            *scores,
        ]
        trainer = self._trainer()
        step = getattr(trainer, "global_step", None)
        epoch = getattr(trainer, "current_epoch", None)
        for path in dict.fromkeys(p for p in paths if p):
            try:
                mtime = os.path.getmtime(path)
            except OSError:
                continue
            if self._logged_ckpts.get(path) == mtime:
                continue
            self._logged_ckpts[path] = mtime
            score = scores.get(path)
            attrs = {
                "kind": "checkpoint",
                "monitor": getattr(checkpoint_callback, "monitor", None),
                "score": float(score) if score is not None else None,
                "best": path == best,
                "epoch": epoch,
            }
            api.log_model(
                None,
                name=f"checkpoint/{os.path.basename(path)}",
                path=path,
                role="output",
                context=api.TRAINING,
                step=step,
                hash=self._hash,
                copy=False,
                attrs=attrs,
            )
