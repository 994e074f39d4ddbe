"""Per-step statistics of a metric across ranks, combined block by block (memory bounded by distinct steps).

Each block of values gives, per distinct step, (n, nonfinite, mean, M2, min, max) over its finite values;
blocks and ranks are combined with Chan et al.'s pairwise update, which is exact for counts, min and max and
numerically stable for mean and variance.  The order of combination is fixed by the caller (ranks in order,
blocks in order), so the same inputs always give the same bits, whatever the number of merge processes.
"""

from __future__ import annotations

import numpy as np

from .runfile import agg_dtype

_I8 = np.int64
_F8 = np.float64
_TABLE = np.dtype(
    [("steps", _I8), ("n", _I8), ("nonfinite", _I8), ("mean", _F8), ("m2", _F8), ("min", _F8), ("max", _F8)]
)


class StepStats:
    """Statistics per distinct step, steps sorted ascending; arrays grow by doubling (amortised appends)."""

    __slots__ = ("size", "steps", "n", "nonfinite", "mean", "m2", "min", "max")

    def __init__(self, capacity: int = 0) -> None:
        self.size = 0
        self.steps = np.empty(capacity, _I8)
        self.n = np.empty(capacity, _I8)
        self.nonfinite = np.empty(capacity, _I8)
        self.mean = np.empty(capacity, _F8)
        self.m2 = np.empty(capacity, _F8)
        self.min = np.empty(capacity, _F8)
        self.max = np.empty(capacity, _F8)

    _FIELDS = ("steps", "n", "nonfinite", "mean", "m2", "min", "max")

    def arrays(self) -> tuple[np.ndarray, ...]:
        k = self.size
        return tuple(getattr(self, name)[:k] for name in self._FIELDS)

    @classmethod
    def of(cls, arrays: tuple[np.ndarray, ...]) -> StepStats:
        out = cls()
        for name, arr in zip(cls._FIELDS, arrays, strict=True):
            setattr(out, name, arr)
        out.size = len(arrays[0])
        return out

    def table(self) -> np.ndarray:
        """The raw statistics as one structured array (to store and reload bit for bit)."""
        out = np.empty(self.size, _TABLE)
        for name, arr in zip(self._FIELDS, self.arrays(), strict=True):
            out[name] = arr
        return out

    @classmethod
    def of_table(cls, table: np.ndarray) -> StepStats:
        return cls.of(tuple(np.ascontiguousarray(table[name]) for name in cls._FIELDS))

    # ---- building from values ------------------------------------------------------------------------
    @classmethod
    def from_values(cls, steps: np.ndarray, values: np.ndarray) -> StepStats:
        """Statistics of one block of (step, value) pairs (any order, repeated steps allowed)."""
        steps = np.asarray(steps, _I8)
        values = np.asarray(values, _F8)
        finite = np.isfinite(values)
        with np.errstate(all="ignore"):
            if len(steps) < 2 or bool((steps[1:] > steps[:-1]).all()):  # the usual case: one value per step
                n = finite.astype(_I8)
                vz = np.where(finite, values, 0.0)
                return cls.of(
                    (
                        steps.copy(),
                        n,
                        1 - n,
                        vz,
                        np.zeros(len(steps)),
                        np.where(finite, values, np.inf),
                        np.where(finite, values, -np.inf),
                    )
                )
            order = np.argsort(steps, kind="stable")
            s, v, f = steps[order], values[order], finite[order]
            starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
            lengths = np.diff(np.append(starts, len(s)))
            n = np.add.reduceat(f.astype(_I8), starts)
            mean = np.add.reduceat(np.where(f, v, 0.0), starts) / np.maximum(n, 1)
            dev = np.where(f, v - np.repeat(mean, lengths), 0.0)
            m2 = np.add.reduceat(dev * dev, starts)
            lo = np.minimum.reduceat(np.where(f, v, np.inf), starts)
            hi = np.maximum.reduceat(np.where(f, v, -np.inf), starts)
        return cls.of((s[starts], n, lengths - n, mean, m2, lo, hi))

    # ---- combining ------------------------------------------------------------------------------------
    def add(self, other: StepStats) -> None:
        """Fold ``other`` into self (self := self (+) other)."""
        if other.size == 0:
            return
        if self.size == 0:  # adopt (callers hand over fresh statistics they do not reuse)
            for name in self._FIELDS:
                setattr(self, name, getattr(other, name))
            self.size = other.size
            return
        o = other.arrays()
        steps = self.steps[: self.size]
        if o[0][0] > steps[-1]:  # new steps after all known ones: append
            self._append(o)
            return
        if len(o[0]) == self.size and np.array_equal(steps, o[0]):  # every rank logged the same steps
            self._combine_at(slice(0, self.size), o)
            return
        first = int(np.searchsorted(steps, o[0][0]))  # a block covering a run of known steps (the usual case)
        k = len(o[0])
        if first + k <= self.size and np.array_equal(steps[first : first + k], o[0]):
            self._combine_at(slice(first, first + k), o)
            return
        idx = np.searchsorted(steps, o[0])
        if bool((idx < self.size).all()) and np.array_equal(steps[np.minimum(idx, self.size - 1)], o[0]):
            first, last = int(idx[0]), int(idx[-1])
            self._combine_at(slice(first, last + 1) if last - first + 1 == len(idx) else idx, o)
            return
        self._set(_union(self.arrays(), o))

    def _set(self, arrays: tuple[np.ndarray, ...]) -> None:
        for name, arr in zip(self._FIELDS, arrays, strict=True):
            setattr(self, name, np.array(arr, copy=True))
        self.size = len(arrays[0])

    def _append(self, o: tuple[np.ndarray, ...]) -> None:
        need = self.size + len(o[0])
        if need > len(self.steps):
            cap = max(need, len(self.steps) + len(self.steps) // 2)
            for name in self._FIELDS:
                old = getattr(self, name)
                new = np.empty(cap, old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        for name, arr in zip(self._FIELDS, o, strict=True):
            getattr(self, name)[self.size : need] = arr
        self.size = need

    def _combine_at(self, idx: np.ndarray | slice, o: tuple[np.ndarray, ...]) -> None:
        _, nb, nfb, mb, m2b, lob, hib = o
        na = self.n[idx]
        ma = self.mean[idx]
        n = na + nb
        with np.errstate(all="ignore"):
            frac = nb / np.maximum(n, 1)
            delta = mb - ma
            self.mean[idx] = ma + delta * frac
            self.m2[idx] = self.m2[idx] + m2b + delta * delta * na * frac
        self.n[idx] = n
        self.nonfinite[idx] += nfb
        self.min[idx] = np.minimum(self.min[idx], lob)
        self.max[idx] = np.maximum(self.max[idx], hib)

    # ---- output ---------------------------------------------------------------------------------------
    def result(self) -> np.ndarray:
        """The stored form: step, count (finite values), nonfinite, min, mean, max, std (population, ddof=0);
        NaN where a step has no finite value."""
        steps, n, nf, mean, m2, lo, hi = self.arrays()
        out = np.empty(len(steps), agg_dtype())
        out["step"], out["count"], out["nonfinite"] = steps, n, nf
        empty = n == 0
        with np.errstate(all="ignore"):
            out["min"] = np.where(empty, np.nan, lo)
            out["mean"] = np.where(empty, np.nan, mean)
            out["max"] = np.where(empty, np.nan, hi)
            out["std"] = np.where(empty, np.nan, np.sqrt(np.maximum(m2, 0.0) / np.maximum(n, 1)))
        return out


def _union(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Combine two statistics tables with overlapping and new steps (sort + segment reductions)."""
    steps, n, nf, mean, m2, lo, hi = (np.concatenate((x, y)) for x, y in zip(a, b, strict=True))
    order = np.argsort(steps, kind="stable")
    steps, n, nf, mean, m2, lo, hi = (x[order] for x in (steps, n, nf, mean, m2, lo, hi))
    starts = np.flatnonzero(np.concatenate(([True], steps[1:] != steps[:-1])))
    lengths = np.diff(np.append(starts, len(steps)))
    with np.errstate(all="ignore"):
        tot = np.add.reduceat(n, starts)
        new_mean = np.add.reduceat(n * mean, starts) / np.maximum(tot, 1)
        dev = mean - np.repeat(new_mean, lengths)
        new_m2 = np.add.reduceat(m2 + n * dev * dev, starts)
    return (
        steps[starts],
        tot,
        np.add.reduceat(nf, starts),
        new_mean,
        new_m2,
        np.minimum.reduceat(lo, starts),
        np.maximum.reduceat(hi, starts),
    )
