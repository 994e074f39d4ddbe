"""What reading a run costs: ``inspect`` (summarize) of an unmerged and of a merged run of R ranks x S series.

The ranks are written by the real recorder in worker processes (8 ranks per node, as 32 nodes for 256 ranks);
then, in this process, ``summarize`` is timed on the rank files, the run is merged, and ``summarize`` is timed on
run.h5.  The baselines, measured in the same run, are what any reader must do at least: open every rank file and
read its attributes (h5py), and open run.h5 and list its datasets.

    python benchmarks/bench_inspect.py                     # 256 ranks x 8 series x 2,000 values
    python benchmarks/bench_inspect.py --ranks 1024        # the issue's size
    python benchmarks/bench_inspect.py --dir /tmp/b --keep # keep the run; --reuse DIR times an existing one
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PROV4ML_HPC_SYSTEM_METRICS", "0")

PER_NODE = 8


def write_rank(args: tuple[str, int, int, int, int]) -> int:
    import prov4ml_hpc as p4

    root, rank, world, nseries, nvalues = args
    env = {
        "PMI_RANK": str(rank),
        "PMI_SIZE": str(world),
        "PMI_LOCAL_RANK": str(rank % PER_NODE),
        "SLURMD_NODENAME": f"node{rank // PER_NODE:04d}",
    }
    run = p4.start_run("bench", root, run_id="inspect", system_metrics=False, gather=False, environ=env)
    log = run.recorder.log_metric
    names = [f"metric_{k}" for k in range(nseries)]
    for step in range(nvalues):
        for k, name in enumerate(names):
            log(name, step * 1e-3 + rank + k, step, "training")
    p4.log_params({"lr": 0.01, "rank": rank})
    p4.end_run()
    return rank


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def baseline_rank_attrs(run_dir: str) -> None:
    import h5py

    ranks = os.path.join(run_dir, "ranks")
    for name in sorted(os.listdir(ranks)):
        with h5py.File(os.path.join(ranks, name), "r", locking=False) as f:
            dict(f.attrs.items())


def baseline_run_file(run_dir: str) -> None:
    import h5py

    with h5py.File(os.path.join(run_dir, "run.h5"), "r", locking=False) as f:
        names: list[str] = []
        f.visit(names.append)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=256)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--values", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the median of this many runs")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--reuse", default=None, help="an existing run directory (unmerged) to time")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()

    import prov4ml_hpc
    from prov4ml_hpc.merge import merge_run
    from prov4ml_hpc.view.inspect import summarize

    print(f"prov4ml_hpc from {os.path.dirname(prov4ml_hpc.__file__)}")
    if a.reuse:
        run_dir, root = a.reuse, None
        for name in ("run.h5", "provenance.json"):
            if os.path.exists(os.path.join(run_dir, name)):
                os.unlink(os.path.join(run_dir, name))
    else:
        root = a.dir or tempfile.mkdtemp(prefix="bench-inspect-")
        total = a.ranks * a.series * a.values
        print(
            f"writing {a.ranks} ranks x {a.series} series x {a.values:,} values = {total:,} values in {root}"
        )
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(a.workers) as pool:
            jobs = [(root, r, a.ranks, a.series, a.values) for r in range(a.ranks)]
            list(pool.imap_unordered(write_rank, jobs))
        print(f"  written in {time.perf_counter() - t0:.1f} s")
        run_dir = os.path.join(root, "bench", "inspect")

    base_r, _ = timed(lambda: baseline_rank_attrs(run_dir), a.repeat)
    un, d = timed(lambda: summarize(run_dir), a.repeat)
    print(f"baseline: open {a.ranks} rank files and read their attributes: {base_r:.3f} s")
    print(
        f"inspect, unmerged ({d['state']}, {d['source']}): {un:.3f} s "
        f"({un / base_r:.1f}x the baseline; {un / a.ranks * 1e3:.2f} ms per rank)"
    )
    t0 = time.perf_counter()
    merge_run(run_dir, query_slurm=False)
    print(f"merge: {time.perf_counter() - t0:.2f} s")
    base_m, _ = timed(lambda: baseline_run_file(run_dir), a.repeat)
    me, d = timed(lambda: summarize(run_dir), a.repeat)
    print(f"baseline: open run.h5 and list every object in it: {base_m:.3f} s")
    print(
        f"inspect, merged ({d['state']}, {d['source']}): {me:.3f} s "
        f"({me / base_m:.1f}x the baseline; {me / a.ranks * 1e3:.2f} ms per rank)"
    )
    energy = d.get("energy")
    print(f"series rows {len(d['series'])}, ranks {d['ranks']['world_size']}, energy {energy}")
    if root is not None and not a.keep and a.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
