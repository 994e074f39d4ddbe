"""yProv4ML's FLOP counters for the drop-in: running totals in fvcore's units (one FLOP per multiply-add).

yProv4ML logs, at each call, the total so far of all calls of that kind since start_run (250880, 501760, ...
for a Linear(784, 10) on batches of 32).  With fvcore installed the count is fvcore's ``FlopCountAnalysis``,
as in yProv4ML; without it, torch's ``FlopCounterMode`` divided by two (torch counts a multiply-add as two),
which gives fvcore's figure for linear, convolution and matmul layers; fvcore also counts normalisation and
pooling layers, which torch's counter leaves out.
"""

from __future__ import annotations

import warnings
from typing import Any

from .yprov_run import STATE, once

FVCORE = "fvcore.nn.FlopCountAnalysis"
TORCH = "torch.utils.flop_counter.FlopCounterMode/2"


def _inputs(batch: Any) -> Any:
    """yProv4ML's ``x, _ = batch``: the first element of a (inputs, targets) pair, else the batch itself."""
    return batch[0] if isinstance(batch, list | tuple) and batch else batch


def count_flops(model: Any, x: Any) -> tuple[float, str] | None:
    """Forward multiply-adds of ``model(x)`` and the counter used; None when no counter can run (reported)."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        FlopCountAnalysis = None  # noqa: N806
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        once("flops", "log_flops_*: needs torch; nothing recorded")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore's tracer warns about every op it does not count
            if FlopCountAnalysis is not None:
                analysis = FlopCountAnalysis(model, x)
                analysis.unsupported_ops_warnings(False)
                analysis.uncalled_modules_warnings(False)
                return float(analysis.total()), FVCORE
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                model(x)
            return float(counter.get_total_flops()) / 2.0, TORCH
    except Exception as exc:  # noqa: BLE001 - counting is optional, training is not
        once("flops_failed", "counting FLOPs failed (%s: %s); nothing recorded", type(exc).__name__, exc)
        return None


def _per_dataset(model: Any, dataset: Any) -> tuple[float, str] | None:
    """yProv4ML's per-epoch figure: FLOPs of the first sample x len(dataset); a DataLoader counts its dataset
    (yProv4ML raises TypeError for a DataLoader: it indexes it)."""
    data = dataset.dataset if hasattr(dataset, "batch_size") and hasattr(dataset, "dataset") else dataset
    try:
        n = len(data)
        first = data[0] if hasattr(data, "__getitem__") else next(iter(data))
    except Exception as exc:  # noqa: BLE001 - an empty or unsized dataset: nothing to count
        once(
            "flops_dataset",
            "log_flops_per_epoch: cannot take a sample and a length of %r (%s)",
            type(data),
            exc,
        )
        return None
    counted = count_flops(model, _inputs(first))
    return None if counted is None else (counted[0] * n, counted[1])


def _log(kind: str, label: str, counted: tuple[float, str] | None, context: Any, step: int | None) -> None:
    from .yprov_core import log_metric

    if counted is None:
        return
    STATE.flops[kind] = STATE.flops.get(kind, 0.0) + counted[0]
    log_metric(label, STATE.flops[kind], context, step, source=counted[1])


def log_flops_per_batch(
    label: str, model: Any, batch: Any, context: Any = None, step: int | None = None
) -> None:
    """Metric ``label`` = the running total of forward FLOPs over every batch given to this call so far."""
    _log("batch", label, count_flops(model, _inputs(batch)), context, step)


def log_flops_per_epoch(
    label: str, model: Any, dataset: Any, context: Any = None, step: int | None = None
) -> None:
    """Metric ``label`` = the running total of per-epoch FLOPs (first sample's FLOPs x dataset length)."""
    _log("epoch", label, _per_dataset(model, dataset), context, step)
