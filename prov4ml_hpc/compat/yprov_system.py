"""yProv4ML's log_system_metrics / log_carbon_metrics for the drop-in: its own series, in the given context at the
given step, measured with prov4ml-hpc's sources (psutil, RAPL, NVML for this rank's GPU, codecarbon).

Each call also takes one prov4ml-hpc system sample (the ``system`` context) when the sampler thread is off
(with it on, the default, it samples every second anyway).  A
value that is not measured here is NaN, as yProv4ML writes ``None``; where yProv4ML writes an estimate (RAM
power as 0.375 W per GiB used, GPU memory power as a share of board power) the drop-in writes NaN, and GPU
energy comes from the GPU's own energy counter when it has one.  The energy and power figures cover the time
since the previous call; the first call only sets their baseline (NaN).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from ..rank import api
from .yprov_run import STATE, once

GIB = float(1 << 30)
NAN = math.nan
SYSTEM_SERIES = (
    "cpu_usage_pct",
    "cpu_power",
    "cpu_energy",
    "ram_usage_pct",
    "ram_usage_gb",
    "ram_power",
    "ram_energy",
    "disk_usage_gb",
    "disk_usage_pct",
    "gpu_usage_pct",
    "gpu_power",
    "gpu_energy",
    "gpu_memory_usage_gb",
    "gpu_memory_usage_pct",
    "gpu_memory_power",
    "gpu_temperature_c",
)
CARBON_SERIES = (
    "emissions",
    "emissions_rate",
    "cpu_power",
    "gpu_power",
    "ram_power",
    "cpu_energy",
    "gpu_energy",
    "ram_energy",
    "energy_consumed",
)


class _Capture:
    """A SampleSink that keeps the last value of each series and passes problems to the rank file."""

    def __init__(self, recorder: Any) -> None:
        self.last: dict[str, float] = {}
        self.recorder = recorder

    def record_sample(self, name: str, value: float, unit: str, t: float) -> None:
        self.last[name] = float(value)

    def update_hardware(self, info: dict) -> None:
        pass  # the run's own sampler records the hardware

    def update_totals(self, totals: dict) -> None:
        pass

    def report_problem(self, reason: str, message: str) -> None:
        self.recorder.problem(f"yprov4ml_{reason}", message)


def _cgroup_memory() -> tuple[float, float] | None:
    """(used bytes, limit bytes) of this cgroup when it has a limit (a SLURM job's memory), else None."""
    for usage, limit in (
        ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.max"),
        ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ):
        try:
            with open(usage) as fu, open(limit) as fl:
                used, raw = int(fu.read().strip()), fl.read().strip()
        except (OSError, ValueError):
            continue
        if raw.isdigit() and 0 < int(raw) < (1 << 62):
            return float(used), float(raw)
    return None


class Tracker:
    """yProv4ML's ``Tracker.checkpoint()`` figures from prov4ml-hpc's sources (one per rank, made on first use)."""

    def __init__(
        self, run: Any, *, nvml: Any = None, rapl_root: str | None = None, disk_path: str = "/"
    ) -> None:
        from ..rank.samplers.energy import RAPL_ROOT, RaplSource
        from ..rank.samplers.gpu import GpuSource
        from ..rank.samplers.host import CpuTimesMeter

        self.sink = _Capture(run.recorder)
        self.cpu = STATE.cpu_meter or CpuTimesMeter()  # the baseline taken at start_run
        self.rapl = RaplSource(self.sink, rapl_root or RAPL_ROOT)
        self.gpu = GpuSource(
            self.sink, run.identity.local_rank, False, nvml, os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        for source in (self.rapl, self.gpu):
            try:
                source.setup()
            except Exception as exc:  # noqa: BLE001 - a source that cannot start is left out
                run.recorder.problem(
                    f"yprov4ml_{source.name}_setup", f"{source.name}: {type(exc).__name__}: {exc}"
                )
        self.disk_path = disk_path
        self._last: dict[str, float] = {}
        self._last_t: float | None = None
        parts = (["RAPL"] if self.rapl.zones else []) + (["NVML"] if self.gpu.devices else [])
        self.mode = "+".join(parts) or "psutil"

    def _delta(self, key: str, total: float | None) -> float:
        """The increase of a cumulative counter since the previous call; NaN on the first call or without it."""
        if total is None:
            return NAN
        previous = self._last.get(key)
        self._last[key] = total
        return NAN if previous is None else total - previous

    def checkpoint(self) -> dict[str, float]:
        """One reading of every yProv4ML series (NaN where not measured)."""
        now = time.monotonic()
        elapsed = NAN if self._last_t is None else now - self._last_t
        self._last_t = now
        t = time.time()
        self.sink.last.clear()
        self.rapl.sample(t)
        self.gpu.sample(t)
        last = self.sink.last
        out = dict.fromkeys(SYSTEM_SERIES, NAN)
        pct = self.cpu.percent()
        out["cpu_usage_pct"] = NAN if pct is None else pct
        pkg = [z for z in self.rapl.zones if os.path.basename(z.path).count(":") == 1]
        dram = [z for z in self.rapl.zones if z.name.endswith("dram")]
        for kind, zones in (("cpu", pkg), ("ram", dram)):
            vals = [last.get(f"rapl.{z.name}.energy") for z in zones]
            total = sum(v for v in vals if v is not None) if zones and None not in vals else None
            out[f"{kind}_energy"] = self._delta(f"rapl.{kind}", total)
            out[f"{kind}_power"] = out[f"{kind}_energy"] / elapsed if elapsed and elapsed > 0 else NAN
        self._memory(out)
        try:
            import psutil

            disk = psutil.disk_usage(self.disk_path)
            out["disk_usage_gb"], out["disk_usage_pct"] = disk.used / GIB, float(disk.percent)
        except OSError:
            pass
        self._gpu(out, last, elapsed)
        return out

    def _memory(self, out: dict[str, float]) -> None:
        import psutil

        cg = _cgroup_memory()
        if cg is not None:
            out["ram_usage_gb"], out["ram_usage_pct"] = cg[0] / GIB, cg[0] / cg[1] * 100.0
        else:
            vm = psutil.virtual_memory()
            out["ram_usage_gb"], out["ram_usage_pct"] = vm.used / GIB, float(vm.percent)

    def _gpu(self, out: dict[str, float], last: dict[str, float], elapsed: float) -> None:
        if self.gpu.rank_gpu is None:
            return
        p = f"gpu.{self.gpu.rank_gpu}."
        out["gpu_usage_pct"] = last.get(p + "utilization", NAN)
        out["gpu_power"] = last.get(p + "power", NAN)
        out["gpu_temperature_c"] = last.get(p + "temperature", NAN)
        used, total = last.get(p + "memory_used"), last.get(p + "memory_total")
        if used is not None:
            out["gpu_memory_usage_gb"] = used / GIB
            if total:
                out["gpu_memory_usage_pct"] = used / total * 100.0
        if p + "energy" in last:
            out["gpu_energy"] = self._delta("gpu", last[p + "energy"])
        elif elapsed and elapsed > 0:
            out["gpu_energy"] = out["gpu_power"] * elapsed  # no energy counter: power x time, as yProv4ML

    def close(self) -> None:
        try:
            self.gpu.stop(time.time())
        except Exception:  # noqa: BLE001, S110 - shutting NVML down is best effort
            pass


def _tracker(run: Any) -> Tracker:
    if STATE.tracker is None:
        STATE.tracker = Tracker(run)
    return STATE.tracker


def log_system_metrics(context: Any = None, step: int | None = 0) -> None:
    """yProv4ML 3.x's 16 series (``cpu_usage_pct`` ... ``gpu_temperature_c``) in ``context`` at ``step``, source
    the hardware used (``RAPL+NVML``, ``psutil``, ...), plus one prov4ml-hpc system sample when the sampler
    thread is off."""
    from .yprov_core import log_metric

    run = api.active_run()
    if run is None:
        return api.log_system_metrics()  # the usual NoActiveRunError (or a forked child's notice)
    tracker = _tracker(run)
    t = time.time() * 1000.0
    for name, value in tracker.checkpoint().items():
        log_metric(name, value, context, step, source=tracker.mode, timestamp=t)
    _our_sample(run)


def _our_sample(run: Any) -> None:
    """One prov4ml-hpc system sample, unless the sampler thread takes them anyway (every second, ~2.7 ms each)."""
    if not getattr(getattr(run, "sampler", None), "running", False):
        api.log_system_metrics()


def _codecarbon(run: Any) -> Any:
    """The latest reading of the run's codecarbon source (the sampler's, node-level rank only), or None."""
    sampler = getattr(run, "sampler", None)
    for source in getattr(sampler, "sources", ()) or ():
        if getattr(source, "name", None) == "energy":
            return getattr(getattr(source, "_handler", None), "last", None)
    return None


def log_carbon_metrics(context: Any = None, step: int | None = 0) -> None:
    """yProv4ML 2.x's codecarbon series (``emissions`` kg CO2eq, ``emissions_rate`` kg/s, power W, energy kWh) in
    ``context`` at ``step``, from the run's codecarbon reading (taken every PROV4ML_HPC_ENERGY_INTERVAL s on each
    node's local rank 0); NaN where there is none.  yProv4ML 2.x logs energy_consumed under ``emissions``."""
    from .yprov_core import log_metric

    run = api.active_run()
    if run is None:
        return api.log_system_metrics()
    data = _codecarbon(run)
    if data is None:
        once(
            "carbon",
            "log_carbon_metrics: no codecarbon reading here (codecarbon not installed, energy sampling off, not "
            "a node's local rank 0, or none taken yet); NaN logged",
        )
    t = time.time() * 1000.0
    for name in CARBON_SERIES:
        field = "energy_consumed" if name == "energy_consumed" else name
        value = getattr(data, field, None) if data is not None else None
        log_metric(
            name, NAN if value is None else float(value), context, step, source="codecarbon", timestamp=t
        )
    _our_sample(run)
