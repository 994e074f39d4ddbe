"""NVIDIA GPU samples through NVML: the rank's own GPU on every rank, every GPU of the node when node_level.

pynvml (package nvidia-ml-py) is imported only when the source is set up, and any object with the same
functions can be passed as ``nvml`` (the tests use a fake built from recorded device descriptions).
Series are named ``gpu.<nvml index>.<field>``; the hardware attribute maps the rank to its GPU by index and UUID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .base import SampleSink, Source

# NVML errors that mean "this device will never answer this query": the field is switched off.
_UNSUPPORTED_NAMES = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
_HIDE_ALL = ("", "NoDevFiles", "none", "void")


@dataclass
class GpuDevice:
    index: int  # NVML index on the node
    uuid: str
    name: str
    handle: Any
    energy_base_mj: float | None = None
    energy_j: float | None = None


def parse_visible_devices(raw: str | None) -> list[str] | None:
    """Split CUDA_VISIBLE_DEVICES into tokens; None when unset, [] when it hides every GPU.

    Like CUDA, parsing stops at the first invalid entry (a negative index such as ``-1``).
    """
    if raw is None:
        return None
    if raw.strip() in _HIDE_ALL:
        return []
    tokens: list[str] = []
    for part in raw.split(","):
        token = part.strip()
        if not token or token.startswith("-"):
            break
        tokens.append(token)
    return tokens


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def resolve_visible_token(nvml: Any, token: str, devices: list[GpuDevice]) -> tuple[int, str | None] | None:
    """Map one CUDA_VISIBLE_DEVICES entry to (NVML index, MIG UUID or None); None when it matches nothing.

    Forms: an index (``1``), a GPU UUID or a unique prefix of it (``GPU-8f3a...``), a MIG UUID
    (``MIG-<uuid>``, R470+) or the older ``MIG-GPU-<uuid>/<gi>/<ci>``.  A MIG slice is sampled at the level of
    its parent GPU (NVML gives power, clocks and energy per physical GPU).
    """
    if token.isdigit():
        idx = int(token)
        return (idx, None) if any(d.index == idx for d in devices) else None
    if token.startswith("MIG-GPU-"):
        found = _by_uuid_prefix(token[len("MIG-") :].split("/")[0], devices)
        return (found, token) if found is not None else None
    if token.startswith("MIG-"):
        try:
            mig = nvml.nvmlDeviceGetHandleByUUID(token)
            parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
            return int(nvml.nvmlDeviceGetIndex(parent)), token
        except nvml.NVMLError:
            return None
    found = _by_uuid_prefix(token, devices)
    return (found, None) if found is not None else None


def _by_uuid_prefix(prefix: str, devices: list[GpuDevice]) -> int | None:
    matches = [d.index for d in devices if d.uuid.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


class GpuSource(Source):
    """NVML: utilisation, memory, power, temperature, clocks, throttle reasons and energy per GPU."""

    name = "gpu"

    def __init__(
        self,
        sink: SampleSink,
        local_rank: int,
        node_level: bool,
        nvml: Any = None,
        visible_devices: str | None = None,
    ) -> None:
        super().__init__(sink)
        self.local_rank = local_rank
        self.node_level = node_level
        self._nvml = nvml
        self._visible_raw = (
            visible_devices if visible_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        self.devices: list[GpuDevice] = []  # the ones sampled
        self.rank_gpu: int | None = None
        self._initialised = False

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                self._no_gpu(f"nvidia-ml-py is not installed ({exc}); pip install 'prov4ml-hpc[gpu]'")
                return
            self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._no_gpu(f"{type(exc).__name__}: {exc}")
            return
        self._initialised = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
            all_devices = [self._open(i) for i in range(count)]
        except nvml.NVMLError as exc:
            self._no_gpu(f"NVML could not list devices ({type(exc).__name__}: {exc})")
            return
        if not all_devices:
            self._no_gpu("NVML reports 0 devices")
            return
        self.rank_gpu, mig = self._rank_device(all_devices)
        wanted = {d.index for d in all_devices} if self.node_level else set()
        if self.rank_gpu is not None:
            wanted.add(self.rank_gpu)
        self.devices = [d for d in all_devices if d.index in wanted]
        for dev in self.devices:  # the energy counter counts from driver load: keep its value at our start
            total = _try(nvml, nvml.nvmlDeviceGetTotalEnergyConsumption, dev.handle)
            dev.energy_base_mj = None if total is None else float(total)
        self.sink.update_hardware(self._hardware(all_devices, mig))

    def _open(self, index: int) -> GpuDevice:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return GpuDevice(
            index, _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle)), handle
        )

    @property
    def _unsupported(self) -> tuple[type[BaseException], ...]:
        return tuple(getattr(self._nvml, n) for n in _UNSUPPORTED_NAMES if hasattr(self._nvml, n))

    def _rank_device(self, devices: list[GpuDevice]) -> tuple[int | None, str | None]:
        tokens = parse_visible_devices(self._visible_raw)
        if tokens is None:
            return devices[self.local_rank % len(devices)].index, None
        if not tokens:
            return None, None
        token = tokens[self.local_rank % len(tokens)] if len(tokens) > 1 else tokens[0]
        found = resolve_visible_token(self._nvml, token, devices)
        if found is None:
            self.sink.report_problem(
                "gpu_mapping",
                f"CUDA_VISIBLE_DEVICES entry {token!r} (from {self._visible_raw!r}) matches no GPU NVML lists "
                f"({[d.uuid for d in devices]}); this rank's GPU is unknown",
            )
            return None, None
        return found

    def _hardware(self, devices: list[GpuDevice], mig: str | None) -> dict:
        nvml = self._nvml
        gpus = []
        for dev in devices:
            entry: dict[str, Any] = {"index": dev.index, "uuid": dev.uuid, "name": dev.name}
            mem = _try(nvml, nvml.nvmlDeviceGetMemoryInfo, dev.handle)
            if mem is not None:
                entry["memory_total_bytes"] = int(mem.total)
            pci = _try(nvml, getattr(nvml, "nvmlDeviceGetPciInfo", None), dev.handle)
            if pci is not None:
                entry["pci_bus_id"] = _text(pci.busId)
            entry["sampled"] = any(d.index == dev.index for d in self.devices)
            gpus.append(entry)
        info: dict[str, Any] = {
            "gpus": gpus,
            "gpu_status": "ok",
            "gpu_rank_index": self.rank_gpu,
            "gpu_rank_uuid": next((d.uuid for d in devices if d.index == self.rank_gpu), None),
            "cuda_visible_devices": self._visible_raw,
        }
        if mig is not None:
            info["gpu_rank_mig_uuid"] = mig
        for key, fn in (
            ("nvidia_driver_version", "nvmlSystemGetDriverVersion"),
            ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion"),
            ("nvml_version", "nvmlSystemGetNVMLVersion"),
        ):
            value = _try(nvml, getattr(nvml, fn, None))
            if value is not None:
                info[key] = _cuda_version(value) if key == "cuda_driver_version" else _text(value)
        return info

    def _no_gpu(self, reason: str) -> None:
        self.devices = []
        self.sink.update_hardware({"gpus": [], "gpu_status": f"no GPU: {reason}"})

    # ---- sampling -------------------------------------------------------------------------------------------
    def sample(self, t: float) -> None:
        if not self.devices:
            return
        nvml = self._nvml
        off, skip = self._unsupported, (nvml.NVMLError,)
        clock_sm, clock_mem = getattr(nvml, "NVML_CLOCK_SM", 1), getattr(nvml, "NVML_CLOCK_MEM", 2)
        temp_gpu = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        for dev in self.devices:
            h, p = dev.handle, f"gpu.{dev.index}."

            def get(key: str, fn: Any, *args: Any, _h: Any = h, _i: int = dev.index) -> Any:
                return self.read(f"{_i}.{key}", lambda: fn(_h, *args), off, skip)

            util = get("utilization", nvml.nvmlDeviceGetUtilizationRates)
            if util is not None:
                self.emit(p + "utilization", util.gpu, "percent", t)
                self.emit(p + "memory_utilization", util.memory, "percent", t)
            mem = get("memory_info", nvml.nvmlDeviceGetMemoryInfo)
            if mem is not None:
                self.emit(p + "memory_used", mem.used, "bytes", t)
                self.emit(p + "memory_total", mem.total, "bytes", t)
            power = get("power", nvml.nvmlDeviceGetPowerUsage)
            self.emit(p + "power", None if power is None else power / 1000.0, "W", t)
            self.emit(p + "temperature", get("temperature", nvml.nvmlDeviceGetTemperature, temp_gpu), "C", t)
            self.emit(p + "sm_clock", get("sm_clock", nvml.nvmlDeviceGetClockInfo, clock_sm), "MHz", t)
            self.emit(
                p + "memory_clock", get("memory_clock", nvml.nvmlDeviceGetClockInfo, clock_mem), "MHz", t
            )
            reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
            )
            if reasons_fn is not None:
                self.emit(p + "throttle_reasons", get("throttle_reasons", reasons_fn), "bitmask", t)
            total = get("energy", nvml.nvmlDeviceGetTotalEnergyConsumption)  # mJ since the driver loaded
            if total is not None:
                if dev.energy_base_mj is None:
                    dev.energy_base_mj = float(total)
                dev.energy_j = (float(total) - dev.energy_base_mj) / 1000.0
                self.emit(p + "energy", dev.energy_j, "J", t)

    def stop(self, t: float) -> None:
        energy = {d.uuid: d.energy_j for d in self.devices if d.energy_j is not None}
        if energy:
            self.sink.update_totals({"gpu_energy_j": energy})
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                self.sink.report_problem("gpu_shutdown", f"nvmlShutdown failed: {exc}")


def _try(nvml: Any, fn: Any, *args: Any) -> Any:
    """A hardware fact or None: facts that a driver cannot give are simply left out."""
    if fn is None:
        return None
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def _cuda_version(value: Any) -> str:
    """NVML gives the CUDA driver version as an int such as 12040; return "12.4"."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return _text(value)
    return f"{number // 1000}.{(number % 1000) // 10}"
