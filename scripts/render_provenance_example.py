"""Render docs/provenance-example.svg: the PROV graph of a small hand-made run (2 ranks, 1 context, 2 metrics,
1 parameter, 1 artifact), drawn by graphviz from prov4ml-hpc's own DOT export.

Usage: python scripts/render_provenance_example.py [OUT.svg] [--json OUT.json] [--graph rank|node|job]
(docs/provenance-example.svg is the rank level, docs/provenance-example-job.svg the job level)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prov4ml_hpc import schema
from prov4ml_hpc.merge.model import (
    ArtifactRecord,
    ContextSpan,
    JobInfo,
    ParamRecord,
    RankSummary,
    RunSummary,
    SeriesSummary,
)
from prov4ml_hpc.provenance import build_document, write_export, write_prov_json

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_717_236_000.0  # 2024-06-01 10:00 UTC


def example_summary() -> RunSummary:
    """A 2-rank SLURM job on one node: a training context, loss and accuracy, lr, and a model from rank 0."""
    ranks = []
    for g in (0, 1):
        series = [
            SeriesSummary(
                name=name,
                context="training",
                kind=schema.KIND_METRIC,
                global_rank=g,
                count=1000,
                first_step=0,
                last_step=999,
                min=lo,
                max=hi,
                last=lo,
                first_time=T0 + 5,
                last_time=T0 + 600,
                dataset=f"/ranks/{g:05d}/series/training/{name}",
            )
            for name, lo, hi in (("loss", 0.05, 2.3), ("accuracy", 0.1, 0.98))
        ]
        artifacts = []
        if g == 0:
            artifacts.append(
                ArtifactRecord(
                    name="model.pt",
                    kind=schema.REC_MODEL,
                    role="output",
                    context="training",
                    global_rank=0,
                    time=T0 + 601,
                    path="/scratch/alice/mnist/model.pt",
                    sha256="9f2c" + "0" * 60,
                    size=1_234_567,
                    step=999,
                )
            )
        ranks.append(
            RankSummary(
                global_rank=g,
                status=schema.STATUS_COMPLETED,
                file=f"{schema.RANKS_DIR}/{schema.rank_file_name(g)}",
                local_rank=g,
                node="gpu-node-01",
                pid=4100 + g,
                start_time=T0,
                end_time=T0 + 605,
                rows=2000,
                series=series,
                contexts=[ContextSpan("training", T0 + 5, T0 + 600)],
                params=[ParamRecord("lr", 0.01, None, g, T0 + 1)] if g == 0 else [],
                artifacts=artifacts,
            )
        )
    job = JobInfo(
        job_id="123456",
        name="mnist-ddp",
        user="alice",
        partition="gpu",
        nodes=["gpu-node-01"],
        nnodes=1,
        ntasks=2,
        time_limit="00:30:00",
        state="COMPLETED",
        script="#!/bin/bash\n#SBATCH --ntasks=2\nsrun python -m prov4ml_hpc.run train.py\n",
        sources=["env", "scontrol", "sacct"],
    )
    return RunSummary(
        run_id="123456",
        experiment="mnist-ddp",
        run_dir="/scratch/alice/prov4ml_runs/mnist-ddp/123456",
        job=job,
        ranks=ranks,
        world_size=2,
        software_version="0.1.0",
        user="alice",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "provenance-example.svg"))
    parser.add_argument("--json", help="also write the PROV-JSON of the example here")
    parser.add_argument("--graph", choices=("rank", "node", "job"), default="rank", help="detail level")
    args = parser.parse_args()
    doc = build_document(example_summary(), level=args.graph)
    print(write_export(doc, args.out, "svg"))
    if args.json:
        print(write_prov_json(doc, args.json, indent=2))


if __name__ == "__main__":
    main()
