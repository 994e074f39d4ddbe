"""The real-SLURM tier: jobs rendered from the shipped templates, launched by `srun` through the launcher or the
import hook, then merged; scancel, time limit, requeue, job arrays and the dependent merge job.

Uses the session's single-node cluster (tests/slurm_fixtures.py).  About 1-2 minutes on 2 cores; the time-limit
test forces a real TIMEOUT with `scontrol update EndTime=now` (SLURM's limit is whole minutes, and slurmctld
checks limits every 30 s) and the requeue test makes the requeued job eligible at once (`StartTime=now`)
instead of SLURM's 2-minute requeue delay.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurmcluster import SlurmCluster

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.jobscripts import render_template

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

TRAIN = """
import os, sys, time
import prov4ml_hpc as p4
p4.log_param("lr", 0.1)
steps = int(sys.argv[1])
if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
    steps = 5  # the requeued attempt finishes quickly
for i in range(steps):
    p4.log_metric("loss", 1.0 / (i + 1), step=i)
    time.sleep(0.02)
print("done", os.environ["SLURM_PROCID"], flush=True)
"""

UNMODIFIED = """
import os, sys, time
total = sum(i * i for i in range(100000))
print("unmodified", os.environ["SLURM_PROCID"], total, flush=True)
"""


def render(folder: Path, *, command: list[str], name: str, template: str = "single-node", **options) -> str:
    opts = {
        "job_name": name,
        "time": "5",
        "gpus_per_node": 0,
        "ntasks_per_node": 4,
        "python": sys.executable,
        "run_dir": str(folder / "runs"),
        "output": f"{folder}/out-%j.txt",
        "merge": False,
        **options,
    }
    return render_template(template, command=command, **opts)


def run_dir(folder: Path, run_id: str) -> Path:
    return folder / "runs" / "experiment" / run_id


def rank_files(path: Path) -> list[str]:
    return sorted(glob.glob(str(path / "ranks" / "*.h5")))


def statuses(path: Path) -> dict[str, str]:
    return {os.path.basename(f): p4.read_rank_file(f).status for f in rank_files(path)}


def wait_for_rows(path: Path, ranks: int, rows: int = 20, timeout: float = 60) -> int:
    """Wait until every rank file holds at least `rows` flushed rows; return the total."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = rank_files(path)
        if len(files) == ranks:
            counts = [p4.read_rank_file(f).nrows for f in files]
            if min(counts) >= rows:
                return sum(counts)
        time.sleep(0.2)
    raise AssertionError(f"the ranks of {path} did not flush {rows} rows within {timeout} s")


