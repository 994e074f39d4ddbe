"""Optional parts a run starts and stops around the recorder: the system sampler thread and the in-job end of job.

Kept apart from the API so that a failure in an optional part is reported and never stops training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import settings
from ..log import logger


@dataclass(frozen=True)
class Options:
    """The optional parts of a run, decided (and validated) before its rank file is created."""

    system_metrics: bool
    sample_interval: float
    gather: bool
    gather_timeout: float
    graph: str = "auto"  # detail level of the graph the in-job gather writes (PROV4ML_HPC_GRAPH)
    mpi_abort: bool = True


def resolve(
    env: Mapping[str, str],
    *,
    system_metrics: bool | None,
    sample_interval: float | None,
    gather: bool | None,
    graph: str | None = None,
) -> Options:
    """Arguments over environment variables, every value checked now (setup errors fail fast).

    Raises:
        ConfigError: a value that cannot be used (see :mod:`prov4ml_hpc.settings`).
    """
    for name in (settings.SAMPLE_GPU, settings.SAMPLE_ENERGY, settings.ENERGY_INTERVAL):
        settings.get(name, env)
    return Options(
        system_metrics=settings.get(settings.SYSTEM_METRICS, env, system_metrics),
        sample_interval=settings.get(settings.SAMPLE_INTERVAL, env, sample_interval),
        gather=settings.get(settings.GATHER, env, gather),
        gather_timeout=settings.get(settings.GATHER_TIMEOUT, env),
        graph=settings.get(settings.GRAPH, env, graph),
        mpi_abort=settings.get(settings.MPI_ABORT, env),
    )


def on_start(run: Any, options: Options) -> None:
    from . import mpiworld

    run.options = options
    mpiworld.abort_on_exception = options.mpi_abort
    if options.system_metrics:
        try:
            from .samplers.thread import SamplerThread

            sampler = SamplerThread(run.recorder, run.identity, interval=options.sample_interval)
            sampler.start()
            run.sampler = sampler
        except Exception as exc:  # noqa: BLE001 - sampling is optional, training is not
            run.recorder.problem(
                "sampler_start_failed", f"system sampling could not start: {type(exc).__name__}: {exc}"
            )
    # the end of job (merge/gather.py) waits for the other ranks' files, without MPI; not for torchrun jobs yet,
    # whose agent may restart the workers (merge after the job)
    if run.world_size > 1 and run.identity.source != "torchrun" and options.gather:
        try:
            from ..merge.gather import gather_at_end
        except ImportError:
            return
        run.add_end_hook(gather_at_end)


def on_end(run: Any, timeout: float = 10.0) -> None:
    sampler = getattr(run, "sampler", None)
    if sampler is None:
        return
    try:
        sampler.stop(timeout)
    except Exception as exc:  # noqa: BLE001
        logger.warning("stopping the system sampler failed: %s: %s", type(exc).__name__, exc)


def sample_now(run: Any) -> None:
    """One sample now: through the running sampler, or a thread-less one kept for the next calls."""
    sampler = getattr(run, "sampler", None)
    if sampler is None:
        from .samplers.thread import SamplerThread

        sampler = SamplerThread(run.recorder, run.identity, interval=0)
        run.sampler = sampler  # reused by later calls, stopped (totals) by on_end
    sampler.sample_once()
