"""Size and cost of the PROV graph at each detail level (job, node, rank) for 64/256/1,024 ranks x 20 series.

    python benchmarks/bench_graph.py [--ranks 64,256,1024] [--series 20] [--per-node 4]
        [--yprov-python /path/venv/bin/python --yprov-src /path/to/HPCI-Lab/yProv] [--yprov-timeout 600]

For each size and level it prints records, build time, PROV-JSON write time and size, and the ratio of each against
the rank level measured in the same run (the baseline).  With --yprov-*, it also times yProv's own conversion step
(routes/documents.py prov_to_graph: ProvDocument.deserialize + py2neo subgraph, no Neo4j) on the written file in
that interpreter (yProv pins prov 2.0.0, so it needs its own virtual environment); a conversion past the timeout is
reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from test_provenance import rank  # noqa: E402  (the same synthetic ranks as the unit tests)

from prov4ml_hpc.merge.model import JobInfo, ParamRecord, RunSummary  # noqa: E402
from prov4ml_hpc.provenance import build_document, write_prov_json  # noqa: E402
from prov4ml_hpc.provenance.graph import choose_level  # noqa: E402

LEVELS = ("rank", "node", "job")

# yProv's conversion, run in yProv's own interpreter: the modules that need Neo4j or a config are stubbed
YPROV_CODE = r"""
import sys, time, types
sys.path.insert(0, sys.argv[1])
ext = types.ModuleType("extensions"); ext.neo4j = None; sys.modules["extensions"] = ext
from prov.model import ProvDocument
from routes.documents import prov_to_graph
t0 = time.perf_counter()
with open(sys.argv[2], "rb") as f:
    doc = ProvDocument.deserialize(content=f.read())
t1 = time.perf_counter()
graph = prov_to_graph(doc)
t2 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {len(graph.nodes)} {len(graph.relationships)}")
"""


def summary(n_ranks: int, n_series: int, per_node: int) -> RunSummary:
    r = rank(0, n_series=n_series)
    r.params = [ParamRecord("lr", 0.01, None, 0, 1.7e9), ParamRecord("batch_size", 32, None, 0, 1.7e9)]
    ranks = []
    for g in range(n_ranks):
        rg = dataclasses.replace(r, global_rank=g, node=f"node{g // per_node:04d}", local_rank=g % per_node)
        rg.series = [dataclasses.replace(x, global_rank=g) for x in r.series]
        rg.params = [dataclasses.replace(p, global_rank=g) for p in r.params]
        ranks.append(rg)
    job = JobInfo(job_id="123456", name="bench", user="bob", script="#!/bin/bash\nsrun python train.py\n")
    return RunSummary("bench", "exp", "/tmp/bench", job, ranks, n_ranks, "0.1.0", user="bob")


def yprov(python: str, src: str, path: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            [python, "-c", YPROV_CODE, src, path],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"not done after {timeout:g} s"
    if done.returncode != 0:
        return "failed: " + done.stderr.strip().splitlines()[-1]
    load, convert, nodes, rels = done.stdout.split()
    return f"deserialize {load} s + convert {convert} s -> {nodes} nodes, {rels} relationships"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="64,256,1024")
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--per-node", type=int, default=4)
    ap.add_argument("--yprov-python", default=None)
    ap.add_argument("--yprov-src", default=None)
    ap.add_argument("--yprov-timeout", type=float, default=600.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.ranks.split(",")):
            s = summary(n, args.series, args.per_node)
            print(
                f"\n{n} ranks x {args.series} series, {args.per_node} ranks per node (auto: {choose_level(s)})"
            )
            base = None
            for level in LEVELS:
                t0 = time.perf_counter()
                doc = build_document(s, level=level)
                t1 = time.perf_counter()
                path = os.path.join(tmp, f"{n}-{level}.json")
                write_prov_json(doc, path)
                t2 = time.perf_counter()
                records, size = len(doc.get_records()), os.path.getsize(path)
                base = base or (records, t1 - t0, t2 - t1)
                print(
                    f"  {level:>4}: {records:>7,} records ({records / base[0]:.3f}x rank), build {t1 - t0:6.2f} s "
                    f"({(t1 - t0) / base[1]:.3f}x), write {t2 - t1:6.2f} s ({(t2 - t1) / base[2]:.3f}x), "
                    f"{size / 2**20:6.2f} MiB"
                )
                if args.yprov_python and args.yprov_src:
                    print(
                        f"        yProv: {yprov(args.yprov_python, args.yprov_src, path, args.yprov_timeout)}"
                    )


if __name__ == "__main__":
    main()