@pytest.fixture(autouse=True)
def _slurm_conf(slurm_cluster: SlurmCluster, monkeypatch):
    """conftest strips SLURM_* in every test: give the merge's scontrol/sacct queries the test cluster back."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))


def merge(path: Path):
    from prov4ml_hpc.merge import merge_run

    return merge_run(str(path))


def graph(path: Path) -> dict:
    return json.loads((path / schema.PROV_FILE).read_text())


def scontrol(cluster: SlurmCluster, *args: str) -> None:
    cluster._run(["scontrol", *args])


# ---- a 4-task job through the launcher, merged by the dependent merge job and by merge_run ----------------
@pytest.fixture(scope="module")
def launcher_job(slurm_cluster: SlurmCluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("launcher-job")
    (folder / "train.py").write_text(TRAIN)
    script = render(
        folder, command=[sys.executable, str(folder / "train.py"), "20"], name="p4-launcher", merge=True
    )
    job_id = slurm_cluster.submit(script, cwd=folder)
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED", slurm_cluster.show_job(job_id)
    return job_id, folder, script


def test_dependent_merge_job_runs_by_itself(slurm_cluster, launcher_job):
    job_id, folder, _ = launcher_job
    out = (folder / f"out-{job_id}.txt").read_text()
    merge_id = re.search(r"^(\d+)$", out, re.M).group(1)  # sbatch --parsable's answer in the job's output
    assert slurm_cluster.show_job(merge_id).get("Dependency", "(null)") in (
        "(null)",
        f"afterany:{job_id}(unfulfilled)",
    )
    assert slurm_cluster.wait(merge_id, timeout=90) == "COMPLETED"
    path = run_dir(folder, f"slurm-{job_id}")
    assert (path / schema.PROV_FILE).exists() and (path / schema.RUN_FILE).exists()
    assert "merged" in (folder / f"prov4ml-merge-{merge_id}.out").read_text()


def test_launcher_job_merged_with_job_metadata(slurm_cluster, launcher_job):
    job_id, folder, script = launcher_job
    path = run_dir(folder, f"slurm-{job_id}")
    assert statuses(path) == {f"rank-{r:05d}.h5": schema.STATUS_COMPLETED for r in range(4)}
    result = merge(path)  # again, after the merge job: idempotent
    assert result.exit_code == 0, result.problems
    assert result.values >= 4 * 20  # plus the system samples when they are on
    assert [len(p4.read_rank_file(f).values("loss")) for f in rank_files(path)] == [20] * 4
    g = graph(path)
    (job,) = [a for a in g["activity"].values() if a.get("prov4ml:job_id") == job_id]
    assert job["prov4ml:job_name"] == "p4-launcher"
    assert job["prov4ml:state"] == "COMPLETED"
    ranks = [a for a in g["activity"].values() if "RankProcess" in str(a.get("prov:type"))]
    assert sorted(a["prov4ml:global_rank"]["$"] for a in ranks) == ["0", "1", "2", "3"]
    nodes = {a.get("prov4ml:node") for a in ranks}
    assert nodes == {slurm_cluster.host}
    scripts = [e for e in g["entity"].values() if "JobScript" in str(e.get("prov:type"))]
    assert [e["prov4ml:sha256"] for e in scripts] == [hashlib.sha256(script.encode()).hexdigest()]


# ---- the import hook, the script unchanged ---------------------------------------------------------------
def test_hook_job_with_unmodified_script(slurm_cluster, tmp_path):
    (tmp_path / "plain.py").write_text(UNMODIFIED)
    script = render(
        tmp_path, command=[sys.executable, str(tmp_path / "plain.py")], name="p4-hook", mode="hook"
    )
    assert "PROV4ML_HPC_HOOK=1" in script
    job_id = slurm_cluster.submit(script, cwd=tmp_path)
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED", (tmp_path / f"out-{job_id}.txt").read_text()
    path = run_dir(tmp_path, f"slurm-{job_id}")
    assert statuses(path) == {f"rank-{r:05d}.h5": schema.STATUS_COMPLETED for r in range(4)}
    argv = p4.read_rank_file(rank_files(path)[0]).attrs[schema.A_ARGV]
    assert str(tmp_path / "plain.py") in argv
    result = merge(path)
    assert result.exit_code == 0, result.problems


# ---- scancel and the time limit --------------------------------------------------------------------------
def _long_job(cluster: SlurmCluster, folder: Path, name: str, **options) -> tuple[str, Path, int]:
    (folder / "train.py").write_text(TRAIN)
    script = render(
        folder, command=[sys.executable, str(folder / "train.py"), "100000"], name=name, **options
    )
    job_id = cluster.submit(script, cwd=folder)
    path = run_dir(folder, f"slurm-{job_id}")
    flushed = wait_for_rows(path, 4)
    return job_id, path, flushed


def _check_cancelled(path: Path, flushed_before: int, reason: str) -> None:
    for f in rank_files(path):
        rf = p4.read_rank_file(f)
        assert rf.status == schema.STATUS_CANCELLED, (f, rf.attrs)
        assert rf.attrs[schema.A_STATUS_REASON].startswith(reason)
    result = merge(path)
    assert result.exit_code == 0, result.problems  # cancelled ranks closed cleanly: nothing partial
    assert result.values >= flushed_before  # every value flushed before the signal is kept


def test_scancel_keeps_every_flushed_value(slurm_cluster, tmp_path):
    job_id, path, flushed = _long_job(slurm_cluster, tmp_path, "p4-scancel")
    slurm_cluster._run(["scancel", job_id])
    assert slurm_cluster.wait(job_id, timeout=60) == "CANCELLED"
    _check_cancelled(path, flushed, "SIGTERM")


def test_time_limit(slurm_cluster, tmp_path):
    job_id, path, flushed = _long_job(slurm_cluster, tmp_path, "p4-timeout")
    # a real TIMEOUT at the next check; slurmctld answers "Invalid time specified" for an EndTime that is not
    # after the start it recorded (whole seconds): seen under load within the job's first second, so retry
    deadline = time.monotonic() + 10
    while True:
        try:
            scontrol(slurm_cluster, "update", f"JobId={job_id}", "EndTime=now")
            break
        except RuntimeError as exc:
            if "Invalid time specified" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert slurm_cluster.wait(job_id, timeout=90) == "TIMEOUT"
    _check_cancelled(path, flushed, "SIGTERM")


# ---- requeue: two attempts in one run ----------------------------------------------------------------------
def test_requeue_two_attempts_in_one_run(slurm_cluster, tmp_path):
    job_id, path, flushed = _long_job(slurm_cluster, tmp_path, "p4-requeue", requeue=True)
    scontrol(slurm_cluster, "requeue", job_id)
    deadline = time.monotonic() + 30
    while slurm_cluster.show_job(job_id).get("JobState") != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    # skip SLURM's requeue delay, but not within the second the old credential was revoked: slurmd compares
    # times in whole seconds and kills a launch in that second ("Job credential revoked")
    time.sleep(2.0)
    scontrol(slurm_cluster, "update", f"JobId={job_id}", "StartTime=now")
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED"
    assert slurm_cluster.show_job(job_id).get("Restarts") == "1"
    got = statuses(path)
    assert got == {
        **{f"rank-{r:05d}.h5": schema.STATUS_CANCELLED for r in range(4)},
        **{f"rank-{r:05d}.attempt-1.h5": schema.STATUS_COMPLETED for r in range(4)},
    }
    result = merge(path)
    assert result.exit_code == 0, result.problems
    assert result.values >= flushed + 4 * 5
    ranks = [a for a in graph(path)["activity"].values() if "RankProcess" in str(a.get("prov:type"))]
    assert sorted((a["prov4ml:attempt"]["$"], a["prov4ml:status"]) for a in ranks) == (
        [("0", "cancelled")] * 4 + [("1", "completed")] * 4
    )


# ---- a job array: one run per task ------------------------------------------------------------------------
def test_array_job_one_run_per_task(slurm_cluster, tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    script = render(
        tmp_path,
        command=[sys.executable, str(tmp_path / "train.py"), "10"],
        name="p4-array",
        template="array",
        array="0-1",
        ntasks_per_node=2,
        output=f"{tmp_path}/out-%A_%a.txt",
    )
    array_id = slurm_cluster.submit(script, cwd=tmp_path)
    slurm_cluster.wait(array_id, timeout=90)
    for task in (0, 1):
        path = run_dir(tmp_path, f"slurm-{array_id}_{task}")
        assert statuses(path) == {"rank-00000.h5": "completed", "rank-00001.h5": "completed"}, path
        result = merge(path)
        assert result.exit_code == 0 and result.values >= 2 * 10, result.problems


# ---- #SBATCH --signal=B:USR1@N: the batch shell forwards the warning; training goes on ----------------------
def test_batch_signal_is_forwarded_and_recorded_as_a_warning(slurm_cluster, tmp_path):
    job_id, path, _ = _long_job(slurm_cluster, tmp_path, "p4-bsig", signal="B:USR1@60")
    slurm_cluster._run(
        ["scancel", "--batch", "--signal=USR1", job_id]
    )  # what SLURM does 60 s before the limit
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [p4.read_rank_file(f).records_of(schema.REC_EVENT) for f in rank_files(path)]
        if all(events):
            break
        time.sleep(0.2)
    assert [[e["attrs"]["signal"] for e in ev] for ev in events] == [["SIGUSR1"]] * 4
    assert slurm_cluster.show_job(job_id).get("JobState") == "RUNNING"  # a warning: training goes on
    slurm_cluster._run(["scancel", job_id])
    assert slurm_cluster.wait(job_id, timeout=60) == "CANCELLED"
    assert set(statuses(path).values()) == {schema.STATUS_CANCELLED}


# ---- `prov4ml-hpc sbatch ... --submit` as a user types it: defaults from this cluster's sinfo -----------------
def sbatch_cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, from `folder` (the submit dir), with the test cluster's SLURM_CONF."""
    return subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc", "sbatch", *args],
        cwd=folder,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_options(folder: Path, name: str) -> list[str]:
    return ["--job-name", name, "--time", "5", "--python", sys.executable, "--output", f"{folder}/out-%j.txt"]


