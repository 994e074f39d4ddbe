"""The in-job end of job without MPI (merge/gather.py) and the MPI abort on an uncaught exception, with real rank
files, real processes and real `mpiexec` (MPICH).

Before the fix, rank 0 imported mpi4py at the end of the run: MPI_Init is collective, so with one rank dead it
waited forever (until MPIEXEC_TIMEOUT under mpiexec; forever, deaf to SIGTERM, under srun); and a plain-API MPI
job whose rank raised while the others waited in a collective hung until its time limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import clean_env, run_mpi
from helpers_mpi import make_rank, run_dir

import prov4ml_hpc as p4
from prov4ml_hpc.merge import gather

HOLD_OPEN = """
import sys, time
import prov4ml_hpc as p4
p4.start_run("exp", sys.argv[1], run_id="m1", system_metrics=False, gather=False, flush_interval=0.05,
             environ={"PMI_RANK": sys.argv[2], "PMI_SIZE": "4"})
p4.log_metric("x", 1.0)
print("open", flush=True)
time.sleep(float(sys.argv[3]))
p4.end_run()
"""


def _hold_open(tmp_path, root: str, rank: int, seconds: float) -> subprocess.Popen:
    script = tmp_path / "hold.py"
    script.write_text(HOLD_OPEN)
    proc = subprocess.Popen(
        [sys.executable, str(script), root, str(rank), str(seconds)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "open"
    return proc


def _paths(root: str, ranks) -> list[str]:
    return [os.path.join(run_dir(root), "ranks", f"rank-{r:05d}.h5") for r in ranks]


def test_waits_for_a_rank_still_writing_then_sees_every_file_closed(tmp_path, run_root):
    for rank in (1, 2):
        make_rank(run_root, rank, 4)
    proc = _hold_open(tmp_path, run_root, 3, 1.0)
    looks: list[float] = []

    def counted(seconds: float) -> None:
        looks.append(seconds)
        time.sleep(seconds)

    try:
        t0 = time.monotonic()
        closed, pending = gather.wait_for_closed(_paths(run_root, (1, 2, 3)), 30, sleep=counted)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert pending == [] and set(closed.values()) == {"completed"} and len(closed) == 3
    assert 0.5 < elapsed < 20
    # no busy polling: sleeps grow from FIRST_POLL to MAX_POLL
    assert looks[0] == gather.FIRST_POLL and max(looks) <= gather.MAX_POLL and len(looks) < 5 + elapsed / 0.5


def test_gives_up_at_the_timeout_naming_what_is_still_open(tmp_path, run_root):
    make_rank(run_root, 1, 4)
    proc = _hold_open(tmp_path, run_root, 2, 30)
    try:
        t0 = time.monotonic()
        closed, pending = gather.wait_for_closed(_paths(run_root, (1, 2, 3)), 0.6)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert list(closed) == _paths(run_root, (1,)) and pending == _paths(run_root, (2, 3))  # 3: never created
    assert 0.5 < elapsed < 3


def test_rank0_merges_once_every_file_is_closed_others_never_wait(run_root, monkeypatch):
    monkeypatch.setenv("PROV4ML_HPC_GATHER_TIMEOUT", "10")
    for rank in (1, 2):
        t0 = time.monotonic()
        run = p4.start_run(
            "exp",
            run_root,
            run_id="m1",
            system_metrics=False,
            environ={"PMI_RANK": str(rank), "PMI_SIZE": "3"},
        )
        p4.log_metric("x", float(rank))
        p4.end_run(status="failed" if rank == 2 else None)
        assert time.monotonic() - t0 < 5 and not os.path.exists(os.path.join(run.run_dir, "run.h5"))
    run = p4.start_run(
        "exp", run_root, run_id="m1", system_metrics=False, environ={"PMI_RANK": "0", "PMI_SIZE": "3"}
    )
    p4.log_metric("x", 0.0)
    assert p4.end_run() == "completed"
    assert os.path.exists(os.path.join(run.run_dir, "run.h5")) and os.path.exists(
        os.path.join(run.run_dir, "provenance.json")
    )
    from prov4ml_hpc.merge.runfile import read_run_file

    merged = read_run_file(os.path.join(run.run_dir, "run.h5"))
    assert {stem: a["status"] for stem, a in merged.ranks.items()} == {
        "rank-00000": "completed",
        "rank-00001": "completed",
        "rank-00002": "failed",
    }


FAILING = """
import os, time
import prov4ml_hpc as p4
for i in range(50):
    p4.log_metric("loss", 1.0 / (i + 1), step=i)
