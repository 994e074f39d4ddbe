"""Host samples through psutil: this process on every rank, the whole node on the node-level rank only."""

from __future__ import annotations

import os
import platform

import psutil

from .base import SampleSink, Source

# psutil errors that mean "this field cannot be read here" (permissions, platform).
_UNSUPPORTED = (psutil.AccessDenied, NotImplementedError, AttributeError, OSError)


class CpuTimesMeter:
    """Node-wide CPU busy percent since the previous reading, with its own baseline.

    psutil.cpu_percent(interval=None) keeps one baseline per process, which any other caller (codecarbon does)
    resets; this meter keeps its own from psutil.cpu_times().
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def percent(self) -> float | None:
        current = psutil.cpu_times()
        previous, self._last = self._last, current
        total = sum(current) - sum(previous)
        idle = _idle(current) - _idle(previous)
        if total <= 0:
            return None  # no tick since the previous reading
        return min(max((total - idle) / total * 100.0, 0.0), 100.0)


def _idle(times: object) -> float:
    return getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), or what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "Model Name", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


class HostSource(Source):
    """psutil: process cpu/rss/threads/io on every rank; node cpu/memory/load/network/disk when node_level.

    Cumulative counters (I/O, network, disk bytes) are recorded as bytes since the sampler started.
    """

    name = "host"

    def __init__(self, sink: SampleSink, node_level: bool) -> None:
        super().__init__(sink)
        self.node_level = node_level
        self._proc: psutil.Process | None = None
        self._cpu: CpuTimesMeter | None = None
        self._base: dict[str, float] = {}

    def setup(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # prime: the first call returns 0
        info: dict[str, object] = {
            "cpu_model": cpu_model(),
            "cpu_count_logical": psutil.cpu_count(logical=True),
            "cpu_count_physical": psutil.cpu_count(logical=False),
            "memory_total_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(),
        }
        affinity = self.read("cpu_affinity", self._proc.cpu_affinity, _UNSUPPORTED)
        if affinity is not None:
            info["process_cpu_affinity_count"] = len(affinity)
        self.sink.update_hardware(info)
        self._base.update(self._process_io() or {})
        if self.node_level:
            self._cpu = CpuTimesMeter()
            self._base.update(self._node_io())

    def _process_io(self) -> dict[str, float] | None:
        assert self._proc is not None
        io = self.read("process.io", self._proc.io_counters, _UNSUPPORTED)
        if io is None:
            return None
        return {"process.io_read": io.read_bytes, "process.io_write": io.write_bytes}

    def _node_io(self) -> dict[str, float]:
        out: dict[str, float] = {}
        net = self.read("node.net", psutil.net_io_counters, _UNSUPPORTED)
        if net is not None:
            out["node.net_sent"] = net.bytes_sent
            out["node.net_recv"] = net.bytes_recv
        disk = self.read("node.disk", psutil.disk_io_counters, _UNSUPPORTED)
        if disk is not None:  # None on machines without disks psutil can see
            out["node.disk_read"] = disk.read_bytes
            out["node.disk_write"] = disk.write_bytes
        return out

    def _since_start(self, counters: dict[str, float], t: float) -> None:
        for name, value in counters.items():
            base = self._base.setdefault(name, value)
            self.emit(name, value - base, "bytes", t)

    def sample(self, t: float) -> None:
        proc = self._proc
        assert proc is not None, "setup() was not called"
        with proc.oneshot():
            self.emit("process.cpu_percent", proc.cpu_percent(None), "percent", t)
            self.emit("process.rss", proc.memory_info().rss, "bytes", t)
            self.emit("process.threads", proc.num_threads(), "count", t)
            self._since_start(self._process_io() or {}, t)
        if not self.node_level:
            return
        assert self._cpu is not None
        self.emit("node.cpu_percent", self._cpu.percent(), "percent", t)
        mem = psutil.virtual_memory()
        self.emit("node.memory_used", mem.used, "bytes", t)
        self.emit("node.memory_available", mem.available, "bytes", t)
        load = self.read("node.load", psutil.getloadavg, _UNSUPPORTED)
        if load is not None:
            self.emit("node.load_1m", load[0], "load", t)
        self._since_start(self._node_io(), t)
