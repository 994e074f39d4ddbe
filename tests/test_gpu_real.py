"""GPU tier: NVML sampling on a real GPU.  Skipped where nvmlInit() fails (no driver, no GPU).

With torch and CUDA present the GPU is loaded for ~20 s with matmuls and the series must show it; without
torch the sampler still runs on the idle GPU.  Set PROV4ML_HPC_RECORD_NVML=path.json to also write a fixture
of this machine's GPUs in the format of tests/data/nvml/ (for the fake-NVML unit tests).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from prov4ml_hpc.job.environment import Identity
from prov4ml_hpc.rank.samplers import MemorySink, SamplerThread

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

LOAD_SECONDS = float(os.environ.get("PROV4ML_HPC_GPU_LOAD_SECONDS", "20"))


@pytest.fixture(scope="module")
def nvml():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVML here: {type(exc).__name__}: {exc}")
    yield pynvml
    pynvml.nvmlShutdown()


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _load_gpu(torch, seconds: float) -> int:
    """Back-to-back bf16 matmuls on the current device for `seconds`; returns the number of launches."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = (a @ b) * 1e-3
        torch.cuda.synchronize()
        n += 20
    return n


def test_real_gpu_sampling(nvml):
    torch = _torch_cuda()
    sink = MemorySink()
    sampler = SamplerThread(sink, Identity(local_rank=0), interval=0.5, gpu=True, energy=False)
    sampler.start()
    time.sleep(1.5)
    if torch is not None:
        launches = _load_gpu(torch, LOAD_SECONDS)
        assert launches > 0
    else:
        time.sleep(3)
    assert sampler.stop(timeout=10)
    hw = sink.hardware
    assert hw["gpu_status"] == "ok" and hw["gpus"] and hw["nvidia_driver_version"]
    idx = hw["gpu_rank_index"]
    assert idx is not None and hw["gpu_rank_uuid"].startswith(("GPU-", "MIG-"))
    p = f"gpu.{idx}."
    util, power, energy = sink.series(p + "utilization"), sink.series(p + "power"), sink.series(p + "energy")
    print(
        f"\n{len(util)} samples of {hw['gpus'][0]['name']}: util max {max(util, default=None)} %, "
        f"power max {max(power, default=None)} W, energy {energy[-1] if energy else None} J, "
        f"sampler CPU {sampler.cpu_percent:.2f} % of a core, problems {sink.problems}"
    )
    assert len(util) >= 5 and all(0 <= u <= 100 for u in util)
    assert len(power) >= 5 and all(5 < w < 2000 for w in power)
    assert len(energy) >= 5 and energy == sorted(energy) and energy[0] >= 0
    assert all(0 < t < 120 for t in sink.series(p + "temperature"))
    mem_used, mem_total = sink.series(p + "memory_used"), sink.series(p + "memory_total")
    assert all(0 <= u <= t for u, t in zip(mem_used, mem_total, strict=True))
    assert sink.totals["gpu_energy_j"][hw["gpu_rank_uuid"]] == pytest.approx(energy[-1])
    if torch is not None:
        assert max(util) >= 50, util
        mean_power = (energy[-1] - energy[0]) / (LOAD_SECONDS + 1)
        assert max(power) > min(power) and mean_power > 30, (power, mean_power)
        # the energy counter and the integrated power agree within a factor of two
        assert 0.5 < energy[-1] / (sum(power) * 0.5) < 2.0, (energy[-1], sum(power) * 0.5)
    unsupported = [r for r in sink.problems if r.startswith("gpu_unsupported:")]
    assert (
        f"gpu_unsupported:{idx}.power" not in unsupported
        and f"gpu_unsupported:{idx}.energy" not in unsupported
    )
    path = os.environ.get("PROV4ML_HPC_RECORD_NVML")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(record_fixture(nvml), fh, indent=2)


def record_fixture(nvml) -> dict:
    """Describe this machine's GPUs in the fixture format of tests/data/nvml/ (fields it lacks: unsupported)."""

    def ask(fn, *args):
        try:
            return fn(*args), None
        except nvml.NVMLError_NotSupported:
            return None, "unsupported"
        except nvml.NVMLError:
            return None, "error"

    devices = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        dev: dict = {"uuid": nvml.nvmlDeviceGetUUID(h), "name": nvml.nvmlDeviceGetName(h), "unsupported": []}
        dev["pci_bus_id"] = str(nvml.nvmlDeviceGetPciInfo(h).busId)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        dev["memory"] = {"used": int(mem.used), "total": int(mem.total)}
        for key, fn, args, conv in (
            (
                "utilization",
                nvml.nvmlDeviceGetUtilizationRates,
                (),
                lambda u: {"gpu": u.gpu, "memory": u.memory},
            ),
            ("power", nvml.nvmlDeviceGetPowerUsage, (), int),
            ("temperature", nvml.nvmlDeviceGetTemperature, (nvml.NVML_TEMPERATURE_GPU,), int),
            ("sm_clock", nvml.nvmlDeviceGetClockInfo, (nvml.NVML_CLOCK_SM,), int),
            ("memory_clock", nvml.nvmlDeviceGetClockInfo, (nvml.NVML_CLOCK_MEM,), int),
            ("throttle_reasons", nvml.nvmlDeviceGetCurrentClocksEventReasons, (), int),
            ("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, (), int),
        ):
            value, problem = ask(fn, h, *args)
            if problem:
                dev["unsupported"].append(key)
            else:
                dev[
                    {"power": "power_mw", "temperature": "temperature_c", "energy": "energy_mj"}.get(key, key)
                ] = conv(value)
        dev["clocks_mhz"] = {"sm": dev.pop("sm_clock", 0), "mem": dev.pop("memory_clock", 0)}
        dev["energy_mj_step"] = dev.get("power_mw", 0)  # about one second of energy per reading
        devices.append(dev)
    return {
        "description": "recorded by tests/test_gpu_real.py",
        "driver_version": str(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": int(nvml.nvmlSystemGetCudaDriverVersion()),
        "nvml_version": str(nvml.nvmlSystemGetNVMLVersion()),
        "devices": devices,
    }
