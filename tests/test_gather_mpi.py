"""The in-job end of job and the parallel merge under real `mpiexec` (MPICH): outputs equal a serial post-job
merge, and a rank that never reaches end_run does not hang the others."""

from __future__ import annotations

import os
import time

import pytest
from conftest import clean_env, run_mpi
from helpers_mpi import dump_h5, make_rank, run_dir, sha256_tree

from prov4ml_hpc.merge import merge_run

pytestmark = pytest.mark.mpi

JOB = """
import os, sys, time
import prov4ml_hpc as p4
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
p4.start_run("exp", sys.argv[1], run_id="g1", system_metrics=False, flush_interval=0.1)
p4.log_params({"lr": 0.1, "rank": rank})
for i in range(2000):
    p4.log_metric("loss", 1.0 / (i + 1) + rank, step=i)
    if i % 100 == 0:
        p4.log_metric("acc", i / 2000, step=i, context=p4.VALIDATION)
MPI.COMM_WORLD.Barrier()  # every rank logged everything (rank 0 starts slower: it captures the distributions)
stop = int(os.environ.get("STOP_RANK", "-1"))
if rank == stop:
    time.sleep(float(os.environ.get("STOP_AFTER", "0.5")))  # flushed, then dies without end_run
    os._exit(3)
p4.end_run()
print("ended", rank, flush=True)
"""


def _job(tmp_path, n: int, **env) -> tuple:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    root = str(tmp_path / "runs")
    t0 = time.monotonic()
    proc = run_mpi(n, [str(script), root], env=clean_env(**env), timeout=90, check=False)
    return proc, os.path.join(root, "exp", "g1"), time.monotonic() - t0


def test_in_job_gather_writes_the_same_outputs_as_a_post_job_merge(tmp_path):
    proc, d, _ = _job(tmp_path, 4)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ended") == 4  # lines of different ranks may interleave
    with open(os.path.join(d, "provenance.json"), "rb") as f:
        in_job = f.read()
    in_job_run = dump_h5(os.path.join(d, "run.h5"))
    result = merge_run(d, query_slurm=True)
    assert result.exit_code == 0 and result.ranks == {"completed": [f"rank-{r:05d}" for r in range(4)]}
    with open(result.outputs["provenance.json"], "rb") as f:
        assert f.read() == in_job
    assert dump_h5(result.outputs["run.h5"]) == in_job_run
    assert len(result.summary.ranks) == 4 and result.values == 4 * 2020


def test_a_rank_that_dies_before_end_run_does_not_hang_the_job(tmp_path):
    proc, d, seconds = _job(tmp_path, 4, STOP_RANK="2", PROV4ML_HPC_GATHER_TIMEOUT="3")
    assert proc.returncode != 0 and seconds < 60
    result = merge_run(d, query_slurm=False)
    assert result.ranks["partial"] == ["rank-00002"] and result.exit_code == 1
    assert result.summary.ranks[2].rows > 0


def test_a_rank_that_hangs_past_the_timeout_leaves_the_merge_to_later(tmp_path):
    proc, d, seconds = _job(tmp_path, 3, STOP_RANK="1", STOP_AFTER="8", PROV4ML_HPC_GATHER_TIMEOUT="2")
    assert seconds < 60
    assert "prov4ml-hpc merge" in proc.stderr and "did not close their rank files" in proc.stderr
    assert not os.path.exists(os.path.join(d, "provenance.json"))
    result = merge_run(d, query_slurm=False)
    assert result.ranks == {"completed": ["rank-00000", "rank-00002"], "partial": ["rank-00001"]}


PARALLEL = """
import sys
from mpi4py import MPI
from prov4ml_hpc.merge import merge_run
r = merge_run(sys.argv[1], comm=MPI.COMM_WORLD, query_slurm=False, block_rows=int(sys.argv[2]))
with open(f"{sys.argv[3]}/out-{MPI.COMM_WORLD.Get_rank()}.txt", "w") as f:
    f.write(f"{r.exit_code} {r.values} {r.processes} {sorted(r.ranks)}")
"""


@pytest.mark.parametrize("n", [2, 3])
def test_parallel_merge_equals_serial(tmp_path, n):
    root = str(tmp_path / "runs")

    def logs(p4, rank):
        p4.log_param("seed", rank)
        for i in range(300 + 17 * rank):
            p4.log_metric("loss", (i * 0.37 + rank) % 5.0, step=i // (1 + rank % 2))
            p4.log_metric("lr", 0.1, step=i, context="sched")

    for rank in range(5):
        make_rank(root, rank, 6, logs=logs)
    d = run_dir(root)
    serial = merge_run(d, query_slurm=False, block_rows=100)
    want_run = dump_h5(serial.outputs["run.h5"])
    with open(serial.outputs["provenance.json"], "rb") as f:
        want_prov = f.read()
    ranks_before = sha256_tree(os.path.join(d, "ranks"))
    script = tmp_path / "pmerge.py"
    script.write_text(PARALLEL)
    run_mpi(n, [str(script), d, "100", str(tmp_path)], timeout=90)
    for k in range(n):  # every process returns the same result
        text = (tmp_path / f"out-{k}.txt").read_text()
        assert text == f"1 {serial.values} {n} ['completed', 'missing']"
    assert dump_h5(os.path.join(d, "run.h5")) == want_run
    with open(os.path.join(d, "provenance.json"), "rb") as f:
        assert f.read() == want_prov
    assert sha256_tree(os.path.join(d, "ranks")) == ranks_before
    assert sorted(os.listdir(d)) == ["provenance.json", "ranks", "run.h5"]
