"""The rank recorder: in-memory buffers written by the hot path, drained to the rank file by a flusher thread.

Hot path (``log_metric``): a dict lookup, a float check and ONE ``list.extend`` of (series id, step, value,
time) onto a shared flat list.  No I/O, no syscall (``time.time`` is a vDSO call), no lock, no MPI.
The flusher thread wakes every ``flush_interval`` seconds (or when the list passes ``buffer_rows``), copies the
first ``n`` items, writes them as one block and deletes exactly those ``n`` items from the front of the list.
Appends by any thread only ever add at the end and the flusher only ever removes from the front, so no row is
lost or torn without any lock on the hot path.  Memory is bounded by what is logged within one flush interval.

Failure policy: data problems (bad values, bad names, steps beyond 2**53) are counted, reported once per reason
and recorded; I/O problems (full disk, file size limit, deleted run directory) stop the writing, mark the rank
failed and never raise into training.  Nothing the flusher meets is swallowed: any error is reported once and the
rows it cost are counted (``dropped_rows``).  Every ``str`` is stored exactly (``h5.json_text``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import schema
from ..errors import InvalidNameError
from ..h5 import json_text
from ..log import logger

DEFAULT_FLUSH_INTERVAL = 1.0  # seconds; with the write itself, at most ~2 s of data is ever unflushed
DEFAULT_BUFFER_ROWS = 8192  # rows held before the flusher is woken early
HARD_FACTOR = 16  # the hot path waits for the flusher past this many times buffer_rows
DISK_RESERVE = 16 << 20  # stop writing, cleanly, while at least this much space is still free
FSIZE_RESERVE = 1 << 20  # and this far below the process's file size limit (ulimit -f, RLIMIT_FSIZE)
STEP_LIMIT = 2**53  # steps pass through float64 in memory: |step| < STEP_LIMIT is exact, others are rejected
STALL_SECONDS = 10.0  # the hot path waits at most this long for a flusher that does not drain the buffer
LOCK_WAIT = 0.5  # seconds the flusher waits for the hot path's slow lock (a signal may hold it: see _take)


class DiskAlmostFull(OSError):
    """Raised by the flusher before a write that could fill the disk (the file is then closed cleanly)."""


class FileSizeLimit(DiskAlmostFull):
    """Raised by the flusher before a write that could pass the process's file size limit (``ulimit -f``)."""


class Series:
    """One series' hot-path state."""

    __slots__ = ("id", "name", "context", "kind", "unit", "next_step", "rejected")

    def __init__(self, sid: int, name: str, context: str, kind: str, unit: str | None) -> None:
        self.id = sid
        self.name = name
        self.context = context
        self.kind = kind
        self.unit = unit
        self.next_step = 0
        self.rejected = 0

    def definition(self) -> str:
        return json_text(
            {"id": self.id, "name": self.name, "context": self.context, "kind": self.kind, "unit": self.unit}
        )


@dataclass
class RecorderConfig:
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    buffer_rows: int = DEFAULT_BUFFER_ROWS


