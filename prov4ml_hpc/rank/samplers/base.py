"""The contract between the samplers and the rank recorder (SampleSink), and the base class of a sample source.

A source reads one kind of hardware (host, GPU, energy) and writes what it reads into a sink; it never raises
for a single unreadable field: that field is switched off and reported once, the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class SampleSink(Protocol):
    """Where samplers put what they measure; the rank recorder implements it."""

    def record_sample(self, name: str, value: float, unit: str, t: float) -> None:
        """One value of a system series (context "system"); ``t`` is ``time.time()``."""

    def update_hardware(self, info: dict) -> None:
        """Merge ``info`` into the rank's JSON "hardware" attribute."""

    def update_totals(self, totals: dict) -> None:
        """Merge ``totals`` into the rank's JSON "totals" attribute (energy kWh, emissions kg, ...)."""

    def report_problem(self, reason: str, message: str) -> None:
        """Report a problem: logged once per reason, counted every time."""


@dataclass
class MemorySink:
    """A thread-safe in-memory SampleSink, for tests, benchmarks and `sample_once` without a recorder."""

    samples: list[tuple[str, float, str, float]] = field(default_factory=list)
    hardware: dict = field(default_factory=dict)
    totals: dict = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_sample(self, name: str, value: float, unit: str, t: float) -> None:
        with self._lock:
            self.samples.append((name, float(value), unit, t))

    def update_hardware(self, info: dict) -> None:
        with self._lock:
            self.hardware.update(info)

    def update_totals(self, totals: dict) -> None:
        with self._lock:
            self.totals.update(totals)

    def report_problem(self, reason: str, message: str) -> None:
        with self._lock:
            self.problems[reason] = self.problems.get(reason, 0) + 1
            self.messages.setdefault(reason, message)

    def series(self, name: str) -> list[float]:
        """The values recorded for ``name``, in order."""
        with self._lock:
            return [v for n, v, _, _ in self.samples if n == name]

    def names(self) -> set[str]:
        with self._lock:
            return {n for n, _, _, _ in self.samples}

    def units(self) -> dict[str, str]:
        with self._lock:
            return {n: u for n, _, u, _ in self.samples}


class Source:
    """One kind of measurement.  The sampler thread calls setup() once, sample() per tick and stop() at the end.

    setup() may raise: the thread reports the source as unavailable and never calls it again.  sample() may
    raise: that sample is counted as dropped.  Single fields that cannot be read are switched off with
    :meth:`read` instead, so that one unsupported counter never costs the rest of a sample.
    """

    name = "source"
    slow = False  # True: setup() takes long (energy trackers); only ever set up on the sampler thread

    def __init__(self, sink: SampleSink) -> None:
        self.sink = sink
        self.disabled: set[str] = set()

    def setup(self) -> None:
        """Open handles and record hardware facts; slow work belongs here (it runs on the sampler thread)."""

    def sample(self, t: float) -> None:
        """Record one value per series at wall time ``t``."""

    def stop(self, t: float) -> None:
        """Last chance to record totals and release handles; called once."""

    def skipped(self, t: float, elapsed: float) -> None:
        """Instead of stop() for a slow source whose setup had not returned (or begun) when sampling stopped,
        ``elapsed`` seconds after it started: record what the run gets without it."""

    def abandon(self) -> None:
        """Release what a setup that returned after sampling stopped opened, writing nothing; called once."""

    def read(
        self,
        key: str,
        fn: Callable[[], T],
        disable_on: tuple[type[BaseException], ...],
        skip_on: tuple[type[BaseException], ...] = (),
    ) -> T | None:
        """Call ``fn`` for field ``key``; return None when the field is off or failed.

        An exception in ``disable_on`` switches the field off for good (reported once, reason
        ``<source>_unsupported:<key>``); one in ``skip_on`` loses this value only (reason ``<source>_field_error:<key>``).
        """
        if key in self.disabled:
            return None
        try:
            return fn()
        except disable_on as exc:
            self.disabled.add(key)
            self.sink.report_problem(
                f"{self.name}_unsupported:{key}",
                f"{self.name} field {key!r} cannot be read ({_describe(exc)}); not sampled again",
            )
        except skip_on as exc:
            self.sink.report_problem(
                f"{self.name}_field_error:{key}",
                f"{self.name} field {key!r} failed ({_describe(exc)}); value skipped",
            )
        return None

    def emit(self, name: str, value: float | None, unit: str, t: float) -> None:
        """Record ``value`` unless it is None (a field that could not be read)."""
        if value is not None:
            self.sink.record_sample(name, float(value), unit, t)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
