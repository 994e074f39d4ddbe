"""Per-call cost of log_metric, with a list-append floor measured in the same run, and the peers.

    python benchmarks/bench_logging.py                 # 1M calls, RSS at 1M and 20M values
    python benchmarks/bench_logging.py --quick         # 200k calls, RSS at 1M values
    python benchmarks/bench_logging.py --peers-python /path/to/venv/bin/python   # + MLflow, W&B offline

Figures printed: mean and p99 µs/call (p99 from individually timed calls minus the timer's own cost), the
time of end_run, and peak RSS growth.  Each peer runs in a subprocess of the given interpreter with the same
workload; "durable" is the time until its data is on disk (end of its own flush/close).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PROV4ML_HPC_SYSTEM_METRICS", "0")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def floor_append(n: int) -> float:
    buf: list = []
    append = buf.append
    t = time.perf_counter()
    for i in range(n):
        append((i, 0.5))
    return (time.perf_counter() - t) / n * 1e6


def timer_floor(n: int) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2] / 1000


def bench_ours(n: int, root: str) -> dict:
    import prov4ml_hpc as p4

    run = p4.start_run("bench", root, run_id=f"mean-{n}")
    log = p4.log_metric
    t = time.perf_counter()
    for i in range(n):
        log("loss", 0.5, i)
    mean = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    p4.end_run()
    end = time.perf_counter() - t
    # p99: individually timed calls in a second run (same workload)
    run = p4.start_run("bench", root, run_id=f"p99-{n}")
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        log("loss", 0.5, i)
        samples[i] = clock() - t0
    p4.end_run()
    samples.sort()
    return {
        "mean_us": mean,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[int(n * 0.99)] / 1000,
        "max_us": samples[-1] / 1000,
        "end_run_s": end,
        "rows": p4.read_rank_file(run.rank_file).nrows,
    }


def bench_dropin(n: int, root: str) -> dict:
    """The yProv4ML drop-in's log_metric, as yProv4ML scripts call it: a context and a step, no context, and
    a source (what ProvenanceTrackedFunction passes on every call)."""
    import prov4ml_hpc.compat.yprov4ml as yprov4ml

    out = {}
    for shape in ("context", "no_context", "source"):
        yprov4ml.start_run("bench", provenance_save_dir=root, use_run_id=f"dropin-{shape}-{n}")
        log = yprov4ml.log_metric
        t = time.perf_counter()
        if shape == "context":
            for i in range(n):
                log("loss", 0.5, context="Training", step=i)
        elif shape == "no_context":
            for i in range(n):
                log("loss", 0.5, step=i)
        else:
            for i in range(n):
                log("loss", 0.5, context="Training", step=i, source="MSELoss")
        out[shape] = (time.perf_counter() - t) / n * 1e6
        yprov4ml.end_run()
    return out


YPROV4ML_CODE = """
import os, tempfile, time
os.chdir(tempfile.mkdtemp())
import yprov4ml
yprov4ml.start_run('bench', provenance_save_dir='prov', collect_all_processes=True)
t = time.perf_counter()
for i in range(N): yprov4ml.log_metric('loss', 0.5, context='Training', step=i)
per = (time.perf_counter() - t) / N * 1e6
print(per)
"""


def bench_yprov4ml(python: str, n: int) -> dict:
    """The real yProv4ML's log_metric in the interpreter given (3.2.8 needs Python >= 3.12 and torch)."""
    proc = subprocess.run(
        [python, "-c", f"N = {n}\n" + YPROV4ML_CODE], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return {"mean_us": float(proc.stdout.split()[-1])}


def rss_growth(n: int, root: str) -> float:
    """Peak RSS growth while logging n values (in a fresh interpreter so earlier runs do not count)."""
    code = f"""
import os, resource
os.environ['PROV4ML_HPC_SYSTEM_METRICS'] = '0'
import prov4ml_hpc as p4
import numpy, h5py
p4.start_run('bench', {root!r}, run_id='rss-{n}')
p4.log_metric('warm', 1.0)
import time; time.sleep(1.2)
def rss(field='VmRSS:'):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
base = rss(); peak = base
log = p4.log_metric
for i in range({n}):
    log('loss', 0.5, i)
    if i % 100000 == 0:
        peak = max(peak, rss())
p4.end_run()
peak = max(peak, rss('VmHWM:'))  # the peak of this process image (ru_maxrss would include the parent's, kept across exec)
print(peak - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


PEER_CODE = {
    "mlflow-sqlite": """
import mlflow, time, tempfile, os
d = tempfile.mkdtemp(); mlflow.set_tracking_uri('sqlite:///' + os.path.join(d, 'm.db'))
mlflow.start_run()
t = time.perf_counter()
for i in range(N): mlflow.log_metric('loss', 0.5, step=i)
per = (time.perf_counter() - t) / N * 1e6
t = time.perf_counter(); mlflow.end_run(); durable = time.perf_counter() - t
print(per, durable)
""",
    "wandb-offline": """
import os, time, tempfile
os.environ['WANDB_MODE'] = 'offline'; os.environ['WANDB_SILENT'] = 'true'
import wandb
run = wandb.init(project='bench', dir=tempfile.mkdtemp())
t = time.perf_counter()
for i in range(N): run.log({'loss': 0.5}, step=i)
per = (time.perf_counter() - t) / N * 1e6
t = time.perf_counter(); run.finish(); durable = time.perf_counter() - t
print(per, durable)
""",
}


def bench_peer(python: str, name: str, n: int) -> dict:
    code = f"N = {n}\n" + PEER_CODE[name]
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    per, durable = proc.stdout.split()[-2:]
    return {"mean_us": float(per), "durable_s": float(durable)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="200k calls, RSS only at 1M")
    ap.add_argument("--peers-python", default=None, help="interpreter with mlflow and wandb installed")
    ap.add_argument("--peer-calls", type=int, default=20_000)
    ap.add_argument("--yprov4ml-python", default=None, help="interpreter with yprov4ml 3.2.8 installed")
    args = ap.parse_args()
    n = 200_000 if args.quick else args.calls
    root = tempfile.mkdtemp(prefix="p4bench-")
    floor = floor_append(n)
    tfloor = timer_floor(200_000)
    ours = bench_ours(n, root)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"list.append floor:      {floor:.3f} us/call")
    print(
        f"prov4ml-hpc log_metric: mean {ours['mean_us']:.3f} us/call  ({ours['mean_us'] / floor:.1f}x the floor), "
        f"p50 {max(0, ours['p50_us'] - tfloor):.3f} us, p99 {max(0, ours['p99_us'] - tfloor):.3f} us, "
        f"max {ours['max_us']:.0f} us (timer cost {tfloor:.3f} us subtracted), end_run {ours['end_run_s'] * 1000:.1f} ms, "
        f"{ours['rows']} rows on disk"
    )
    dropin = bench_dropin(n, root)
    print(
        "yprov4ml drop-in log_metric: "
        + ", ".join(f"{k} {v:.3f} us/call ({v / ours['mean_us']:.2f}x ours)" for k, v in dropin.items())
    )
    if args.yprov4ml_python:
        real = bench_yprov4ml(args.yprov4ml_python, n)
        if "error" in real:
            print(f"yprov4ml 3.2.8 log_metric: not measured ({real['error']})")
        else:
            print(
                f"yprov4ml 3.2.8 log_metric: mean {real['mean_us']:.3f} us/call "
                f"({real['mean_us'] / ours['mean_us']:.2f}x ours)"
            )
    sizes = [1_000_000] if args.quick else [1_000_000, 20_000_000]
    for size in sizes:
        print(f"peak RSS growth logging {size:>10,} values: {rss_growth(size, root):6.1f} MB")
    results = {"floor_us": floor, "ours": ours, "dropin_us": dropin}
    if args.peers_python:
        print(
            "      yprov4ml: not measured (3.2.8 does not import on Python 3.11: a 3.12-only f-string; "
            "see ../shared/notes/yprov4ml.md: 1.2-1.5 us/call, nothing durable before its flush every 100 "
            "values per series)"
        )
        for name in PEER_CODE:
            r = bench_peer(args.peers_python, name, args.peer_calls)
            results[name] = r
            if "error" in r:
                print(f"{name:>14}: not measured ({r['error']})")
            else:
                print(
                    f"{name:>14}: mean {r['mean_us']:.1f} us/call ({r['mean_us'] / ours['mean_us']:.0f}x ours), "
                    f"durable after {r['durable_s'] * 1000:.0f} ms at end ({args.peer_calls:,} calls)"
                )
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
