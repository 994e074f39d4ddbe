"""Node energy: codecarbon's offline tracker (estimated CPU/RAM/GPU power, kWh, kg CO2eq) and RAPL counters.

Both measure the whole node, so they run on the node-level rank only (local rank 0).  codecarbon is imported
when the source is set up, on a thread of the sampler, so its start-up (1-3 s: hardware detection) never
delays the training script nor its end: a run that ends before the tracker has started gets no codecarbon
figures (RAPL's when readable), and its ``energy_source`` total says so.
Only ``OfflineEmissionsTracker`` is used: the online one contacts external hosts and the cloud-metadata address,
which can hang on a firewalled compute node.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ... import settings
from .base import SampleSink, Source

DEFAULT_COUNTRY = (
    "USA"  # codecarbon needs a country for the carbon intensity offline; set PROV4ML_HPC_COUNTRY
)
DEFAULT_LOG_LEVEL = "error"
RAPL_ROOT = "/sys/class/powercap"


class CodeCarbonSource(Source):
    """codecarbon OfflineEmissionsTracker in 'machine' mode, no output files, results taken through a handler."""

    name = "energy"
    slow = True  # started on the sampler thread only

    def __init__(
        self,
        sink: SampleSink,
        node: str,
        country: str | None = None,
        log_level: str | None = None,
        interval: float = 10.0,
        rapl: RaplSource | None = None,
    ) -> None:
        super().__init__(sink)
        self.rapl = rapl  # the node's RAPL source, named in what a run too short for codecarbon gets
        self.node = node
        self.country = (country or settings.get(settings.COUNTRY)).upper()
        self.log_level = (log_level or os.environ.get("CODECARBON_LOG_LEVEL") or DEFAULT_LOG_LEVEL).lower()
        self.interval = interval
        self._tracker: Any = None
        self._handler: Any = None
        self._last_flush = 0.0
        self.version = "?"

    def setup(self) -> None:
        try:
            import codecarbon
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import BaseOutput
        except ImportError as exc:
            raise ImportError(
                f"codecarbon is not installed ({exc}); pip install 'prov4ml-hpc[energy]'"
            ) from exc

        class _Keep(BaseOutput):  # codecarbon calls out() on flush() and stop() with the running totals
            def __init__(self) -> None:
                self.last: Any = None

            def out(self, total: Any, delta: Any) -> None:
                self.last = total

        # codecarbon logs before it applies log_level: set its logger first.
        logging.getLogger("codecarbon").setLevel(self.log_level.upper())
        self._handler = _Keep()
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country,
            output_methods=[],  # no emissions.csv anywhere
            output_handlers=[self._handler],
            emissions_endpoint=None,
            log_level=self.log_level,
            tracking_mode="machine",
            measure_power_secs=self.interval,
            allow_multiple_runs=True,  # False would create a lock file and install SIGINT/SIGTERM handlers
            project_name="prov4ml-hpc",
        )
        self._tracker.start()
        self._last_flush = time.monotonic()
        if (
            self._tracker.flush() is None or self._handler.last is None
        ):  # start()/flush() swallow their errors
            raise RuntimeError(
                f"codecarbon {codecarbon.__version__} OfflineEmissionsTracker(country_iso_code={self.country!r}) "
                "did not start; set CODECARBON_LOG_LEVEL=info to see why, or PROV4ML_HPC_SAMPLE_ENERGY=0"
            )
        hw = self._tracker.get_detected_hardware()
        self.sink.update_hardware(
            {"codecarbon": {k: v for k, v in hw.items() if isinstance(v, (int, float, str, type(None)))}}
        )
        self.version = codecarbon.__version__

    def sample(self, t: float) -> None:
        if time.monotonic() - self._last_flush < self.interval:
            return
        self._last_flush = time.monotonic()
        self._tracker.flush()
        self._emit(self._handler.last, t)

    def _emit(self, data: Any, t: float) -> None:
        if data is None:
            return
        self.emit("energy.cpu_power", data.cpu_power, "W", t)
        self.emit("energy.gpu_power", data.gpu_power, "W", t)
        self.emit("energy.ram_power", data.ram_power, "W", t)
        self.emit("energy.consumed", data.energy_consumed, "kWh", t)
        self.emit("energy.emissions", data.emissions, "kg CO2eq", t)

    def skipped(self, t: float, elapsed: float) -> None:
        rapl = self.rapl is not None and bool(self.rapl.zones)
        self.sink.update_totals(
            {
                "energy_source": (
                    f"{'RAPL only (rapl_energy_j)' if rapl else 'none'}: sampling stopped {elapsed:.2f} s after "
                    "it started, before codecarbon's tracker had finished starting (its hardware detection "
                    "takes 1-3 s), so there are no codecarbon figures for this run"
                ),
                "energy_node": self.node,
            }
        )

    def abandon(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.stop()  # ends its timer threads; what it measured is dropped

    def stop(self, t: float) -> None:
        if self._tracker is None:
            return
        tracker, self._tracker = self._tracker, None
        tracker.stop()
        data = getattr(tracker, "final_emissions_data", None) or self._handler.last
        if data is None:
            self.sink.report_problem(
                "energy_stop", "codecarbon returned no final emissions data; no energy totals"
            )
            return
        self._emit(data, t)
        self.sink.update_totals(
            {
                "energy_kwh": data.energy_consumed,
                "cpu_energy_kwh": data.cpu_energy,
                "gpu_energy_kwh": data.gpu_energy,
                "ram_energy_kwh": data.ram_energy,
                "emissions_kg_co2eq": data.emissions,
                "energy_duration_s": data.duration,
                "energy_node": self.node,
                "energy_country_iso_code": self.country,
                "energy_source": f"codecarbon {self.version} OfflineEmissionsTracker, tracking_mode=machine",
            }
        )


@dataclass
class RaplZone:
    name: str
    path: str
    max_range_uj: int
    last_uj: int
    energy_j: float = 0.0


def rapl_zones(root: str = RAPL_ROOT) -> list[tuple[str, str]]:
    """(domain name, zone directory) of every RAPL zone: ``package-0``, ``package-0-dram``, ..."""
    zones = []
    for path in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        parts = os.path.basename(path).split(":")
        names = []
        for depth in range(2, len(parts) + 1):  # the zone's own name prefixed by its parents' names
            with open(os.path.join(root, ":".join(parts[:depth]), "name"), encoding="utf-8") as fh:
                names.append(fh.read().strip())
        zones.append(("-".join(names), path))
    return zones


def _read_int(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return int(fh.read().strip())


class RaplSource(Source):
    """RAPL energy counters from powercap sysfs (``energy_uj``), as Joules since start and mean Watts."""

    name = "rapl"

    def __init__(self, sink: SampleSink, root: str = RAPL_ROOT) -> None:
        super().__init__(sink)
        self.root = root
        self.zones: list[RaplZone] = []
        self._last_t: float | None = None

    def setup(self) -> None:
        try:
            found = rapl_zones(self.root)
            zones = [
                RaplZone(
                    name,
                    path,
                    _read_int(os.path.join(path, "max_energy_range_uj")),
                    _read_int(os.path.join(path, "energy_uj")),
                )
                for name, path in found
            ]
        except (OSError, ValueError) as exc:  # energy_uj is root-only on most kernels since 2020
            self.sink.update_hardware({"rapl_status": f"unreadable: {type(exc).__name__}: {exc}"})
            return
        if not zones:
            self.sink.update_hardware({"rapl_status": f"absent: no {self.root}/intel-rapl:* zones"})
            return
        self.zones = zones
        self._last_t = time.monotonic()
        self.sink.update_hardware({"rapl_status": "ok", "rapl_domains": [z.name for z in zones]})

    def sample(self, t: float) -> None:
        if not self.zones:
            return
        now = time.monotonic()
        dt = now - (self._last_t or now)
        self._last_t = now
        for zone in self.zones:
            value = self.read(
                zone.name, lambda z=zone: _read_int(os.path.join(z.path, "energy_uj")), (OSError, ValueError)
            )
            if value is None:
                continue
            delta = rapl_delta(zone.last_uj, value, zone.max_range_uj)
            zone.last_uj = value
            zone.energy_j += delta / 1e6
            self.emit(f"rapl.{zone.name}.energy", zone.energy_j, "J", t)
            if dt > 0:
                self.emit(f"rapl.{zone.name}.power", delta / 1e6 / dt, "W", t)

    def stop(self, t: float) -> None:
        if self.zones:
            self.sink.update_totals({"rapl_energy_j": {z.name: z.energy_j for z in self.zones}})


def rapl_delta(previous_uj: int, current_uj: int, max_range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_range_uj``."""
    delta = current_uj - previous_uj
    return delta + max_range_uj if delta < 0 else delta