def merge_job_of(cluster: SlurmCluster, folder: Path, job_id: str) -> str:
    out = (folder / f"out-{job_id}.txt").read_text()
    merge_id = re.search(r"^(\d+)$", out, re.M).group(1)  # sbatch --parsable's answer in the job's output
    assert cluster.wait(merge_id, timeout=90) == "COMPLETED", (
        folder / f"prov4ml-merge-{merge_id}.out"
    ).read_text()
    return merge_id


def test_cli_submit_with_defaults_that_fit_a_cpu_cluster(slurm_cluster, tmp_path):
    """No --gpus-per-node on a partition without GPUs: the job runs (the template's default of 4 GPUs used to be
    refused with "Invalid generic resource (gres) specification"), and --submit says where the run goes."""
    (tmp_path / "train.py").write_text(TRAIN)
    proc = sbatch_cli(
        tmp_path, "single-node", *cli_options(tmp_path, "p4-cli"), "--submit", "--", "train.py", "20"
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit()
    assert "partition debug: 1 node(s), 8 CPUs and no GPUs per node" in proc.stderr
    assert "--gpus-per-node=0, --ntasks-per-node=4" in proc.stderr
    path = tmp_path / "prov4ml_runs" / "experiment" / f"slurm-{job_id}"
    assert f"run directory: {path}\n" in proc.stderr
    assert (
        f"merge job: job {job_id} submits it when it starts (merge-p4-cli, --dependency=afterany:{job_id}"
        in proc.stderr
    )
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED", (tmp_path / f"out-{job_id}.txt").read_text()
    assert statuses(path) == {f"rank-{r:05d}.h5": schema.STATUS_COMPLETED for r in range(4)}
    merge_job_of(slurm_cluster, tmp_path, job_id)
    assert (path / schema.PROV_FILE).exists() and (path / schema.RUN_FILE).exists()


def test_cli_refuses_what_the_partition_cannot_run(slurm_cluster, tmp_path):
    for args, why in (
        (
            ["multi-node", "--nodes", "2"],
            "--nodes=2 but partition debug has 1 node(s): the job would pend forever",
        ),
        (["single-node", "--gpus-per-node", "1"], "Invalid generic resource (gres) specification"),
        (["single-node", "--time", "2:00:00"], "allows at most 01:00:00"),
    ):
        opts = cli_options(tmp_path, "p4-refused")
        if "--time" in args:
            opts = opts[:2] + opts[4:]
        proc = sbatch_cli(tmp_path, *args, *opts, "--submit", "--", "train.py")
        assert proc.returncode == 1 and why in proc.stderr and "nothing was submitted" in proc.stderr, (
            proc.stderr
        )
    queued = slurm_cluster._run(["squeue", "-h", "--name=p4-refused", "-o", "%i"]).stdout
    assert queued.strip() == ""


def test_cli_multi_node_default_fits_a_one_node_partition(slurm_cluster, tmp_path):
    (tmp_path / "port.py").write_text(
        "import os\nimport prov4ml_hpc as p4\np4.log_param('port', os.environ['MASTER_PORT'])\n"
        "print('MASTER_PORT', os.environ['MASTER_PORT'], flush=True)\n"
    )
    opts = [*cli_options(tmp_path, "p4-cli-mn"), "--ntasks-per-node", "1"]
    proc = sbatch_cli(tmp_path, "multi-node", *opts, "--submit", "--", "port.py")
    assert proc.returncode == 0 and "--nodes=1" in proc.stderr, proc.stderr
    job_id = proc.stdout.strip()
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED", (tmp_path / f"out-{job_id}.txt").read_text()
    assert f"MASTER_PORT {29500 + int(job_id) % 1000}" in (tmp_path / f"out-{job_id}.txt").read_text()


def test_cli_hook_runs_a_plain_script_that_is_not_executable(slurm_cluster, tmp_path):
    """`--hook -- plain.py` used to exec plain.py itself: Permission denied, then a failing merge job."""
    (tmp_path / "plain.py").write_text(UNMODIFIED)
    assert not os.access(tmp_path / "plain.py", os.X_OK)
    proc = sbatch_cli(
        tmp_path, "single-node", "--hook", *cli_options(tmp_path, "p4-cli-hook"), "--submit", "--", "plain.py"
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED", (tmp_path / f"out-{job_id}.txt").read_text()
    path = tmp_path / "prov4ml_runs" / "experiment" / f"slurm-{job_id}"
    assert statuses(path) == {f"rank-{r:05d}.h5": schema.STATUS_COMPLETED for r in range(4)}
    merge_job_of(slurm_cluster, tmp_path, job_id)
    assert (path / schema.PROV_FILE).exists()


def test_cli_array_task_id_placeholder(slurm_cluster, tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    opts = [*cli_options(tmp_path, "p4-cli-array"), "--output", f"{tmp_path}/out-%A_%a.txt", "--no-merge"]
    proc = sbatch_cli(
        tmp_path, "array", *opts, "--array", "0-1", "--submit", "--", "train.py", "5", "--seed", "{task_id}"
    )
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    assert "(one per array task, TASK = its id)" in proc.stderr
    slurm_cluster.wait(array_id, timeout=90)
    for task in (0, 1):
        path = tmp_path / "prov4ml_runs" / "experiment" / f"slurm-{array_id}_{task}"
        (rank,) = rank_files(path)
        rf = p4.read_rank_file(rank)
        assert rf.status == "completed" and rf.attrs[schema.A_ARGV][-2:] == ["--seed", str(task)], rf.attrs