if os.environ["PMI_RANK"] == "2":
    raise ValueError("rank 2 fails")
time.sleep(0.5)
print("done", os.environ["PMI_RANK"], flush=True)
"""


@pytest.mark.mpi
def test_mpiexec_a_failing_rank_under_the_launcher_does_not_hang_and_rank0_merges(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING)
    root = str(tmp_path / "runs")
    env = clean_env(PROV4ML_HPC_GATHER_TIMEOUT="20")
    t0 = time.monotonic()
    args = ["-m", "prov4ml_hpc.run", "--run-dir", root, "--run-id", "j", str(script)]
    proc = run_mpi(4, args, env=env, timeout=60, check=False)
    seconds = time.monotonic() - t0
    assert proc.returncode != 0 and seconds < 30, proc.stderr  # was: until MPIEXEC_TIMEOUT
    assert (
        "APPLICATION TIMED OUT" not in proc.stdout + proc.stderr and "ValueError: rank 2 fails" in proc.stderr
    )
    assert sorted(proc.stdout.split()) == ["0", "1", "3", "done", "done", "done"]
    d = os.path.join(root, "experiment", "j")
    from prov4ml_hpc.merge.runfile import read_run_file

    merged = read_run_file(os.path.join(d, "run.h5"))  # the in-job merge, by rank 0
    assert {stem: a["status"] for stem, a in merged.ranks.items()} == {
        "rank-00000": "completed",
        "rank-00001": "completed",
        "rank-00002": "failed",
        "rank-00003": "completed",
    }


COLLECTIVE = """
import sys, time
from mpi4py import MPI
import prov4ml_hpc as p4
comm = MPI.COMM_WORLD
p4.start_run("exp", sys.argv[1], run_id="coll", system_metrics=False, flush_interval=0.05)
for i in range(100):
    p4.log_metric("x", float(i), step=i)
comm.Barrier()
time.sleep(0.5)  # every rank flushed its 100 rows
if comm.Get_rank() == 1:
    raise RuntimeError("rank 1 fails before the collective")
comm.Barrier()  # the others wait here for rank 1
p4.end_run()
"""


def _collective(tmp_path, abort: str) -> tuple[subprocess.CompletedProcess, float, dict]:
    script = tmp_path / "coll.py"
    script.write_text(COLLECTIVE)
    root = str(tmp_path / "runs")
    env = clean_env(PROV4ML_HPC_MPI_ABORT=abort, MPIEXEC_TIMEOUT="12")
    t0 = time.monotonic()
    proc = run_mpi(3, [str(script), root], env=env, timeout=12, check=False)
    seconds = time.monotonic() - t0
    ranks = {}
    for r in range(3):
        rf = p4.read_rank_file(os.path.join(root, "exp", "coll", "ranks", f"rank-{r:05d}.h5"))
        ranks[r] = (rf.status, rf.nrows)
    return proc, seconds, ranks


@pytest.mark.mpi
def test_mpiexec_plain_api_uncaught_exception_aborts_the_world(tmp_path):
    proc, seconds, ranks = _collective(tmp_path, "1")
    assert proc.returncode != 0 and "rank 1 fails before the collective" in proc.stderr
    out = proc.stdout + proc.stderr
    assert seconds < 11 and "MPI_Abort" in out and "APPLICATION TIMED OUT" not in out
    assert ranks == {0: ("running", 100), 1: ("failed", 100), 2: ("running", 100)}  # 0, 2: partial, rows kept


@pytest.mark.mpi
def test_mpiexec_plain_api_abort_opt_out_leaves_the_job_to_its_time_limit(tmp_path):
    """PROV4ML_HPC_MPI_ABORT=0: the job hangs as an MPI program does, here until MPIEXEC_TIMEOUT."""
    proc, seconds, ranks = _collective(tmp_path, "0")
    assert proc.returncode != 0 and "rank 1 fails before the collective" in proc.stderr
    out = proc.stdout + proc.stderr
    assert seconds >= 11 and "APPLICATION TIMED OUT" in out and "MPI_Abort" not in out
    assert ranks == {0: ("running", 100), 1: ("failed", 100), 2: ("running", 100)}