class Recorder:
    """Owns one rank file and the buffers that feed it."""

    def __init__(self, path: str, attrs: dict[str, Any], config: RecorderConfig | None = None) -> None:
        from .rankfile import RankFileWriter

        self.config = config or RecorderConfig()
        if self.config.flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {self.config.flush_interval}")
        self.path = path
        self.status = schema.STATUS_RUNNING
        self.reason: str | None = None
        self._writer = RankFileWriter(path, {**attrs, schema.A_STATUS: schema.STATUS_RUNNING})
        self._buf: list = []  # flat: series id, step, value, time, series id, ...
        self._cap = 4 * max(1, int(self.config.buffer_rows))
        self._hard_cap = HARD_FACTOR * self._cap
        self._no_backpressure = False
        self._kicked = False
        self._series: dict[str, dict[str, Series]] = {}  # context -> name -> Series
        self._series_list: list[Series] = []
        self._new_defs: list[str] = []
        self._records: list[str] = []
        self.problems: dict[str, int] = {}
        self._hardware: dict[str, Any] = {}
        self._totals: dict[str, Any] = {}
        self._dirty_attrs = False
        self._slow_lock = threading.Lock()  # series creation, records, samples: never on the hot path
        self._io_lock = threading.Lock()  # one writer at a time (flusher, close, fork)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dead = False  # a write failed: keep training, drop data, say so
        self.dropped_rows = 0
        self.flushed_rows = 0
        self.last_flush = time.time()
        self._closed = False
        self._closing = False  # the final close runs: take what is pending even without the slow lock
        self._pid = os.getpid()
        self._flusher = threading.Thread(target=self._flush_loop, name="prov4ml-hpc-flusher", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ hot path
    def log_metric(self, name: str, value: Any, step: int | None, context: str, _time=time.time) -> None:
        try:
            s = self._series[context][name]
        except KeyError:
            s = self._new_series(name, context, schema.KIND_METRIC, None)
            if s is None:
                return
        except TypeError:  # unhashable context
            self._check_names(name, context)
            raise
        if type(value) is not float:
            value = self._coerce_value(value, s)
            if value is None:
                return
        if step is None:
            step = s.next_step
        elif type(step) is not int:
            step = self._coerce_step(step, s)
            if step is None:
                return
        s.next_step = step + 1
        buf = self._buf
        buf.extend((s.id, step, value, _time()))
        if len(buf) >= self._cap:
            self._buffer_full()

    # ------------------------------------------------------------------ slow paths
    def _buffer_full(self) -> None:
        """buffer_rows rows are waiting: wake the flusher; past HARD_FACTOR times that, wait for it.

        Memory is bounded by the buffer size, not by the logging rate: a loop that logs faster than the
        flusher can write (millions of values per second) is slowed down here, never the normal case."""
        if not self._kicked:
            self._kicked = True
            self._wake.set()
        if len(self._buf) < self._hard_cap or self._no_backpressure or self._closed:
            return
        if threading.current_thread() is self._flusher:
            return
        deadline = time.monotonic() + STALL_SECONDS
        while len(self._buf) >= self._cap and not self._closed:
            time.sleep(0.0002)  # lets the flusher hold the GIL
            if time.monotonic() > deadline:
                self._no_backpressure = True
                self.problem(
                    "flusher_stalled",
                    f"the rank file's flusher has not drained the buffer for {STALL_SECONDS:g} s; "
                    "logging goes on without waiting (memory may grow)",
                )
                return

    def _check_names(self, name: Any, context: Any) -> None:
        if type(name) is not str:
            raise InvalidNameError(f"metric name must be a str, got {type(name).__name__} {name!r}")
        if type(context) is not str:
            raise InvalidNameError(
                f"context must be a str, got {type(context).__name__} {context!r}; "
                "use p4.TRAINING, p4.VALIDATION, p4.TESTING or any string"
            )

    def _new_series(self, name: str, context: str, kind: str, unit: str | None) -> Series | None:
        if type(name) is not str or type(context) is not str:
            if isinstance(name, str) and isinstance(context, str):  # str subclasses are fine
                name, context = str(name), str(context)
            else:
                self._check_names(name, context)
        if len(name) > schema.MAX_NAME_LENGTH or len(context) > schema.MAX_NAME_LENGTH:
            self.problem(
                "name_too_long",
                f"name {name[:40]!r}... in context {context[:40]!r} is longer than "
                f"{schema.MAX_NAME_LENGTH} characters; its values are dropped",
            )
            return None
        with self._slow_lock:
            by_ctx = self._series.get(context)
            if by_ctx is not None and name in by_ctx:
                return by_ctx[name]
            s = Series(len(self._series_list), name, context, kind, unit)
            self._series_list.append(s)
            self._new_defs.append(s.definition())
            # publish last: a reader of self._series sees a complete Series
            new_ctx = dict(by_ctx or {})
            new_ctx[name] = s
            self._series[context] = new_ctx
        return s

    def _coerce_value(self, value: Any, s: Series) -> float | None:
        if isinstance(value, str | bytes | bytearray) or value is None or isinstance(value, complex):
            self._reject(s, f"value {value!r:.60} of type {type(value).__name__} is not a real number")
            return None
        try:
            return float(value)  # int, bool, numpy scalars, 0-d arrays and tensors (__float__)
        except (TypeError, ValueError, OverflowError) as exc:
            self._reject(s, f"value of type {type(value).__name__} cannot be stored as a float64 ({exc})")
            return None

    def _coerce_step(self, step: Any, s: Series) -> int | None:
        if isinstance(step, bool) or not hasattr(step, "__index__"):
            self._reject(s, f"step {step!r:.40} of type {type(step).__name__} is not an integer")
            return None
        return int(step.__index__())

    def _reject(self, s: Series, why: str) -> None:
        s.rejected += 1
        self.problem(
            f"rejected_value:{s.context}/{s.name}",
            f"metric {s.name!r} (context {s.context!r}): {why}; value dropped "
            "(reported once per series, counted in the rank file's 'problems')",
        )

    def problem(self, reason: str, message: str, level: int = logging.WARNING, *, wait: float = -1) -> None:
        """Count a problem; the first time a reason is seen, log it and store it as a record.

        The flusher passes ``wait``: it never blocks longer on the slow lock (see :meth:`_slow`)."""
        with self._slow(wait):
            n = self.problems.get(reason, 0)
            self.problems[reason] = n + 1
            self._dirty_attrs = True
            if n:
                return
            text = json_text(
                {"type": schema.REC_PROBLEM, "reason": reason, "message": message, "time": time.time()}
            )
            self._records.append(text)
        logger.log(level, message)

    def add_record(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        text = json_text(record, default=str, allow_nan=True)
        with self._slow_lock:
            self._records.append(text)

    @contextlib.contextmanager
    def _slow(self, wait: float = LOCK_WAIT):
        """The slow lock for the flusher's side: waits at most ``wait`` seconds, then goes on without it.

        A signal handler may close the run from a helper thread while the interrupted main thread holds the slow
        lock (it is suspended under the handler until the close ends): waiting for it would deadlock the close.
        Without the lock the flusher only swaps lists and copies small dicts, which the GIL keeps whole."""
        got = self._slow_lock.acquire(timeout=wait)
        try:
            yield got
        finally:
            if got:
                self._slow_lock.release()

    # ------------------------------------------------------------------ sample sink (samplers thread)
    def record_sample(self, name: str, value: float, unit: str, t: float) -> None:
        by_ctx = self._series.get("system")
        s = by_ctx.get(name) if by_ctx else None
        if s is None:
            s = self._new_series(name, "system", schema.KIND_SYSTEM, unit)
            if s is None:
                return
        try:
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            self._reject(s, f"sample {value!r:.40} is not a number")
            return
        step = s.next_step
        s.next_step = step + 1
        self._buf.extend((s.id, step, v, t))

    def update_hardware(self, info: dict[str, Any]) -> None:
        with self._slow_lock:
            self._hardware.update(info)
            self._dirty_attrs = True

    def update_totals(self, totals: dict[str, Any]) -> None:
        with self._slow_lock:
            self._totals.update(totals)
            self._dirty_attrs = True

    def report_problem(self, reason: str, message: str) -> None:
        self.problem(reason, message)

    # ------------------------------------------------------------------ flushing
    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - a bug must not stop recording; it is said, not swallowed
                self._flush_error(exc, 0)

    def flush(self) -> None:
        """Write everything buffered so far and flush the file (thread-safe; never raises)."""
        with self._io_lock:
            if self._closed or os.getpid() != self._pid:
                return
            self._flush_locked()

    def _take(self) -> tuple[list[str], list[str], int]:
        """Pending definitions and records, and how many buffered items (4 per row) this flush writes."""
        with self._slow() as got:
            if not got and not self._closing:  # the rows wait for the next flush, with their definitions
                return [], [], 0
            defs, self._new_defs = self._new_defs, []
            recs, self._records = self._records, []
        n = len(self._buf)
        self._kicked = False
        return defs, recs, n - n % 4  # extend() is atomic, so n is a multiple of 4 already; be safe anyway

    def _take_records(self) -> list[str]:
        """Records added while the rows were written (problems found in them): written by the same flush."""
        with self._slow() as got:
            if not got and not self._closing:
                return []
            recs, self._records = self._records, []
        return recs

    def _pop_rows(self, k: int) -> list:
        buf = self._buf
        chunk = buf[:k]
        del buf[:k]  # only the flusher removes, and only from the front
        return chunk

    def _rows(self, chunk: list):
        """A slice of the flat buffer as rows; rows whose step float64 cannot hold exactly are rejected."""
        import numpy as np

        try:
            a = np.fromiter(chunk, dtype=np.float64, count=len(chunk)).reshape(-1, 4)
        except OverflowError:  # an int step beyond float64's range: becomes +-inf, rejected below
            a = np.array([_as_float(x) for x in chunk], dtype=np.float64).reshape(-1, 4)
        bad = np.abs(a[:, 1]) >= STEP_LIMIT  # any int at or past 2**53 rounds to a float at or past it
        if bad.any():
            for i in np.flatnonzero(bad):
                s = self._series_list[int(a[i, 0])]
                s.rejected += 1
                self.problem(
                    f"rejected_value:{s.context}/{s.name}",
                    f"metric {s.name!r} (context {s.context!r}): step {chunk[4 * i + 1]!r:.40} is outside "
                    f"+-2**53 (steps are stored exactly only within); value dropped "
                    "(reported once per series, counted in the rank file's 'problems')",
                    wait=LOCK_WAIT,
                )
            a = a[~bad]
        out = np.empty(len(a), dtype=schema.row_dtype())
        out["series"] = a[:, 0]
        out["step"] = a[:, 1]
        out["value"] = a[:, 2]
        out["time"] = a[:, 3]
        return out

    def _flush_error(self, exc: BaseException, lost: int) -> None:
        """An unexpected error in the flusher (a bug, not I/O): count the rows it cost, say it once, go on."""
        self.dropped_rows += lost
        self.problem(
            "flush_error",
            f"the rank file's flusher failed: {type(exc).__name__}: {exc}; {lost} rows were dropped "
            "(counted in the rank file's 'dropped_rows'); recording goes on. Please report this",
            logging.ERROR,
            wait=LOCK_WAIT,
        )

    def _flush_locked(self) -> None:
        defs, recs, n = self._take()
        failed = 0  # items of a slice taken from the buffer whose write failed
        if self._dead:
            self._pop_rows(n)
            self.dropped_rows += n // 4
            return
        try:
            self._check_file()
            self._check_space(n // 4)
            w = self._writer
            w.append_strings(schema.DS_SERIES, defs)  # definitions before the rows that use them
            w.append_strings(schema.DS_RECORDS, recs)
            while n > 0:  # in slices of buffer_rows: the temporaries stay small whatever the backlog
                k = min(n, self._cap)
                chunk = self._pop_rows(k)
                n -= k
                try:
                    block = self._rows(chunk)
                except Exception as exc:  # noqa: BLE001 - a bug in the conversion: said and counted
                    self._flush_error(exc, k // 4)
                    continue
                failed = k
                w.append_rows(block)
                failed = 0
            w.append_strings(schema.DS_RECORDS, self._take_records())
            now, mono = time.time(), time.monotonic()
            attrs: dict[str, Any] = {
                schema.A_FLUSHED_ROWS: w.rows,
                schema.A_LAST_FLUSH_UNIX: now,
                schema.A_LAST_FLUSH_MONOTONIC: mono,
            }
            if self._dirty_attrs:
                with self._slow():  # without the lock when a signal holds it: copies of small dicts
                    self._dirty_attrs = False
                    attrs[schema.A_PROBLEMS] = dict(self.problems)
                    attrs[schema.A_HARDWARE] = dict(self._hardware)
                    attrs[schema.A_TOTALS] = dict(self._totals)
            w.set_attrs(attrs)
            w.flush()
            self.flushed_rows = w.rows
            self.last_flush = now
        except Exception as exc:  # noqa: BLE001 - an I/O failure must never reach training
            self._pop_rows(n)
            self._fail_writes(exc, (n + failed) // 4)

    def _check_space(self, rows: int) -> None:
        st = os.statvfs(os.path.dirname(self.path))
        free = st.f_bavail * st.f_frsize
        need = DISK_RESERVE + 2 * 24 * rows
        if free < need:
            raise DiskAlmostFull(
                f"only {free / 2**20:.1f} MiB free on the file system of {self.path} "
                f"(keeping {DISK_RESERVE >> 20} MiB in reserve); the disk is almost full"
            )
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:  # past it a write fails with EFBIG, half-way through a flush
            size = os.fstat(self._writer.fd()).st_size
            need = size + FSIZE_RESERVE + 2 * 24 * (rows + schema.ROW_CHUNK)
            if need > limit:
                raise FileSizeLimit(
                    f"the rank file {self.path} ({size / 2**20:.1f} MiB) is close to the process's file size "
                    f"limit ({limit / 2**20:.1f} MiB, `ulimit -f` / RLIMIT_FSIZE); the file size limit is "
                    "reached"
                )

    def _check_file(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise OSError(f"rank file {self.path} was deleted while the run was writing it") from None
        if (st.st_dev, st.st_ino) != self._writer.inode:
            raise OSError(f"rank file {self.path} was replaced by another file while the run was writing it")

    def _fail_writes(self, exc: BaseException, lost: int) -> None:
        """Stop writing after an I/O failure; say once what readers will find in the file."""
        self._dead = True
        self.dropped_rows += lost
        self.status = schema.STATUS_FAILED
        text = " ".join(str(exc).split())  # HDF5's messages span lines: one line in logs and attributes
        self.reason = f"writing the rank file failed: {type(exc).__name__}: {text}"
        self.problems["write_failed"] = self.problems.get("write_failed", 0) + 1
        at = time.strftime("%H:%M:%S", time.localtime(self.last_flush))
        if isinstance(exc, DiskAlmostFull) and self._close_failed():  # nothing failed yet: closed properly
            logger.error(
                "%s. Training continues; nothing more is recorded on this rank (%d rows of this flush and "
                "everything logged later are dropped). %s is closed with status 'failed' and holds the %d "
                "rows flushed up to %s",
                self.reason,
                lost,
                self.path,
                self.flushed_rows,
                at,
            )
            return
        self._writer.abandon()
        logger.error(
            "%s. Training continues; nothing more is recorded on this rank (%d rows of this flush and "
            "everything logged later are dropped). %s keeps status 'running' (the merge calls the rank "
            "partial); the %d rows flushed up to %s stay readable, and perhaps some rows of the failed flush",
            self.reason,
            lost,
            self.path,
            self.flushed_rows,
            at,
        )

    def _close_failed(self) -> bool:
        """Close the file with status failed while there is still room; False when even that fails."""
        try:
            now = time.time()
            self._writer.set_attrs(
                {
                    schema.A_STATUS: schema.STATUS_FAILED,
                    schema.A_STATUS_REASON: self.reason,
                    schema.A_END_UNIX: now,
                    schema.A_END_TIME: iso_utc(now),
                    schema.A_PROBLEMS: dict(self.problems),
                    schema.A_DROPPED_ROWS: self.dropped_rows,
                }
            )
            self._writer.flush()
            self._writer.close()
            return True
        except Exception:  # noqa: BLE001 - the caller abandons the handle and says so
            return False

    # ------------------------------------------------------------------ closing
    def close(self, status: str = schema.STATUS_COMPLETED, reason: str | None = None) -> str:
        """Stop the flusher, write everything, set the final status and close the file.  Returns the status."""
        if os.getpid() != self._pid:
            return self.status
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._flusher:
            self._flusher.join(timeout=30)
        with self._io_lock:
            if self._closed:
                return self.status
            self._closing = True
            self._flush_locked()
            if self._buf:  # logged by other threads during the final flush: one more
                self._flush_locked()
            late = len(self._buf) // 4
            if late:  # still more (a thread logging through the close): counted, never silently gone
                self.dropped_rows += late
                self.problems["logged_during_close"] = self.problems.get("logged_during_close", 0) + late
            if not self._dead:
                self.status, self.reason = status, reason
                now = time.time()
                attrs = {
                    schema.A_STATUS: status,
                    schema.A_STATUS_REASON: reason or "",
                    schema.A_END_UNIX: now,
                    schema.A_END_TIME: iso_utc(now),
                    schema.A_PROBLEMS: dict(self.problems),
                    schema.A_HARDWARE: dict(self._hardware),
                    schema.A_TOTALS: dict(self._totals),
                }
                if self.dropped_rows:
                    attrs[schema.A_DROPPED_ROWS] = self.dropped_rows
                try:
                    self._writer.set_attrs(attrs)
                    self._writer.flush()
                    self._writer.close()
                except Exception as exc:  # noqa: BLE001 - said once by _fail_writes, never raised
                    self._fail_writes(exc, 0)
            self._closed = True
        return self.status

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ fork
    def before_fork(self) -> None:
        self._io_lock.acquire()

    def after_fork_parent(self) -> None:
        self._io_lock.release()

    def after_fork_child(self) -> None:
        """In a forked child: never touch the parent's file.  Point our copy of its fd at /dev/null, so that
        even HDF5's own exit-time close cannot write into the parent's file, and keep the handle alive."""
        self._io_lock = threading.Lock()
        self._slow_lock = threading.Lock()
        self._closed = True
        self._dead = True
        self._buf = []
        from .rankfile import redirect_to_devnull

        redirect_to_devnull(self._writer.fd_or_none())
        _INHERITED.append(self._writer)


_INHERITED: list[Any] = []  # handles inherited by a forked child: never closed, never collected


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except OverflowError:  # an int beyond float64
        return math.inf if x > 0 else -math.inf


def iso_utc(t: float) -> str:
    """ISO 8601 with microseconds and an explicit UTC offset."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat()


def package_versions() -> dict[str, str]:
    """Versions of the packages that matter to a run, read from metadata without importing them."""
    from importlib import metadata

    out = {}
    for name in (
        "prov4ml-hpc",
        "numpy",
        "h5py",
        "mpi4py",
        "torch",
        "lightning",
        "pytorch-lightning",
        "nvidia-ml-py",
        "codecarbon",
        "psutil",
        "prov",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def python_version() -> str:
    return sys.version.split()[0]
