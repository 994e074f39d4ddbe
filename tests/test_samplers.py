"""Samplers: real psutil and codecarbon on this machine; NVML through a fake built from tests/data/nvml/."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.job.environment import Identity
from prov4ml_hpc.rank.samplers import MemorySink, SamplerThread, SampleSink, Source
from prov4ml_hpc.rank.samplers.energy import CodeCarbonSource, RaplSource, rapl_delta, rapl_zones
from prov4ml_hpc.rank.samplers.gpu import GpuSource, parse_visible_devices
from prov4ml_hpc.rank.samplers.host import HostSource

NVML_DATA = Path(__file__).parent / "data" / "nvml"


# ---- a fake NVML module that replays a device description ------------------------------------------------
class FakeNvml:
    """Stands in for pynvml on machines without the hardware a fixture describes (same function names)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_NoPermission(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    class NVMLError_Unknown(NVMLError):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.devices = spec["devices"]
        self.calls: dict[tuple[int, str], int] = {}
        self.initialised = False
        self.shutdowns = 0

    @classmethod
    def load(cls, name: str) -> FakeNvml:
        return cls(json.loads((NVML_DATA / name).read_text()))

    def _field(self, handle: int, field: str) -> dict:
        dev = self.devices[handle]
        n = self.calls[(handle, field)] = self.calls.get((handle, field), 0) + 1
        if field in dev.get("unsupported", ()):
            raise self.NVMLError_NotSupported("Not Supported")
        if field in dev.get("fail_first", ()) and n == 1:
            raise self.NVMLError_Unknown("Unknown Error")
        return dev

    def nvmlInit(self) -> None:
        if "init_error" in self.spec:
            raise getattr(self, "NVMLError_" + self.spec["init_error"])("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.devices[h]["uuid"]

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.devices[h]["name"]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:
        for i, dev in enumerate(self.devices):
            if dev["uuid"] == uuid:
                return i
            for m in dev.get("mig", ()):
                if m["uuid"] == uuid:
                    return ("mig", i, m["uuid"])
        raise self.NVMLError_NotFound("Not Found")

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig: object) -> int:
        return mig[1]

    def nvmlDeviceGetPciInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self.devices[h]["pci_bus_id"].encode())

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.spec["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.spec["cuda_driver_version"]

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.spec["nvml_version"]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(**self._field(h, "utilization")["utilization"])

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        m = self.devices[h]["memory"]
        return SimpleNamespace(used=m["used"], total=m["total"], free=m["total"] - m["used"])

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._field(h, "power")["power_mw"]

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._field(h, "temperature")["temperature_c"]

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        field = {self.NVML_CLOCK_SM: "sm_clock", self.NVML_CLOCK_MEM: "memory_clock"}[kind]
        return self._field(h, field)["clocks_mhz"]["sm" if field == "sm_clock" else "mem"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return self._field(h, "throttle_reasons")["throttle_reasons"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        dev = self._field(h, "energy")
        n = self.calls[(h, "energy")] - 1  # the counter advances one step per reading
        return dev["energy_mj"] + n * dev["energy_mj_step"]


def gpu_source(fixture: str, *, local_rank: int = 0, node_level: bool = False, cvd: str | None = None):
    sink, nvml = MemorySink(), FakeNvml.load(fixture)
    src = GpuSource(sink, local_rank, node_level, nvml=nvml, visible_devices=cvd)
    src.setup()
    return sink, nvml, src


def sampled_gpus(sink: MemorySink) -> set[str]:
    return {n.split(".")[1] for n in sink.names() if n.startswith("gpu.")}


# ---- sink -------------------------------------------------------------------------------------------------
def test_memory_sink_is_a_sample_sink():
    sink = MemorySink()
    assert isinstance(sink, SampleSink)
    sink.report_problem("x", "first")
    sink.report_problem("x", "second")
    assert sink.problems == {"x": 2} and sink.messages == {"x": "first"}


# ---- host -------------------------------------------------------------------------------------------------
def test_host_process_level_only():
    sink = MemorySink()
    src = HostSource(sink, node_level=False)
    src.setup()
    sum(i * i for i in range(200_000))
    src.sample(time.time())
    names = sink.names()
    assert {"process.cpu_percent", "process.rss", "process.threads"} <= names
    assert all(n.startswith("process.") for n in names)
    assert sink.series("process.rss")[0] > 1e6
    assert sink.series("process.threads")[0] >= 1
    assert sink.units()["process.rss"] == "bytes" and sink.units()["process.cpu_percent"] == "percent"
    assert sink.hardware["cpu_count_logical"] >= 1 and sink.hardware["memory_total_bytes"] > 0
    assert sink.hardware["cpu_model"]


def test_host_node_level_series():
    sink = MemorySink()
    src = HostSource(sink, node_level=True)
    src.setup()
    for _ in range(3):
        time.sleep(0.05)
        src.sample(time.time())
    names = sink.names()
    assert {"node.cpu_percent", "node.memory_used", "node.memory_available", "node.load_1m"} <= names
    assert {"node.net_sent", "node.net_recv"} <= names
    assert all(0.0 <= v <= 100.0 for v in sink.series("node.cpu_percent"))
    assert all(v > 0 for v in sink.series("node.memory_used"))
    for name in ("node.net_sent", "node.net_recv", "process.io_read", "process.io_write"):
        if name in names:  # counters since the sampler started: start near 0, never decrease
            values = sink.series(name)
            assert values[0] >= 0 and values == sorted(values)
    assert not sink.problems or all(r.startswith("host_unsupported:") for r in sink.problems)


def test_host_cpu_percent_sees_load():
    sink = MemorySink()
    src = HostSource(sink, node_level=False)
    src.setup()
    wall0, cpu0 = time.monotonic(), time.process_time()
    end = cpu0 + 0.3
    while time.process_time() < end:
        pass
    src.sample(time.time())
    expected = 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)  # lower on a loaded machine
    assert sink.series("process.cpu_percent")[0] == pytest.approx(expected, rel=0.5)


# ---- GPU through the fake NVML ----------------------------------------------------------------------------
def test_visible_devices_parsing():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("NoDevFiles") == []
    assert parse_visible_devices("-1") == []
    assert parse_visible_devices("0,1") == ["0", "1"]
    assert parse_visible_devices(" 2, 0 ") == ["2", "0"]
    assert parse_visible_devices("1,-1,0") == ["1"]  # CUDA stops at the first invalid entry
    assert parse_visible_devices("GPU-abc,MIG-def") == ["GPU-abc", "MIG-def"]


def test_gpu_rank_device_from_local_rank_without_cvd():
    sink, nvml, src = gpu_source("two_h100.json", local_rank=1)
    src.sample(time.time())
    assert sampled_gpus(sink) == {"1"}
    hw = sink.hardware
    assert hw["gpu_status"] == "ok" and hw["gpu_rank_index"] == 1
    assert hw["gpu_rank_uuid"] == "GPU-7a8b9c0d-2e3f-4a5b-8c6d-7e8f9a0b1c2d"
    assert hw["nvidia_driver_version"] == "550.54.15" and hw["cuda_driver_version"] == "12.4"
    assert hw["nvml_version"] == "12.550.54.15"
    assert [g["uuid"] for g in hw["gpus"]] == [d["uuid"] for d in nvml.devices]
    assert [g["sampled"] for g in hw["gpus"]] == [False, True]
    assert (
        hw["gpus"][0]["pci_bus_id"] == "00000000:18:00.0"
        and hw["gpus"][0]["memory_total_bytes"] == 85520809984
    )
    # local rank modulo the device count
    sink3, _, _ = gpu_source("two_h100.json", local_rank=3)
    assert sink3.hardware["gpu_rank_index"] == 1


def test_gpu_node_level_samples_every_gpu_and_values():
    sink, nvml, src = gpu_source("two_h100.json", local_rank=0, node_level=True)
    for _ in range(3):
        src.sample(time.time())
    assert sampled_gpus(sink) == {"0", "1"}
    assert sink.series("gpu.0.utilization") == [97.0] * 3
    assert sink.series("gpu.0.memory_utilization") == [63.0] * 3
    assert sink.series("gpu.0.power") == [612.345] * 3
    assert sink.series("gpu.1.temperature") == [33.0] * 3
    assert sink.series("gpu.0.sm_clock") == [1980.0] * 3 and sink.series("gpu.0.memory_clock") == [2619.0] * 3
    assert sink.series("gpu.1.throttle_reasons") == [1.0] * 3
    assert sink.series("gpu.0.memory_used") == [61203283968.0] * 3
    # energy: mJ counter since driver load -> J since the sampler started (baseline read at setup)
    assert sink.series("gpu.0.energy") == pytest.approx([612.345, 1224.69, 1837.035])
    units = sink.units()
    assert units["gpu.0.energy"] == "J" and units["gpu.0.power"] == "W" and units["gpu.0.temperature"] == "C"
    assert units["gpu.0.sm_clock"] == "MHz" and units["gpu.0.throttle_reasons"] == "bitmask"
    src.stop(time.time())
    assert sink.totals["gpu_energy_j"]["GPU-3f2c9a4e-1b7d-4e0a-9c55-0d1e2f3a4b5c"] == pytest.approx(1837.035)
    assert nvml.shutdowns == 1
    assert sink.problems == {}


@pytest.mark.parametrize(
    ("cvd", "local_rank", "expected"),
    [
        ("1", 0, 1),
        ("0,1", 1, 1),  # every rank sees all GPUs and uses its local rank
        ("1,0", 0, 1),
        ("GPU-7a8b9c0d-2e3f-4a5b-8c6d-7e8f9a0b1c2d", 0, 1),
        ("GPU-3f2c", 5, 0),  # a unique UUID prefix, as CUDA accepts
    ],
)
def test_gpu_cuda_visible_devices_forms(cvd, local_rank, expected):
    sink, _, src = gpu_source("two_h100.json", local_rank=local_rank, cvd=cvd)
    src.sample(time.time())
    assert sink.hardware["gpu_rank_index"] == expected
    assert sink.hardware["cuda_visible_devices"] == cvd
    assert sampled_gpus(sink) == {str(expected)}


@pytest.mark.parametrize(
    "cvd",
    ["MIG-4e5f6a7b-8c9d-5e0f-a1b2-c3d4e5f6a7b8", "MIG-GPU-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee/1/0"],
)
def test_gpu_mig_forms_map_to_parent_gpu(cvd):
    sink, _, src = gpu_source("a100_mig.json", cvd=cvd)
    src.sample(time.time())
    src.sample(time.time())
    assert sink.hardware["gpu_rank_index"] == 1
    assert sink.hardware["gpu_rank_mig_uuid"] == cvd
    # utilisation is not supported with MIG enabled: switched off once, the rest sampled
    assert "gpu.1.utilization" not in sink.names()
    assert sink.series("gpu.1.power") == [250.0, 250.0]
    assert sink.problems == {"gpu_unsupported:1.utilization": 1}


@pytest.mark.parametrize("cvd", ["", "-1", "NoDevFiles"])
def test_gpu_hidden_devices_sample_nothing_but_node_level(cvd):
    sink, _, src = gpu_source("two_h100.json", cvd=cvd)
    src.sample(time.time())
    assert sink.hardware["gpu_rank_index"] is None and sampled_gpus(sink) == set()
    sink, _, src = gpu_source("two_h100.json", cvd=cvd, node_level=True)
    src.sample(time.time())
    assert sampled_gpus(sink) == {"0", "1"}


def test_gpu_unresolvable_cvd_is_reported():
    sink, _, src = gpu_source("two_h100.json", cvd="GPU-deadbeef")
    src.sample(time.time())
    assert sink.hardware["gpu_rank_index"] is None
    assert sink.problems == {"gpu_mapping": 1} and "GPU-deadbeef" in sink.messages["gpu_mapping"]


def test_gpu_unsupported_fields_disabled_once_and_transient_errors_skipped():
    sink, nvml, src = gpu_source("old_gpu_unsupported.json")
    for _ in range(4):
        src.sample(time.time())
    names = sink.names()
    assert "gpu.0.energy" not in names and "gpu.0.memory_clock" not in names
    assert sink.series("gpu.0.sm_clock") == [1733.0] * 4
    assert sink.series("gpu.0.power") == [120.0] * 3  # the first reading failed, the next three did not
    assert sink.problems == {
        "gpu_unsupported:0.energy": 1,
        "gpu_unsupported:0.memory_clock": 1,
        "gpu_field_error:0.power": 1,
    }
    assert nvml.calls[(0, "energy")] == 2  # setup's baseline + the first sample, never again
    assert nvml.calls[(0, "memory_clock")] == 1
    assert sink.hardware["cuda_driver_version"] == "11.4"
    src.stop(time.time())
    assert "gpu_energy_j" not in sink.totals


def test_gpu_no_gpu_fixture():
    sink, _, src = gpu_source("no_gpu.json")
    src.sample(time.time())
    src.stop(time.time())
    assert sink.hardware == {
        "gpus": [],
        "gpu_status": "no GPU: NVMLError_LibraryNotFound: NVML Shared Library Not Found",
    }
    assert sink.samples == [] and sink.problems == {} and sink.totals == {}


def test_gpu_zero_devices():
    sink, nvml = MemorySink(), FakeNvml({"devices": []})
    GpuSource(sink, 0, True, nvml=nvml).setup()
    assert sink.hardware["gpu_status"] == "no GPU: NVML reports 0 devices"


def test_gpu_real_pynvml_without_gpu_degrades():
    """On this machine (no driver) the real pynvml path reports 'no GPU' in hardware and samples nothing."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML; see test_gpu_real.py")
    sink = MemorySink()
    src = GpuSource(sink, 0, True)
    src.setup()
    src.sample(time.time())
    src.stop(time.time())
    assert sink.hardware["gpus"] == [] and sink.hardware["gpu_status"].startswith("no GPU: NVMLError")
    assert sink.samples == [] and sink.problems == {}


def test_gpu_without_pynvml_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    sink = MemorySink()
    src = GpuSource(sink, 0, True)
    src.setup()
    src.sample(time.time())
    src.stop(time.time())
    assert sink.hardware["gpu_status"].startswith("no GPU: nvidia-ml-py is not installed")
    assert sink.samples == [] and sink.problems == {}


# ---- RAPL ---------------------------------------------------------------------------------------------------
def make_zone(root: Path, zone: str, name: str, energy: int, max_range: int = 262143328850) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def test_rapl_delta_wraps():
    assert rapl_delta(100, 250, 1000) == 150
    assert rapl_delta(900, 50, 1000) == 150


def test_rapl_zones_and_wraparound(tmp_path):
    pkg0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    dram0 = make_zone(tmp_path, "intel-rapl:0:1", "dram", 5_000_000)
    pkg1 = make_zone(tmp_path, "intel-rapl:1", "package-1", 999_000_000, max_range=1_000_000_000)
    make_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 0)  # the MMIO duplicate of package-0: ignored
    assert [n for n, _ in rapl_zones(str(tmp_path))] == ["package-0", "package-0-dram", "package-1"]
    sink = MemorySink()
    src = RaplSource(sink, str(tmp_path))
    src.setup()
    assert sink.hardware == {
        "rapl_status": "ok",
        "rapl_domains": ["package-0", "package-0-dram", "package-1"],
    }
    (pkg0 / "energy_uj").write_text("31000000\n")  # +30 J
    (dram0 / "energy_uj").write_text("7000000\n")  # +2 J
    (pkg1 / "energy_uj").write_text("4000000\n")  # wrapped: +1 J then +4 J
    time.sleep(0.01)
    src.sample(time.time())
    (pkg0 / "energy_uj").write_text("41000000\n")
    src.sample(time.time())
    assert sink.series("rapl.package-0.energy") == pytest.approx([30.0, 40.0])
    assert sink.series("rapl.package-0-dram.energy") == pytest.approx([2.0, 2.0])
    assert sink.series("rapl.package-1.energy") == pytest.approx([5.0, 5.0])
    assert sink.units()["rapl.package-0.energy"] == "J" and sink.units()["rapl.package-0.power"] == "W"
    assert all(v >= 0 for v in sink.series("rapl.package-0.power"))
    src.stop(time.time())
    assert sink.totals["rapl_energy_j"] == pytest.approx(
        {"package-0": 40.0, "package-0-dram": 2.0, "package-1": 5.0}
    )


def test_rapl_absent_and_unreadable(tmp_path):
    sink = MemorySink()
    RaplSource(sink, str(tmp_path / "nothing")).setup()
    assert sink.hardware["rapl_status"].startswith("absent")
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # reading it fails like a root-only file does (tests may run as root)
    sink = MemorySink()
    src = RaplSource(sink, str(tmp_path))
    src.setup()
    src.sample(time.time())
    assert sink.hardware["rapl_status"].startswith("unreadable: IsADirectoryError")
    assert sink.samples == [] and sink.problems == {}


# ---- thread -----------------------------------------------------------------------------------------------
class Broken(Source):
    name = "broken"

    def __init__(self, sink, fail_setup=False):
        super().__init__(sink)
        self.fail_setup = fail_setup
        self.calls = 0

    def setup(self):
        if self.fail_setup:
            raise RuntimeError("no such device")

    def sample(self, t):
        self.calls += 1
        raise ValueError("bad reading")


class Slow(Source):
    name = "slow"
    slow = True

    def __init__(self, sink, setup_s=0.5):
        super().__init__(sink)
        self.setup_s = setup_s
        self.setup_thread = None
        self.setup_done = threading.Event()
        self.stopped = False
        self.skipped_after = None
        self.abandoned = False

    def setup(self):
        self.setup_thread = threading.current_thread().name
        time.sleep(self.setup_s)
        self.sink.update_hardware({"slow": "started"})
        self.setup_done.set()

    def sample(self, t):
        self.emit("slow.value", 1.0, "count", t)

    def stop(self, t):
        self.stopped = True
        self.sink.update_totals({"slow": 1})

    def skipped(self, t, elapsed):
        self.skipped_after = elapsed
        self.sink.update_totals({"slow": "skipped"})

    def abandon(self):
        self.abandoned = True


IDENT0 = Identity(global_rank=0, local_rank=0, world_size=2, node="n1")
IDENT1 = Identity(global_rank=1, local_rank=1, world_size=2, node="n1")


def test_thread_samples_and_stops_quickly():
    sink = MemorySink()
    sampler = SamplerThread(
        sink, IDENT1, interval=0.05, energy=False, nvml=FakeNvml.load("two_h100.json"), environ={}
    )
    assert not sampler.node_level
    sampler.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    assert sampler.stop(timeout=5)
    assert time.monotonic() - t0 < 0.5
    assert not sampler.running
    assert sampler.samples >= 4 and sampler.dropped == 0
    assert len(sink.series("process.rss")) == sampler.samples  # one per tick, the final one included
    assert sampled_gpus(sink) == {"1"} and not any(n.startswith("node.") for n in sink.names())
    assert sampler.cpu_seconds > 0 and sampler.wall_seconds > 0.3 and 0 < sampler.cpu_percent < 100
    assert "gpu_energy_j" in sink.totals
    n = len(sink.samples)
    sampler.sample_once()  # after stop: nothing
    assert len(sink.samples) == n and sampler.stop()


def test_thread_stop_is_immediate_with_long_interval():
    sampler = SamplerThread(MemorySink(), IDENT1, interval=60, gpu=False, energy=False, environ={})
    sampler.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 0.5


def test_sample_once_without_thread():
    sink = MemorySink()
    nvml = FakeNvml.load("two_h100.json")
    sampler = SamplerThread(sink, IDENT0, interval=0, energy=True, nvml=nvml, environ={}, sources=None)
    sampler.start()  # interval 0: no thread
    assert not sampler.running
    sampler.sample_once()
    sampler.sample_once()
    assert len(sink.series("node.memory_used")) == 2 and sampled_gpus(sink) == {"0", "1"}
    assert not any(n.startswith(("energy.", "rapl.")) for n in sink.names())  # energy runs on the thread only
    sampler.stop()
    assert nvml.shutdowns == 1 and "gpu_energy_j" in sink.totals


def test_dropped_samples_counted_and_source_switched_off():
    sink = MemorySink()
    broken = Broken(sink)
    sampler = SamplerThread(sink, IDENT1, interval=0, sources=[HostSource(sink, False), broken], environ={})
    for _ in range(12):
        sampler.sample_once()
    assert sampler.dropped == 10 and broken.calls == 10
    assert (
        sink.problems["sample_dropped"] == 10 and "ValueError: bad reading" in sink.messages["sample_dropped"]
    )
    assert sink.problems["broken_unavailable"] == 1
    assert len(sink.series("process.rss")) == 12  # the healthy source went on
    sampler.stop()


def test_setup_failure_reported_once_others_go_on():
    sink = MemorySink()
    sampler = SamplerThread(
        sink,
        IDENT1,
        interval=0.02,
        sources=[Broken(sink, fail_setup=True), HostSource(sink, False)],
        environ={},
    )
    sampler.start()
    time.sleep(0.15)
    sampler.stop()
    assert sink.problems == {"broken_unavailable": 1}
    assert "RuntimeError: no such device" in sink.messages["broken_unavailable"]
    assert sampler.dropped == 0 and len(sink.series("process.rss")) >= 3


def test_slow_source_set_up_on_the_thread_not_the_caller():
    sink = MemorySink()
    slow = Slow(sink)
    sampler = SamplerThread(sink, IDENT0, interval=0.05, sources=[HostSource(sink, True), slow], environ={})
    t0 = time.monotonic()
    sampler.start()
    sampler.sample_once()  # must not wait for the slow setup
    assert time.monotonic() - t0 < 0.3
    time.sleep(0.8)
    sampler.stop()
    assert slow.setup_thread == "prov4ml-hpc-energy-start" and slow.stopped
    assert sink.totals == {"slow": 1} and len(sink.series("slow.value")) >= 2
    assert slow.skipped_after is None and not slow.abandoned


def test_host_sampled_while_a_slow_source_starts():
    sink = MemorySink()
    sampler = SamplerThread(
        sink, IDENT0, interval=0.05, sources=[HostSource(sink, True), Slow(sink, 0.6)], environ={}
    )
    sampler.start()
    time.sleep(0.5)
    n = len(sink.series("process.rss"))
    sampler.stop()
    assert n >= 6  # one every 0.05 s from the start, not only after the slow setup returned


def test_stop_never_waits_for_a_slow_source_still_starting():
    """A run shorter than codecarbon's start-up: stop() returns at once, records what the run gets instead
    (skipped), and the setup returning later is released without writing anything into the sink."""
    sink = MemorySink()
    slow = Slow(sink, setup_s=1.0)
    sampler = SamplerThread(sink, IDENT0, interval=0.05, sources=[HostSource(sink, True), slow], environ={})
    sampler.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert sampler.stop(timeout=10)
    assert time.monotonic() - t0 < 0.1
    assert sink.totals == {"slow": "skipped"} and 0.15 < slow.skipped_after < 1.0
    assert not slow.stopped and len(sink.series("process.rss")) >= 3 and sink.problems == {}
    assert slow.setup_done.wait(5) and sampler.wait_ready(5)
    assert slow.abandoned and "slow" not in sink.hardware  # its late write went nowhere
    assert not [t for t in threading.enumerate() if t.name.startswith("prov4ml-hpc-")]


def test_stop_before_a_slow_source_began_never_starts_it():
    sink = MemorySink()
    first, second = Slow(sink, setup_s=0.6), Slow(sink, setup_s=0.0)
    sampler = SamplerThread(sink, IDENT0, interval=0.05, sources=[first, second], environ={})
    sampler.start()
    time.sleep(0.1)
    sampler.stop()
    assert first.setup_done.wait(5) and sampler.wait_ready(5)
    assert first.abandoned and first.skipped_after is not None
    assert second.setup_thread is None and second.skipped_after is not None and not second.abandoned


def test_config_from_environment():
    env = {
        "PROV4ML_HPC_SAMPLE_INTERVAL": "off",
        "PROV4ML_HPC_SAMPLE_GPU": "0",
        "PROV4ML_HPC_SAMPLE_ENERGY": "1",
    }
    s = SamplerThread(MemorySink(), IDENT0, environ=env)
    assert s.interval == 0 and not s.gpu and s.energy
    assert [src.name for src in s.sources] == ["host", "rapl", "energy"]
    s = SamplerThread(MemorySink(), IDENT1, environ={"PROV4ML_HPC_SAMPLE_INTERVAL": "0.25"})
    assert (
        s.interval == 0.25 and s.gpu and [src.name for src in s.sources] == ["host", "gpu"]
    )  # no energy off rank 0
    s = SamplerThread(
        MemorySink(), IDENT0, interval=2, gpu=True, energy=False, environ={"PROV4ML_HPC_SAMPLE_INTERVAL": "0"}
    )
    assert s.interval == 2 and [src.name for src in s.sources] == ["host", "gpu"]  # arguments win over env
    assert SamplerThread(MemorySink(), IDENT0, environ={}).interval == 1.0
    with pytest.raises(ConfigError, match="PROV4ML_HPC_SAMPLE_INTERVAL='fast'"):
        SamplerThread(MemorySink(), IDENT0, environ={"PROV4ML_HPC_SAMPLE_INTERVAL": "fast"})
    with pytest.raises(ConfigError, match="PROV4ML_HPC_SAMPLE_GPU"):
        SamplerThread(MemorySink(), IDENT0, environ={"PROV4ML_HPC_SAMPLE_GPU": "maybe"})


# ---- energy with the real codecarbon offline tracker ------------------------------------------------------
@pytest.mark.slow
def test_energy_real_codecarbon_through_thread(tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)  # codecarbon must write nothing, here or anywhere
    monkeypatch.setenv("PROV4ML_HPC_COUNTRY", "fra")
    sink = MemorySink()
    sampler = SamplerThread(
        sink,
        IDENT0,
        interval=0.5,
        gpu=False,
        energy=True,
        energy_interval=1.0,
        rapl_root=str(tmp_path / "none"),
    )
    t0 = time.monotonic()
    sampler.start()
    assert time.monotonic() - t0 < 0.2  # codecarbon's ~1.2 s start-up is on the sampler thread
    deadline = time.monotonic() + 15
    while "energy.consumed" not in sink.names() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.2)
    assert sampler.stop(timeout=10)
    assert sink.problems == {}, sink.messages
    consumed = sink.series("energy.consumed")
    assert len(consumed) >= 2 and consumed == sorted(consumed) and consumed[-1] > 0
    assert sink.units()["energy.consumed"] == "kWh" and sink.units()["energy.cpu_power"] == "W"
    assert sink.units()["energy.emissions"] == "kg CO2eq"
    totals = sink.totals
    assert totals["energy_kwh"] > 0 and totals["emissions_kg_co2eq"] > 0 and totals["energy_duration_s"] > 1
    assert totals["energy_node"] == "n1" and totals["energy_country_iso_code"] == "FRA"
    assert totals["energy_source"].startswith("codecarbon ")
    assert sink.hardware["codecarbon"]["cpu_count"] >= 1 and sink.hardware["rapl_status"].startswith("absent")
    assert list(tmp_path.iterdir()) == []  # no emissions.csv, no lock file
    assert not [t for t in threading.enumerate() if t.name == "prov4ml-hpc-sampler"]


STOP_EARLY = r"""
import json, os, sys, time
from prov4ml_hpc.job.environment import Identity
from prov4ml_hpc.rank.samplers import MemorySink, SamplerThread
sink = MemorySink()
ident = Identity(global_rank=0, local_rank=0, world_size=1, node="n1")
sampler = SamplerThread(sink, ident, interval=0.5, gpu=False, energy=True, rapl_root=sys.argv[1], environ={})
sampler.start()
time.sleep(0.2)
t0 = time.monotonic()
ok = sampler.stop(timeout=10)
took = time.monotonic() - t0
before = (dict(sink.totals), sorted(sink.names()))
ready = sampler.wait_ready(60)
print(json.dumps({"ok": ok, "took": took, "before": before, "ready": ready, "totals": sink.totals,
                  "hardware": sorted(sink.hardware), "problems": sink.problems}))
"""


@pytest.mark.slow
def test_stop_before_codecarbon_started_is_immediate_and_says_so(tmp_path):
    """A run shorter than codecarbon's start-up (a fresh process: codecarbon caches its hardware detection):
    stop() returns at once, the totals say what the run got, and the late start-up writes nothing."""
    pytest.importorskip("codecarbon")
    import json
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", STOP_EARLY, str(tmp_path / "none")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["ok"] and r["took"] < 0.1, r
    totals, names = r["before"]
    assert totals["energy_source"].startswith("none: sampling stopped 0.")
    assert "before codecarbon's tracker had finished starting" in totals["energy_source"]
    assert "energy_kwh" not in totals and not [n for n in names if n.startswith("energy.")]
    assert r["ready"] and r["totals"] == totals and "codecarbon" not in r["hardware"] and r["problems"] == {}
    assert list(tmp_path.iterdir()) == []  # no emissions.csv, no lock file


def test_energy_missing_codecarbon_reported(monkeypatch):
    monkeypatch.delenv("PROV4ML_HPC_COUNTRY", raising=False)
    monkeypatch.delenv("CODECARBON_LOG_LEVEL", raising=False)
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    sink = MemorySink()
    src = CodeCarbonSource(sink, "n1")
    with pytest.raises(ImportError, match=r"prov4ml-hpc\[energy\]"):
        src.setup()
    assert src.country == "USA" and src.log_level == "error"  # the documented defaults
