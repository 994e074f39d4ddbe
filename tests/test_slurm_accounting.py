"""Real `sacct` (slurmdbd + MariaDB) on the multi-node test cluster: prov4ml_hpc's sacct parser and job_info on
the output of real jobs — job and steps, states, exit codes, elapsed times, MaxRSS, arrays, cancellation."""

from __future__ import annotations

import sys
import time

import pytest
from slurm_multinode import MultiNodeCluster

from prov4ml_hpc.job.environment import slurm_snapshot
from prov4ml_hpc.job.jobinfo import job_info
from prov4ml_hpc.job.slurm import SACCT_FIELDS, parse_sacct, parse_size, parse_time_limit

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.timeout(240)]

PY = sys.executable
MB = 1024 * 1024


def sacct(cluster: MultiNodeCluster, job_id: str, *extra: str) -> str:
    """`sacct -P -n -j ID -o SACCT_FIELDS` as job_info runs it; stdout."""
    fields = ",".join(SACCT_FIELDS)
    return cluster._run(["sacct", "-P", "-n", "-j", job_id, "-o", fields, *extra], timeout=15).stdout


def wait_recorded(cluster: MultiNodeCluster, job_id: str, state: str, timeout: float = 30) -> dict:
    """Poll sacct until the job's line has its final state and its name.

    slurmctld sends records to slurmdbd a moment late; and for some seconds after a fresh start of the
    cluster, sacct shows a finished job as JobName "allocation" (the name slurmdbd gives a job record it creates
    from a step record that came before the job's own record), then the real name.
    """
    deadline = time.monotonic() + timeout
    parsed: dict = {}
    while time.monotonic() < deadline:
        parsed = parse_sacct(sacct(cluster, job_id))
        if (
            parsed["job"].get("State", "").split(" ")[0] == state
            and parsed["job"].get("JobName") != "allocation"
            and all(step.get("End") not in ("", "Unknown") for step in parsed["steps"].values())
        ):
            return parsed
        time.sleep(0.3)
    raise AssertionError(f"sacct did not record job {job_id} as {state} within {timeout} s: {parsed}")


@pytest.fixture(scope="module")
def steps_job(multinode_cluster, tmp_path_factory):
    """A finished 2-node job (name with a space and a '|') with a memory-hungry step and a failing one."""
    folder = tmp_path_factory.mktemp("acct-steps")
    script = f"""#!/bin/bash
#SBATCH -J "p4 acct|job"
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -t 00:05:00
#SBATCH -o {folder}/out-%j.txt
srun {PY} -c 'import time; block = bytearray(80 * 1024 * 1024); time.sleep(2.5)'
srun -N 2 -n 2 bash -c 'exit 3' || true
env | grep ^SLURM_ > {folder}/env.txt
"""
    job_id = multinode_cluster.submit(script)
    assert multinode_cluster.wait(job_id, timeout=60) == "COMPLETED"
    return job_id, folder, wait_recorded(multinode_cluster, job_id, "COMPLETED")


def test_sacct_job_line(multinode_cluster, steps_job):
    job_id, _, parsed = steps_job
    job = parsed["job"]
    assert [j["JobID"] for j in parsed["jobs"]] == [job_id]
    assert job["JobName"] == "p4 acct|job"  # a '|' in the name does not shift the fields
    assert (job["State"], job["ExitCode"], job["DerivedExitCode"]) == ("COMPLETED", "0:0", "3:0")
    assert (job["NNodes"], job["NodeList"], job["AllocCPUS"]) == ("2", "node[01-02]", "4")
    assert (job["User"], job["Account"], job["QOS"], job["Cluster"], job["Partition"]) == (
        "root",
        "root",
        "normal",
        "prov4ml",
        "debug",
    )
    assert parse_time_limit(job["Timelimit"]) == 300
    assert parse_time_limit(job["Elapsed"]) == int(job["ElapsedRaw"]) >= 2
    assert job["MaxRSS"] == ""  # MaxRSS is a step field: the job line has none


