"""A rank that raises in a 4-task `srun` job: the other ranks end, the job ends FAILED, the merge finishes.

Before the fix rank 0 imported mpi4py at the end of the run to gather (the script itself not using MPI): MPI_Init
is collective over the step's tasks, so it spun at 100 % CPU in PMPI_Init_thread waiting for the dead rank, deaf
to SIGTERM, for as long as the job was allowed to run.  Now the end of job waits for the rank files (no MPI).
Uses the session's single-node cluster (tests/slurm_fixtures.py).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from slurmcluster import SlurmCluster

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.jobscripts import render_template
from prov4ml_hpc.merge.runfile import read_run_file
from prov4ml_hpc.rank.hook import site_dir

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BODY = """
import os, time
if os.environ["SLURM_PROCID"] == "2":
    raise ValueError("rank 2 fails")
time.sleep(1.0)  # the others end after the failing one
print("done", os.environ["SLURM_PROCID"], flush=True)
"""
LOG = "import prov4ml_hpc as p4\nfor i in range(50):\n    p4.log_metric('loss', 1.0 / (i + 1), step=i)\n"
SCRIPTS = {
    "launcher": LOG + BODY,
    "hook": BODY,  # an unmodified script
    "api": "import prov4ml_hpc as p4\np4.start_run()\n" + LOG + BODY + "p4.end_run()\n",
}
REPO = Path(__file__).resolve().parent.parent
EXPECTED = {f"rank-{r:05d}": schema.STATUS_FAILED if r == 2 else schema.STATUS_COMPLETED for r in range(4)}


@pytest.fixture(autouse=True)
def _slurm_conf(slurm_cluster: SlurmCluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))


def _batch(folder: Path, mode: str) -> str:
    (folder / "train.py").write_text(SCRIPTS[mode])
    python = sys.executable
    lines = [
        "#!/bin/bash",
        "#SBATCH --ntasks=4",
        "#SBATCH --time=5",
        f"#SBATCH --output={folder}/out-%j.txt",
        f"export PROV4ML_HPC_RUN_DIR={folder}/runs",
        "export PROV4ML_HPC_SYSTEM_METRICS=0 PROV4ML_HPC_GATHER_TIMEOUT=20",
        f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
    ]
    if mode == "hook":
        lines.append(f"export PROV4ML_HPC_HOOK=1 PYTHONPATH={site_dir()}:$PYTHONPATH")
    command = [python, "-m", "prov4ml_hpc.run"] if mode == "launcher" else [python]
    lines.append("srun " + " ".join([*command, str(folder / "train.py")]))  # plain srun: no kill-on-bad-exit
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("mode", ["launcher", "hook", "api"])
def test_plain_srun_a_failing_rank_ends_the_job_and_rank0_merges(slurm_cluster, tmp_path, mode):
    job_id = slurm_cluster.submit(_batch(tmp_path, mode), cwd=tmp_path)
    t0 = time.monotonic()
    state = slurm_cluster.wait(job_id, timeout=90)
    out = (tmp_path / f"out-{job_id}.txt").read_text()
    assert state == "FAILED", out
    assert time.monotonic() - t0 < 60, out  # was: running until the time limit
    assert "ValueError: rank 2 fails" in out and sorted(re.findall(r"^done (\d)$", out, re.M)) == [
        "0",
        "1",
        "3",
    ]
    path = tmp_path / "runs" / "experiment" / f"slurm-{job_id}"
    merged = read_run_file(str(path / schema.RUN_FILE))  # written in the job, by rank 0
    assert {stem: a[schema.A_STATUS] for stem, a in merged.ranks.items()} == EXPECTED
    assert (path / schema.PROV_FILE).exists()
    rf = p4.read_rank_file(str(path / "ranks" / "rank-00002.h5"))
    assert rf.attrs[schema.A_STATUS_REASON] == "uncaught ValueError: rank 2 fails"


def test_template_a_failing_rank_then_the_merge_job(slurm_cluster, tmp_path):
    """The shipped template (srun --kill-on-bad-exit): SLURM ends the other ranks; the merge job merges."""
    slow = SCRIPTS["launcher"].replace("time.sleep(1.0)", "time.sleep(30)")
    slow = slow.replace(
        "    raise ValueError", "    time.sleep(3)  # every rank has started\n    raise ValueError"
    )
    (tmp_path / "train.py").write_text(slow)
    script = render_template(
        "single-node",
        command=[sys.executable, str(tmp_path / "train.py")],
        job_name="p4-failing",
        time="5",
        gpus_per_node=0,
        ntasks_per_node=4,
        python=sys.executable,
        run_dir=str(tmp_path / "runs"),
        output=f"{tmp_path}/out-%j.txt",
    )
    job_id = slurm_cluster.submit(script, cwd=tmp_path)
    t0 = time.monotonic()
    assert slurm_cluster.wait(job_id, timeout=90) == "FAILED"
    assert time.monotonic() - t0 < 45  # the others were ended at once, not after their 30 s
    out = (tmp_path / f"out-{job_id}.txt").read_text()
    merge_id = re.search(r"^(\d+)$", out, re.M).group(1)  # sbatch --parsable's answer
    assert slurm_cluster.wait(merge_id, timeout=90) == "COMPLETED"
    path = tmp_path / "runs" / "experiment" / f"slurm-{job_id}"
    merged = read_run_file(str(path / schema.RUN_FILE))
    statuses = {stem: a[schema.A_STATUS] for stem, a in merged.ranks.items()}
    assert statuses["rank-00002"] == schema.STATUS_FAILED
    assert {statuses[f"rank-{r:05d}"] for r in (0, 1, 3)} == {schema.STATUS_CANCELLED}  # closed by SIGTERM
