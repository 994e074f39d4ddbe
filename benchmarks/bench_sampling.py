"""Cost of system sampling for a CPU-bound training loop: no sampler vs SamplerThread at 1 s and at 0.1 s.

Each configuration runs the same pure-Python step (about 1 ms, holding the GIL: the worst case for a Python
sampler thread) for --seconds, one after the other in the same process, and samples into an in-memory sink.
Printed per configuration: mean step time, overhead against the baseline measured in this run, the sampler
thread's own CPU (time.thread_time) and the CPU of all other threads (sampler + codecarbon's timers) as a
percentage of one core, and the samples taken.  The baseline runs first and again last; their mean is used.

    python benchmarks/bench_sampling.py --seconds 10
    python benchmarks/bench_sampling.py --seconds 60 --no-energy
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prov4ml_hpc.job.environment import Identity  # noqa: E402
from prov4ml_hpc.rank.samplers import MemorySink, SamplerThread  # noqa: E402


def step(n: int) -> int:
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return acc


def calibrate(target_s: float = 0.001) -> int:
    n = 1000
    while True:
        t0 = time.perf_counter()
        step(n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            return max(1, int(n * target_s / dt))
        n *= 2


def run_loop(n: int, seconds: float) -> tuple[list[float], float, float]:
    """Step times, and (main thread CPU, process CPU) seconds over the loop."""
    times: list[float] = []
    cpu_main0, cpu_proc0 = time.thread_time(), time.process_time()
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        step(n)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= end:
            break
    return times, time.thread_time() - cpu_main0, time.process_time() - cpu_proc0


def measure(n: int, interval: float | None, seconds: float, args: argparse.Namespace) -> dict:
    """One configuration for `seconds`: interval None = no sampler."""
    out: dict = {"ready_s": 0.0, "samples": 0, "sampler_cpu": 0.0, "dropped": 0, "series": 0, "problems": {}}
    sampler = None
    if interval is not None:
        sink = MemorySink()
        ident = Identity(global_rank=0, local_rank=0, world_size=1)  # node-level: host + node + GPU + energy
        sampler = SamplerThread(
            sink, ident, interval=interval, gpu=not args.no_gpu, energy=not args.no_energy, environ={}
        )
        t0 = time.monotonic()
        sampler.start()
        sampler.wait_ready(60)  # codecarbon start-up (~1.2 s) happens here, on the sampler thread
        out["ready_s"] = time.monotonic() - t0
        time.sleep(args.warmup)
        cpu0, samples0 = sampler.cpu_seconds, sampler.samples
    wall0 = time.monotonic()
    out["times"], out["main_cpu"], out["proc_cpu"] = run_loop(n, seconds)
    out["wall"] = time.monotonic() - wall0
    if sampler is not None:
        out["sampler_cpu"], out["samples"] = sampler.cpu_seconds - cpu0, sampler.samples - samples0
        sampler.stop()
        out["dropped"], out["series"], out["problems"] = (
            sampler.dropped,
            len(sink.names()),
            dict(sink.problems),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seconds", type=float, default=60.0, help="measured time of each configuration (default 60)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleave the configurations in this many rounds")
    ap.add_argument("--no-energy", action="store_true", help="leave codecarbon and RAPL out")
    ap.add_argument("--no-gpu", action="store_true", help="leave NVML out")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds after set-up before measuring")
    args = ap.parse_args()

    n = calibrate()
    configs: list[tuple[str, float | None]] = [
        ("no sampler", None),
        ("sampler 1 s", 1.0),
        ("sampler 0.1 s", 0.1),
    ]
    print(
        f"step: {n} iterations (~1 ms); {args.seconds:g} s per configuration in {args.rounds} interleaved rounds; "
        f"energy={not args.no_energy} gpu={not args.no_gpu}; python {sys.version.split()[0]}"
    )
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for _ in range(args.rounds):
        for name, interval in configs:
            runs[name].append(measure(n, interval, args.seconds / args.rounds, args))

    def total(name: str, key: str) -> float:
        return sum(r[key] for r in runs[name])

    def steps(name: str) -> list[float]:
        return [t for r in runs[name] for t in r["times"]]

    base_mean = statistics.fmean(steps("no sampler"))
    base_cpu = total("no sampler", "main_cpu") / len(steps("no sampler"))
    print(
        f"{'configuration':15} {'steps':>7} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'wall ovh':>9} "
        f"{'CPU/step ovh':>12} {'sampler CPU':>12} {'all thr CPU':>12} {'samples':>8} {'ms/sample':>9}"
    )
    for name, _ in configs:
        times = steps(name)
        mean, q = statistics.fmean(times), statistics.quantiles(times, n=100)
        wall = total(name, "wall")
        cpu_step = total(name, "main_cpu") / len(times)
        other = 100.0 * (total(name, "proc_cpu") - total(name, "main_cpu")) / wall
        samples = total(name, "samples")
        sampler_cpu = total(name, "sampler_cpu")
        print(
            f"{name:15} {len(times):7d} {mean * 1e3:8.3f} {q[49] * 1e3:7.3f} {q[98] * 1e3:7.3f} "
            f"{100.0 * (mean / base_mean - 1):+8.2f}% {100.0 * (cpu_step / base_cpu - 1):+11.2f}% "
            f"{100.0 * sampler_cpu / wall:11.3f}% {other:11.3f}% {samples:8.0f} "
            f"{1e3 * sampler_cpu / samples if samples else 0.0:9.3f}"
        )
    for name, interval in configs:
        if interval is not None:
            r = runs[name]
            print(
                f"{name}: ready after {statistics.fmean(x['ready_s'] for x in r):.2f} s (mean of {len(r)} starts); "
                f"{r[-1]['series']} series; dropped {sum(x['dropped'] for x in r)}; problems {r[-1]['problems']}"
            )


if __name__ == "__main__":
    main()