def test_sacct_steps_states_exit_codes_and_maxrss(steps_job):
    _, _, parsed = steps_job
    steps = parsed["steps"]
    assert sorted(steps) == ["0", "1", "batch"]  # no extern step: PrologFlags has no Contain
    assert (steps["batch"]["NodeList"], steps["batch"]["NTasks"], steps["batch"]["State"]) == (
        "node01",
        "1",
        "COMPLETED",
    )
    assert (steps["0"]["JobName"], steps["0"]["NTasks"], steps["0"]["NodeList"]) == (
        PY.rsplit("/", 1)[1],
        "4",
        "node[01-02]",
    )
    assert (steps["0"]["State"], steps["0"]["ExitCode"]) == ("COMPLETED", "0:0")
    assert (
        80 * MB < parse_size(steps["0"]["MaxRSS"]) < 400 * MB
    )  # the 80 MiB block, measured by jobacct_gather
    assert parse_time_limit(steps["0"]["Elapsed"]) >= 2
    assert (steps["1"]["State"], steps["1"]["ExitCode"], steps["1"]["NTasks"]) == ("FAILED", "3:0", "2")


def test_job_info_from_real_accounting(multinode_cluster, steps_job):
    job_id, folder, _ = steps_job
    env = dict(line.split("=", 1) for line in (folder / "env.txt").read_text().splitlines() if "=" in line)
    info = job_info(slurm_snapshot(env), job_id, environ=multinode_cluster.full_env())
    assert info.sources == ["env", "scontrol", "batch_script", "sacct"]
    assert (info.name, info.state, info.exit_code) == ("p4 acct|job", "COMPLETED", "0:0")
    assert (info.account, info.qos, info.cluster) == ("root", "normal", "prov4ml")
    assert info.nodes == ["node01", "node02"] and (info.nnodes, info.ntasks) == (2, 4)
    assert info.extra["derived_exit_code"] == "3:0"
    assert info.start and info.end and info.start[19:] == info.end[19:] != ""  # with the UTC offset
    steps = info.extra["steps"]
    assert {k: (s["state"], s["exitcode"]) for k, s in steps.items()} == {
        "batch": ("COMPLETED", "0:0"),
        "0": ("COMPLETED", "0:0"),
        "1": ("FAILED", "3:0"),
    }
    assert steps["0"]["maxrss_bytes"] == parse_size(steps["0"]["maxrss"]) > 80 * MB
    assert steps["0"]["start"][19:] == info.start[19:]  # step times carry the offset too


def test_cancelled_job_in_accounting(multinode_cluster, tmp_path):
    cluster = multinode_cluster
    job_id = cluster.submit(f"#!/bin/bash\n#SBATCH -N 2\n#SBATCH -o {tmp_path}/out.txt\nsrun sleep 60\n")
    deadline = time.monotonic() + 30
    while "0" not in parse_sacct(sacct(cluster, job_id))["steps"] and time.monotonic() < deadline:
        time.sleep(0.3)  # the srun step runs
    running = job_info({"job_id": job_id}, environ=cluster.full_env())
    assert running.state == "RUNNING" and running.end is None  # EndTime of a running job is its limit's end
    assert running.extra["time_limit_end"] > running.start
    cluster._run(["scancel", job_id])
    assert cluster.wait(job_id, timeout=60) == "CANCELLED"
    parsed = wait_recorded(cluster, job_id, "CANCELLED")
    job, step = parsed["job"], parsed["steps"]["0"]
    assert (job["State"], job["ExitCode"]) == ("CANCELLED by 0", "0:0")  # the job: cancelled by uid 0
    assert (step["State"], step["ExitCode"]) == ("CANCELLED", "0:15")  # its step: ended by signal 15
    info = job_info({"job_id": job_id}, environ=cluster.full_env())
    assert (info.state, info.extra["state_detail"]) == ("CANCELLED", "CANCELLED by 0")
    assert info.end is not None and info.exit_code == "0:0"
    assert info.extra["steps"]["0"]["exitcode"] == "0:15"


def test_array_job_in_accounting(multinode_cluster, tmp_path):
    cluster = multinode_cluster
    array_id = cluster.submit(
        f"#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH -o {tmp_path}/out-%a.txt\nsrun true\n"
    )
    cluster.wait(array_id, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parsed = parse_sacct(sacct(cluster, array_id))
        if [j["State"] for j in parsed["jobs"]] == ["COMPLETED", "COMPLETED"]:
            break
        time.sleep(0.3)
    assert [j["JobID"] for j in parsed["jobs"]] == [f"{array_id}_0", f"{array_id}_1"]
    assert sorted(parsed["steps"]) == ["0", "batch"]  # the steps of the first task: parse_sacct's job
    info = job_info(
        {"job_id": f"{array_id}_1", "array_job_id": array_id, "array_task_id": "1"},
        environ=cluster.full_env(),
    )
    assert "sacct" in info.sources and info.state == "COMPLETED"
    assert (info.array_job_id, info.array_task_id) == (array_id, "1")
    assert set(info.extra["steps"]) == {"0", "batch"}
