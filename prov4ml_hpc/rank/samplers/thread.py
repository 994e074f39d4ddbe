"""The sampler thread: every `interval` seconds it asks each source (host, GPU, energy) for one sample.

It never raises into the training script once constructed: a source that fails to set up is reported once
and left out, a sample that raises is counted as dropped.  Bad configuration values raise ConfigError at
construction (setup errors fail fast).  Its own CPU time is measured with time.thread_time().

Slow sources (codecarbon: 1-3 s to start) are set up on a second thread, so that sampling starts at once and
``stop()`` never waits for a tracker that is still starting: such a source is recorded as not started
(:meth:`Source.skipped`), and released without writing anything when its start-up returns.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ... import settings
from ...job.environment import Identity
from .base import SampleSink, Source

MAX_CONSECUTIVE_FAILURES = 10  # a source failing this many samples in a row is switched off


class SamplerThread:
    """Samples host, GPU and energy sources into ``sink`` from a daemon thread.

    Args:
        sink: where samples, hardware facts, totals and problems go (the rank recorder).
        identity: this process; ``local_rank == 0`` makes it the node-level sampler by default.
        interval: seconds between samples (env PROV4ML_HPC_SAMPLE_INTERVAL, default 1; 0 disables the thread,
            sample_once() still works for host and GPU).
        gpu: sample NVML GPUs (env PROV4ML_HPC_SAMPLE_GPU, default 1).
        energy: codecarbon + RAPL on the node-level rank (env PROV4ML_HPC_SAMPLE_ENERGY, default 1).
        node_level: also sample node-wide series and energy (default: local rank 0).
        country: ISO 3166 alpha-3 country for codecarbon (env PROV4ML_HPC_COUNTRY, default USA).
        energy_interval: seconds between codecarbon readings (env PROV4ML_HPC_ENERGY_INTERVAL, default 10).
        nvml: an NVML module stand-in (tests); default imports pynvml.
        rapl_root: the powercap directory (tests); default /sys/class/powercap.
        sources: use these sources instead of the built-in ones (tests, extensions).
        environ: where the env fallbacks are read (default os.environ).

    Raises:
        ConfigError: a configuration value (argument or environment variable) cannot be used.
    """

    def __init__(
        self,
        sink: SampleSink,
        identity: Identity,
        interval: float | None = None,
        gpu: bool | None = None,
        energy: bool | None = None,
        *,
        node_level: bool | None = None,
        country: str | None = None,
        energy_interval: float | None = None,
        nvml: Any = None,
        rapl_root: str | None = None,
        sources: Sequence[Source] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.sink = sink
        self.identity = identity
        self.interval = settings.get(settings.SAMPLE_INTERVAL, env, interval)
        self.gpu = settings.get(settings.SAMPLE_GPU, env, gpu)
        self.energy = settings.get(settings.SAMPLE_ENERGY, env, energy)
        self.node_level = identity.local_rank == 0 if node_level is None else bool(node_level)
        energy_every = settings.get(settings.ENERGY_INTERVAL, env, energy_interval)
        if sources is None:
            sources = self._default_sources(
                country,
                energy_every or settings.SETTINGS[settings.ENERGY_INTERVAL].default,
                nvml,
                rapl_root,
                env,
            )
        self.sources: list[Source] = list(sources)
        # every source writes through a gate, closed once the sampler has stopped
        self._gates: list[_GatedSink] = []
        for source in self.sources:
            if not isinstance(source.sink, _GatedSink):
                source.sink = _GatedSink(source.sink)
            self._gates.append(source.sink)
        # new, starting (slow setup under way), ready, unavailable, stopped, skipped (stopped before it started)
        self._state: dict[int, str] = {id(s): "new" for s in self.sources}
        self._failures: dict[int, int] = {id(s): 0 for s in self.sources}
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._ready = threading.Event()  # set once every source has been set up (or found unavailable)
        self._thread: threading.Thread | None = None
        self._starter: threading.Thread | None = None  # sets up the slow sources
        self._started_at: float | None = None  # time.monotonic() when the thread started
        self._stopped = False
        self.dropped = 0  # samples of a source that raised
        self.samples = 0  # ticks taken (thread and sample_once)
        self.cpu_seconds = 0.0  # CPU time used by the sampler thread itself
        self.wall_seconds = 0.0  # how long the thread has run
        self._pid = os.getpid()  # a forked child inherits this object but not the thread: it must do nothing

    def _default_sources(
        self,
        country: str | None,
        energy_every: float,
        nvml: Any,
        rapl_root: str | None,
        env: Mapping[str, str],
    ) -> list[Source]:
        from .host import HostSource

        out: list[Source] = [HostSource(self.sink, self.node_level)]
        if self.gpu:
            from .gpu import GpuSource

            out.append(
                GpuSource(
                    self.sink,
                    self.identity.local_rank,
                    self.node_level,
                    nvml,
                    env.get("CUDA_VISIBLE_DEVICES"),
                )
            )
        if self.energy and self.node_level:
            from .energy import RAPL_ROOT, CodeCarbonSource, RaplSource

            rapl = RaplSource(self.sink, rapl_root or RAPL_ROOT)
            out.append(rapl)
            out.append(
                CodeCarbonSource(
                    self.sink,
                    self.identity.node,
                    settings.get(settings.COUNTRY, env, country),
                    None,
                    energy_every,
                    rapl=rapl,
                )
            )
        return out

    # ---- public ---------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def cpu_percent(self) -> float:
        """The sampler thread's CPU time as a percentage of one core over its lifetime."""
        return 100.0 * self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def start(self) -> None:
        """Start the daemon thread (no-op when the interval is 0, already started, or stopped)."""
        if self.interval <= 0 or self._thread is not None or self._stopped or os.getpid() != self._pid:
            return
        self._thread = threading.Thread(target=self._run, name="prov4ml-hpc-sampler", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the threads have set up every source (codecarbon takes 1-3 s); False on timeout."""
        if self._thread is None:
            return True
        return self._ready.wait(timeout)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop sampling: one final sample, then each source's totals (energy).  Returns False on timeout.

        Never waits for a slow source that is still starting: it is recorded as skipped (its
        :meth:`Source.skipped` says what the run gets instead) and released in the background.
        """
        if self._stopped or os.getpid() != self._pid:
            return True
        self._stopped = True
        self._stop_event.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self.sink.report_problem(
                    "sampler_stop_timeout",
                    f"the sampler thread did not stop within {timeout} s; totals may be missing",
                )
                return False
            return True
        with self._lock:  # no thread ran: finish what sample_once() set up, in the caller
            if any(state == "ready" for state in self._state.values()):
                self._finish()
        return True

    def sample_once(self) -> None:
        """Take one sample now, from the caller's thread (for log_system_metrics()); never raises."""
        if os.getpid() != self._pid:
            return
        try:
            with self._lock:
                if self._stopped:
                    return
                if self._thread is None:
                    self._setup(slow=False)
                self._tick()
        except Exception as exc:  # noqa: BLE001 - never into the training script
            self._drop("sampler", exc)

    # ---- internals ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        self._started_at = wall0
        try:
            with self._lock:
                self._setup(slow=False)
                self._tick()
            self._account(cpu0, wall0)
            if any(s.slow and self._state[id(s)] == "new" for s in self.sources):
                # codecarbon's start-up (1-3 s) on its own thread: sampling goes on meanwhile, and stop() never
                # waits for it; a source becomes "ready" (visible to _tick) once its setup has returned.
                self._starter = threading.Thread(
                    target=self._start_slow, name="prov4ml-hpc-energy-start", daemon=True
                )
                self._starter.start()
            else:
                self._ready.set()
            next_due = time.monotonic() + self.interval
            while not self._stop_event.wait(max(0.0, next_due - time.monotonic())):
                with self._lock:
                    self._tick()
                self._account(cpu0, wall0)
                next_due += self.interval
                if next_due < time.monotonic():  # fell behind (suspended, overloaded): skip, never burst
                    next_due = time.monotonic() + self.interval
            with self._lock:
                self._finish()
        except BaseException as exc:  # noqa: BLE001 - the thread must end quietly, but say so
            self.sink.report_problem(
                "sampler_crashed", f"the sampler thread stopped: {type(exc).__name__}: {exc}"
            )
        finally:
            self._account(cpu0, wall0)
            if self._starter is None:
                self._ready.set()

    def _start_slow(self) -> None:
        """Set up the slow sources one by one, outside the lock; release one that stop() gave up on."""
        try:
            for source in self.sources:
                if not source.slow:
                    continue
                with self._lock:
                    if self._stopped or self._state[id(source)] != "new":
                        continue  # stopped before its turn: _finish() recorded it as skipped
                    self._state[id(source)] = "starting"
                try:
                    source.setup()
                    failure = None
                except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
                    failure = exc
                with self._lock:
                    if self._state[id(source)] == "starting":  # still wanted
                        if failure is None:
                            self._state[id(source)] = "ready"
                        else:
                            self._state[id(source)] = "unavailable"
                            self._report_setup_failure(source, failure)
                        continue
                if failure is None:  # the sampler stopped during the setup: release, write nothing
                    try:
                        source.abandon()
                    except Exception:  # noqa: BLE001, S112 - nobody is left to tell
                        continue
        finally:
            self._ready.set()

    def _account(self, cpu0: float, wall0: float) -> None:
        self.cpu_seconds = time.thread_time() - cpu0
        self.wall_seconds = time.monotonic() - wall0

    def _setup(self, slow: bool) -> None:
        for source in self.sources:
            if self._state[id(source)] != "new" or (source.slow and not slow):
                continue
            try:
                source.setup()
                self._state[id(source)] = "ready"
            except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
                self._state[id(source)] = "unavailable"
                self._report_setup_failure(source, exc)

    def _report_setup_failure(self, source: Source, exc: BaseException) -> None:
        self.sink.report_problem(
            f"{source.name}_unavailable",
            f"{source.name} sampling is off: setup failed with {type(exc).__name__}: {exc}",
        )

    def _tick(self) -> None:
        t = time.time()
        self.samples += 1
        for source in self.sources:
            if self._state[id(source)] != "ready":
                continue
            try:
                source.sample(t)
                self._failures[id(source)] = 0
            except Exception as exc:  # noqa: BLE001
                self._drop(source.name, exc)
                self._failures[id(source)] += 1
                if self._failures[id(source)] >= MAX_CONSECUTIVE_FAILURES:
                    self._state[id(source)] = "unavailable"
                    self.sink.report_problem(
                        f"{source.name}_unavailable",
                        f"{source.name} sampling is off after {MAX_CONSECUTIVE_FAILURES} failed samples in a row",
                    )

    def _drop(self, name: str, exc: BaseException) -> None:
        self.dropped += 1
        self.sink.report_problem(
            "sample_dropped", f"a {name} sample was dropped: {type(exc).__name__}: {exc}"
        )

    def _finish(self) -> None:
        self._tick()
        t = time.time()
        elapsed = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        for source in self.sources:
            state = self._state[id(source)]
            if source.slow and state in ("new", "starting") and self._thread is not None:
                self._state[id(source)] = "skipped"  # a starting one is released by _start_slow()
                self._call_stop(source, source.skipped, t, elapsed)
                continue
            if state != "ready":
                continue
            self._state[id(source)] = "stopped"
            self._call_stop(source, source.stop, t)
        for gate in self._gates:  # a source released later (its start-up returning now) writes nothing
            gate.close()

    def _call_stop(self, source: Source, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            self.sink.report_problem(
                f"{source.name}_stop", f"{source.name} failed to stop: {type(exc).__name__}: {exc}"
            )


class _GatedSink:
    """Passes a source's writes to the real sink until :meth:`close`; afterwards drops them.

    A slow source whose start-up returns after the sampler stopped (the rank file may already be closed)
    must not write anything: its writes go through this gate.
    """

    def __init__(self, sink: SampleSink) -> None:
        self._sink = sink
        self._open = True

    def close(self) -> None:
        self._open = False

    def record_sample(self, name: str, value: float, unit: str, t: float) -> None:
        if self._open:
            self._sink.record_sample(name, value, unit, t)

    def update_hardware(self, info: dict) -> None:
        if self._open:
            self._sink.update_hardware(info)

    def update_totals(self, totals: dict) -> None:
        if self._open:
            self._sink.update_totals(totals)

    def report_problem(self, reason: str, message: str) -> None:
        if self._open:
            self._sink.report_problem(reason, message)
