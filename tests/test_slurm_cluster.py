"""The `slurm` tier's smoke tests: a real 4-task srun job on the test cluster, and job_info() on real jobs."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from slurmcluster import SlurmCluster

from prov4ml_hpc.job.environment import slurm_snapshot
from prov4ml_hpc.job.jobinfo import job_info

pytestmark = pytest.mark.slurm

ENV_DUMP = """import os, sys
with open(sys.argv[1], "w") as out:
    for key in sorted(os.environ):
        if key.startswith(("SLURM_", "PMI_", "MPI_LOCALRANKID")):
            out.write(f"{key}={os.environ[key]}\\n")
"""


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def four_task_job(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, str]:
    """A finished 4-task job: (job id, its folder, its script text)."""
    folder = tmp_path_factory.mktemp("four-task-job")
    py = sys.executable
    (folder / "env_dump.py").write_text(ENV_DUMP)
    script = f"""#!/bin/bash
#SBATCH -J p4-smoke
#SBATCH -n 4
#SBATCH -t 5
#SBATCH -o {folder}/out-%j.txt
{py} {folder}/env_dump.py {folder}/env-batch.txt
srun {py} -c 'import os; print(os.environ["PMI_RANK"], os.environ["SLURM_PROCID"])'
srun bash -c '{py} {folder}/env_dump.py {folder}/env-task-$SLURM_PROCID.txt'
"""
    job_id = slurm_cluster.submit(script)
    state = slurm_cluster.wait(job_id, timeout=60)
    assert state == "COMPLETED", slurm_cluster.show_job(job_id)
    return job_id, folder, script


def test_four_rank_srun_job(four_task_job: tuple[str, Path, str]) -> None:
    job_id, folder, _ = four_task_job
    lines = (folder / f"out-{job_id}.txt").read_text().split()
    assert sorted(zip(lines[::2], lines[1::2], strict=True)) == [(str(r), str(r)) for r in range(4)]


def test_rank_variables_in_batch_script_and_srun_tasks(four_task_job: tuple[str, Path, str]) -> None:
    """What environment.detect_identity relies on (see the comment block of tests/slurmcluster.py)."""
    job_id, folder, _ = four_task_job
    batch = _env(folder / "env-batch.txt")
    assert batch["SLURM_JOB_ID"] == job_id
    assert "SLURM_STEP_ID" not in batch and "PMI_RANK" not in batch
    assert (batch["SLURM_PROCID"], batch["SLURM_NTASKS"]) == ("0", "4")
    for rank in range(4):
        task = _env(folder / f"env-task-{rank}.txt")
        assert task["SLURM_STEP_ID"] == "1"  # the second srun of the job
        assert task["PMI_RANK"] == task["SLURM_PROCID"] == task["SLURM_LOCALID"] == str(rank)
        assert task["PMI_SIZE"] == task["SLURM_STEP_NUM_TASKS"] == "4"
        assert "MPI_LOCALRANKID" not in task


def test_job_info_of_a_real_finished_job(
    slurm_cluster: SlurmCluster, four_task_job: tuple[str, Path, str]
) -> None:
    job_id, folder, script = four_task_job
    snap = slurm_snapshot(_env(folder / "env-task-2.txt"))
    info = job_info(snap, job_id, environ=slurm_cluster.full_env())
    assert info.sources == ["env", "scontrol", "batch_script", "sacct-jobcomp"]
    assert info.job_id == job_id and info.name == "p4-smoke"
    assert info.nodes == [slurm_cluster.host]
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0")
    assert info.time_limit == "00:05:00" and info.extra["time_limit_s"] == 300
    assert info.user == "root" and info.partition == "debug" and info.ntasks == 4
    assert info.start is not None and info.end is not None and info.elapsed is not None
    assert info.script == script
    assert info.script_sha256 == hashlib.sha256(script.encode()).hexdigest()


def test_job_info_of_a_failed_job_and_an_unknown_one(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.submit("#!/bin/bash\n#SBATCH -o /dev/null\nexit 3\n")
    assert slurm_cluster.wait(job_id, timeout=60) == "FAILED"
    info = job_info({"job_id": job_id}, environ=slurm_cluster.full_env())
    assert "sacct-jobcomp" in info.sources
    assert (info.state, info.exit_code) == ("FAILED", "3:0")
    unknown = job_info({"job_id": "987654"}, environ=slurm_cluster.full_env())
    assert unknown.sources == ["env"] and unknown.state is None
