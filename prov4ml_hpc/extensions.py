"""Optional parts a run starts and stops around the recorder: the system sampler thread and the in-job gather.

Kept apart from the API so that a failure in an optional part is reported and never stops training.
"""

from __future__ import annotations

import os
from typing import Any

from .log import logger

SAMPLE_INTERVAL_ENV = "PROV4ML_HPC_SAMPLE_INTERVAL"
SYSTEM_METRICS_ENV = "PROV4ML_HPC_SYSTEM_METRICS"
GATHER_ENV = "PROV4ML_HPC_GATHER"


def _flag(value: bool | None, env: str, default: bool) -> bool:
    if value is not None:
        return bool(value)
    raw = os.environ.get(env, "")
    if raw == "":
        return default
    return raw.lower() not in ("0", "false", "no", "off")


def on_start(run: Any, *, system_metrics: bool | None, sample_interval: float | None, gather: bool | None) -> None:
    if _flag(system_metrics, SYSTEM_METRICS_ENV, True):
        try:
            from .samplers.thread import SamplerThread

            kwargs = {} if sample_interval is None else {"interval": sample_interval}
            sampler = SamplerThread(run.recorder, run.identity, **kwargs)
            sampler.start()
            run.sampler = sampler
        except Exception as exc:  # noqa: BLE001 - sampling is optional, training is not
            run.recorder.problem("sampler_start_failed",
                                 f"system sampling could not start: {type(exc).__name__}: {exc}")
    # the gather talks MPI: not for torchrun/torch.distributed jobs (merge after the job instead)
    if run.world_size > 1 and run.identity.source != "torchrun" and _flag(gather, GATHER_ENV, True):
        try:
            from .gather import gather_at_end
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
