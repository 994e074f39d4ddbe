"""Min/max decimation of long series for display: at most two points per pixel column, extremes kept."""

from __future__ import annotations

from typing import Any

import numpy as np


def decimate(x: Any, y: Any, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Min/max decimation: x sorted ascending; per bucket of equal x width, the minimum and the maximum of y at
    their own x, in x order.  At most 2*buckets points; NaN values are dropped.  Short inputs are returned as is.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    keep = ~np.isnan(y)
    if not keep.all():
        x, y = x[keep], y[keep]
    if len(x) <= 2 * buckets or buckets < 1:
        return x, y
    b = bucket_ids(x, buckets)
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    idx_min = _arg_reduce(y, starts, np.minimum)
    idx_max = _arg_reduce(y, starts, np.maximum)
    idx = np.unique(np.concatenate((idx_min, idx_max)))
    return x[idx], y[idx]


def bucket_ids(x: np.ndarray, buckets: int) -> np.ndarray:
    lo, hi = float(x[0]), float(x[-1])
    if not hi > lo:
        return np.zeros(len(x), np.int64)
    return np.minimum(((x - lo) * (buckets / (hi - lo))).astype(np.int64), buckets - 1)


def _arg_reduce(y: np.ndarray, starts: np.ndarray, ufunc) -> np.ndarray:
    """Index of the min (or max) of y within each segment [starts[i], starts[i+1])."""
    ext = ufunc.reduceat(y, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(y))))
    hit = np.flatnonzero(y == ext[seg])
    first = np.unique(seg[hit], return_index=True)[1]
    return hit[first]
