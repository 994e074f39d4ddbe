"""Merge throughput and memory: R rank files x S series x V values, written by the real recorder, then merged.

Generation runs in worker processes (the recorder's own hot path, one call per value); the merge runs in this
process, so its peak RSS (resource.getrusage, this process only) is the merge's.  Printed: values, seconds,
values/s, peak RSS, sizes of the rank files and of run.h5 / provenance.json, and the ratio of the merge speed
to a baseline measured in the same run: a plain read of every rank file's rows (h5py, same blocks).

    python benchmarks/bench_merge.py --small              # 4 ranks x 8 series x 50,000 values
    python benchmarks/bench_merge.py                      # 64 x 8 x 250,000 = 128 M values (needs ~8 GB disk)
    python benchmarks/bench_merge.py --dir /scratch/b --keep
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prov4ml_hpc as p4  # noqa: E402
from prov4ml_hpc.merge import merge_run  # noqa: E402
from prov4ml_hpc.merge.reader import read_rank_file  # noqa: E402


def write_rank(args: tuple[str, int, int, int, int]) -> int:
    root, rank, world, nseries, nvalues = args
    run = p4.start_run(
        "bench",
        root,
        run_id="merge",
        system_metrics=False,
        gather=False,
        buffer_rows=262144,
        environ={"PMI_RANK": str(rank), "PMI_SIZE": str(world)},
    )
    log = run.recorder.log_metric
    names = [f"metric_{k}" for k in range(nseries)]
    for step in range(nvalues):
        v = step * 1e-3 + rank
        for name in names:
            log(name, v, step, "training")
    p4.end_run()
    return rank


def du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--values", type=int, default=250_000)
    ap.add_argument("--small", action="store_true", help="4 ranks x 8 series x 50,000 values")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.small:
        a.ranks, a.series, a.values = 4, 8, 50_000
    root = a.dir or tempfile.mkdtemp(prefix="bench-merge-")
    os.environ["PROV4ML_HPC_SYSTEM_METRICS"] = "0"
    total = a.ranks * a.series * a.values
    print(
        f"generating {a.ranks} ranks x {a.series} series x {a.values:,} values = {total:,} values in {root}"
    )
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        list(
            pool.imap_unordered(write_rank, [(root, r, a.ranks, a.series, a.values) for r in range(a.ranks)])
        )
    gen = time.perf_counter() - t0
    run_dir = os.path.join(root, "bench", "merge")
    rank_bytes = du(os.path.join(run_dir, "ranks"))
    print(
        f"  generated in {gen:.1f}s ({total / gen / 1e6:.2f} M values/s with {a.workers} workers), "
        f"rank files {rank_bytes / 2**20:,.0f} MiB"
    )

    t0 = time.perf_counter()  # baseline: read every row once, nothing else
    rows = 0
    for name in sorted(os.listdir(os.path.join(run_dir, "ranks"))):
        for block in read_rank_file(os.path.join(run_dir, "ranks", name)).iter_rows(1_000_000):
            rows += len(block)
    base = time.perf_counter() - t0
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = merge_run(run_dir, query_slurm=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sec = result.seconds
    print(
        f"baseline read: {rows:,} rows in {base:.2f}s = {rows / base / 1e6:.1f} M values/s "
        f"(peak RSS so far {rss_base:.0f} MiB)"
    )
    print(
        f"merge: {result.values:,} values in {sec:.2f}s = {result.values / sec / 1e6:.2f} M values/s per process "
        f"({base / sec:.2f}x the plain read speed), exit code {result.exit_code}"
    )
    print(f"peak RSS: {rss:.0f} MiB (target <= 512 MiB)")
    for out in result.outputs.values():
        print(f"  {os.path.basename(out)}: {os.path.getsize(out) / 2**20:,.1f} MiB")
    if not a.keep and a.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
