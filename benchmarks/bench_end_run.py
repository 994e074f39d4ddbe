"""Cost of ``end_run`` and of the energy sampler's memory, for runs of different lengths, energy on and off.

Each measurement is a fresh Python process (codecarbon's import and start-up happen once per process): it
starts a run in a temporary folder, logs one metric per millisecond for --lengths seconds, then times
``end_run()``.  Printed per run length and energy setting: the median and max ``end_run`` time over --repeats
processes, the process's RSS growth from before ``start_run`` to after ``end_run`` and its peak (VmHWM), and
how long the process took to exit after ``end_run`` returned (interpreter shutdown: Python joins the
worker threads of a codecarbon start-up still under way), and what energy figure the rank file got (the
``energy_source`` total).  The energy-off runs are the
baseline measured in the same session; the ratio column is ``end_run`` time against it.

    python benchmarks/bench_end_run.py
    python benchmarks/bench_end_run.py --lengths 0 0.5 1 2 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[3])

def rss_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0

length = float(sys.argv[1])
import prov4ml_hpc as p4
import numpy, h5py  # the recorder's own imports, paid before the measurement starts
rss0 = rss_kb("VmRSS:")
run = p4.start_run("bench", run_dir=sys.argv[2], run_id="r")
end = time.monotonic() + length
step = 0
while True:
    p4.log_metric("loss", 1.0 / (step + 1), step=step)
    step += 1
    if time.monotonic() >= end:
        break
    time.sleep(0.001)
t0 = time.perf_counter()
p4.end_run()
dt = time.perf_counter() - t0
rss1, hwm = rss_kb("VmRSS:"), rss_kb("VmHWM:")
rf = p4.read_rank_file(os.path.join(sys.argv[2], "bench", "r", "ranks", "rank-00000.h5"))
def attr(name):
    v = rf.attrs.get(name) or {}
    return json.loads(v) if isinstance(v, str) else v
totals, problems = attr("totals"), attr("problems")
print(json.dumps({"end_s": dt, "rss_mb": (rss1 - rss0) / 1024, "hwm_mb": (hwm - rss0) / 1024,
                  "source": totals.get("energy_source"), "kwh": totals.get("energy_kwh"),
                  "problems": sorted(k for k in problems if "energy" in k or "rapl" in k), "t_end": time.time()}), flush=True)
"""


def one(length: float, energy: bool) -> dict:
    env = dict(os.environ, PROV4ML_HPC_SAMPLE_ENERGY="1" if energy else "0", PROV4ML_HPC_SAMPLE_GPU="0")
    env.pop("PROV4ML_HPC_RUN_ID", None)
    with tempfile.TemporaryDirectory(prefix="bench-end-run-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(length), tmp, str(ROOT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        t_exit = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["exit_s"] = t_exit - out["t_end"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 3.0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}; {args.repeats} processes per configuration, interleaved")
    print(
        f"{'run s':>6} {'energy':>6} {'end_run med s':>13} {'max s':>7} {'x off':>6} {'RSS +MB':>8} "
        f"{'peak +MB':>8} {'exit s':>6}  energy figure"
    )
    for length in args.lengths:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for energy in (False, True):
                runs[energy].append(one(length, energy))
        base = statistics.median(r["end_s"] for r in runs[False])
        for energy in (False, True):
            r = runs[energy]
            med = statistics.median(x["end_s"] for x in r)
            last = r[-1]
            figure = (
                f"{last['source']} ({last['kwh']:.3g} kWh)"
                if last["source"] and last["kwh"] is not None
                else (last["source"] or "none")
            )
            if last["problems"]:
                figure += f"; problems {last['problems']}"
            print(
                f"{length:6.1f} {'on' if energy else 'off':>6} {med:13.3f} {max(x['end_s'] for x in r):7.3f} "
                f"{med / base if base else 0:6.1f} {statistics.median(x['rss_mb'] for x in r):8.1f} "
                f"{statistics.median(x['hwm_mb'] for x in r):8.1f} {statistics.median(x['exit_s'] for x in r):6.2f}  "
                f"{figure if energy else '-'}"
            )


if __name__ == "__main__":
    main()
