"""The multi-node tier: real jobs across nodes of the 3-node test cluster (tests/slurm_multinode.py), each node a
network + UTS namespace with its own hostname and address: the launcher under `srun`, `mpiexec` with the in-job
end of job, PyTorch DDP over gloo, Lightning DDP with SLURM auto-requeue, and a node lost mid-job.

Every job runs 2 nodes x 2 tasks on the 2 cores of this machine; see docs/slurm.md for running it by hand.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_mpi import dump_h5
from slurm_multinode import MultiNodeCluster

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.jobscripts import render_template

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.timeout(300)]

PY = sys.executable
NODES = ["node01", "node02"]  # the scheduler fills the lowest-numbered idle nodes first


@pytest.fixture(autouse=True)
def _slurm_conf(multinode_cluster: MultiNodeCluster, monkeypatch):
    """conftest strips SLURM_* in every test: give the merge's scontrol/sacct queries this cluster."""
    monkeypatch.setenv("SLURM_CONF", str(multinode_cluster.conf))


def render(folder: Path, *, command: list[str], name: str, **options) -> str:
    opts = {
        "job_name": name,
        "time": "5",
        "nodes": 2,
        "gpus_per_node": 0,
        "ntasks_per_node": 2,
        "python": PY,
        "run_dir": str(folder / "runs"),
        "output": f"{folder}/out-%j.txt",
        "merge": False,
        **options,
    }
    return render_template("multi-node", command=command, **opts)


def runs(folder: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(folder / "runs" / "*" / "*")))


def rank_files(path: Path) -> list[str]:
    return sorted(glob.glob(str(path / "ranks" / "*.h5")))


def output(folder: Path, job_id: str) -> str:
    path = folder / f"out-{job_id}.txt"
    return path.read_text(errors="replace") if path.exists() else f"(no {path.name})"


def merge_cli(cluster: MultiNodeCluster, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`prov4ml-hpc merge RUN_DIR` (as `python -m prov4ml_hpc`, the same command) with the cluster's SLURM_CONF."""
    return subprocess.run(
        [PY, "-m", "prov4ml_hpc", "merge", *args, str(path)],
        env=cluster.full_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def graph(path: Path) -> dict:
    return json.loads((path / schema.PROV_FILE).read_text())


def activities(g: dict, kind: str) -> list[dict]:
    return [a for a in g["activity"].values() if kind in str(a.get("prov:type"))]


def value(attr):
    """A PROV-JSON attribute value ({"$": "1", "type": "xsd:int"} or a plain string)."""
    return attr["$"] if isinstance(attr, dict) else attr


def wait_for_rows(path: Path, ranks: int, rows: int, timeout: float = 90) -> dict[str, int]:
    """Wait until `ranks` rank files each hold >= `rows` flushed rows; return file name -> rows."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        files = rank_files(path)
        if len(files) == ranks:
            counts = {os.path.basename(f): p4.read_rank_file(f).nrows for f in files}
            if min(counts.values()) >= rows:
                return counts
        time.sleep(0.3)
    raise AssertionError(f"the ranks of {path} did not flush {rows} rows within {timeout} s: {counts}")


# ---- the cluster itself ------------------------------------------------------------------------------------
def test_each_node_has_its_own_hostname_and_address(multinode_cluster):
    cluster = multinode_cluster
    assert cluster.node_states() == dict.fromkeys(cluster.node_names, "idle")
    proc = cluster._run(
        [
            "srun",
            "-N3",
            "--ntasks-per-node=1",
            "-l",
            "sh",
            "-c",
            "echo \"$(hostname) $SLURMD_NODENAME $(ip -o -4 addr show dev eth0 | awk '{print $4}') "
            '$(ls /sys/class/net 2>/dev/null | wc -l) $(getent hosts node03 | cut -d" " -f1)"',
        ],
        timeout=30,
    )
    lines = sorted(line.split(": ", 1)[1].split() for line in proc.stdout.splitlines())
    net = cluster.net
    assert lines == [
        [n, n, f"{net.addr(n)}/{net.subnet.prefixlen}", lines[i][3], net.addr("node03")]
        for i, n in enumerate(cluster.node_names)
    ]


# ---- (a) 2 nodes x 2 tasks through the launcher ------------------------------------------------------------
TRAIN = """
import os, sys, time
import prov4ml_hpc as p4
p4.log_param("lr", 0.1)
steps = int(sys.argv[1])
for i in range(steps):
    p4.log_metric("loss", 1.0 / (i + 1), step=i)
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0.05)
print("done", os.environ["SLURM_PROCID"], flush=True)
"""
SYSTEM_METRICS = {
    "PROV4ML_HPC_SYSTEM_METRICS": "1",
    "PROV4ML_HPC_SAMPLE_INTERVAL": "0.2",
    "PROV4ML_HPC_ENERGY_INTERVAL": "1",
}


@pytest.fixture(scope="module")
def launcher_job(multinode_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mn-launcher")
    (folder / "train.py").write_text(TRAIN)
    script = render(folder, command=[PY, str(folder / "train.py"), "60"], name="p4-mn-launcher")
    job_id = multinode_cluster.submit(script, env=SYSTEM_METRICS, cwd=folder)
    state = multinode_cluster.wait(job_id, timeout=120)
    assert state == "COMPLETED", (multinode_cluster.show_job(job_id), output(folder, job_id))
    (path,) = runs(folder)  # one run directory for the whole job
    merged = merge_cli(multinode_cluster, path)
    assert merged.returncode == 0, merged.stderr
    return job_id, folder, path


def test_launcher_ranks_and_nodes_across_two_nodes(launcher_job):
    job_id, _, path = launcher_job
    assert path.name == f"slurm-{job_id}"
    files = [p4.read_rank_file(f) for f in rank_files(path)]
    got = [(rf.global_rank, rf.attrs["local_rank"], rf.attrs["world_size"], rf.attrs["node"]) for rf in files]
    assert got == [(0, 0, 4, "node01"), (1, 1, 4, "node01"), (2, 0, 4, "node02"), (3, 1, 4, "node02")]
    assert {rf.status for rf in files} == {schema.STATUS_COMPLETED}
    assert [len(rf.values("loss")) for rf in files] == [60] * 4


def test_node_series_and_energy_once_per_node(launcher_job):
    _, _, path = launcher_job
    for f in rank_files(path):
        rf = p4.read_rank_file(f)
        system = {s.name for s in rf.series if s.context == "system"}
        node_level = {n for n in system if n.startswith(("node.", "energy.", "rapl."))}
        assert {"process.cpu_percent", "process.rss"} <= system, (f, system)
        if rf.attrs["local_rank"] == 0:
            assert {"node.cpu_percent", "node.memory_used", "node.net_sent", "energy.cpu_power"} <= node_level
            assert rf.attrs["totals"]["energy_node"] == rf.attrs["node"]
            assert rf.attrs["totals"]["energy_kwh"] > 0
        else:
            assert node_level == set(), (f, node_level)
            assert "energy_kwh" not in rf.attrs["totals"]


def test_graph_of_a_two_node_job(multinode_cluster, launcher_job):
    job_id, _, path = launcher_job
    g = graph(path)
    (job,) = [a for a in activities(g, "Job") if value(a.get("prov4ml:job_id")) == job_id]
    assert value(job["prov4ml:nodes"]) == "node01,node02"  # SLURM_JOB_NODELIST=node[01-02], expanded
    assert value(job["prov4ml:nnodes"]) == "2" and value(job["prov4ml:ntasks"]) == "4"
    assert value(job["prov4ml:state"]) == "COMPLETED"
    assert "sacct" in value(job["prov4ml:sources"]).split(",")  # real accounting, not the jobcomp file
    ranks = activities(g, "RankProcess")
    assert sorted((value(a["prov4ml:global_rank"]), value(a["prov4ml:node"])) for a in ranks) == [
        ("0", "node01"),
        ("1", "node01"),
        ("2", "node02"),
        ("3", "node02"),
    ]


def test_job_energy_is_the_sum_of_the_nodes(launcher_job):
    _, _, path = launcher_job
    per_node = {}
    for f in rank_files(path):
        rf = p4.read_rank_file(f)
        if rf.attrs["local_rank"] == 0:
            per_node[rf.attrs["node"]] = rf.attrs["totals"]["energy_kwh"]
    assert sorted(per_node) == NODES
    (job,) = activities(graph(path), "prov4ml:Job")
    assert float(value(job["prov4ml:energy_kwh"])) == pytest.approx(sum(per_node.values()), rel=1e-9)


# ---- (b) mpiexec inside a 2-node allocation, in-job end of job -------------------------------------------
MPI_TRAIN = """
import os, sys, time
from mpi4py import MPI
import prov4ml_hpc as p4
comm = MPI.COMM_WORLD
p4.log_param("mpi_size", comm.Get_size())
for i in range(200):
    p4.log_metric("loss", 1.0 / (i + 1) + comm.Get_rank(), step=i)
    if i % 50 == 0:
        p4.log_metric("acc", i / 200, step=i, context=p4.VALIDATION)
total = comm.allreduce(comm.Get_rank())
print("rank", comm.Get_rank(), "of", comm.Get_size(), "on", os.uname().nodename, "sum", total, flush=True)
"""


@pytest.fixture(scope="module")
def mpiexec_job(multinode_cluster, tmp_path_factory):
    from prov4ml_hpc.cli import find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.fail("mpiexec not installed (pip install mpich)")
    folder = tmp_path_factory.mktemp("mn-mpiexec")
    (folder / "train.py").write_text(MPI_TRAIN)
    script = f"""#!/bin/bash
#SBATCH -J p4-mn-mpiexec
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -t 5
#SBATCH -o {folder}/out-%j.txt
export PROV4ML_HPC_RUN_DIR={folder}/runs MPIEXEC_TIMEOUT=120
{mpiexec} -n 4 {PY} -m prov4ml_hpc.run {folder}/train.py
"""
    job_id = multinode_cluster.submit(script, cwd=folder)
    state = multinode_cluster.wait(job_id, timeout=150)
    assert state == "COMPLETED", (multinode_cluster.show_job(job_id), output(folder, job_id))
    (path,) = runs(folder)
    return job_id, folder, path


def test_mpiexec_ranks_across_two_nodes(mpiexec_job):
    job_id, folder, path = mpiexec_job
    lines = sorted(line.split() for line in output(folder, job_id).splitlines() if line.startswith("rank "))
    assert [(w[1], w[5], w[7]) for w in lines] == [
        ("0", "node01", "6"),
        ("1", "node01", "6"),
        ("2", "node02", "6"),
        ("3", "node02", "6"),
    ]
    files = [p4.read_rank_file(f) for f in rank_files(path)]
    got = [(rf.global_rank, rf.attrs["local_rank"], rf.attrs["node"], rf.status) for rf in files]
    assert got == [(r, r % 2, NODES[r // 2], schema.STATUS_COMPLETED) for r in range(4)]


# What SLURM answers differently while the job runs (the in-job end of job asks then) and after it ended.
JOB_STATE_FIELDS = ("state", "elapsed", "end", "exit_code", "extra")
GRAPH_STATE_FIELDS = (
    "prov4ml:state",
    "prov4ml:elapsed",
    "prov4ml:slurm_end",
    "prov4ml:exit_code",
    "prov4ml:extra",
)


def _split_job_state(run: dict, g: dict) -> tuple[dict, dict]:
    """Take the job's SLURM state out of a run.h5 dump and a graph (in place); return both taken parts."""
    from_run = {k: run["job"].pop(k) for k in JOB_STATE_FIELDS}
    (job,) = activities(g, "prov4ml:Job")
    from_graph = {k: job.pop(k, None) for k in GRAPH_STATE_FIELDS}
    return from_run, from_graph


def test_in_job_end_of_job_equals_a_post_job_merge(multinode_cluster, mpiexec_job):
    from prov4ml_hpc.merge import merge_run

    _, _, path = mpiexec_job
    assert (path / schema.RUN_FILE).exists() and (path / schema.PROV_FILE).exists()  # written in the job
    in_job_run, in_job_graph = dump_h5(str(path / schema.RUN_FILE)), graph(path)
    result = merge_run(str(path), query_slurm=True)
    assert result.exit_code == 0 and result.ranks == {"completed": [f"rank-{r:05d}" for r in range(4)]}
    post_run, post_graph = dump_h5(result.outputs[schema.RUN_FILE]), graph(path)
    in_job_state, in_job_graph_state = _split_job_state(in_job_run, in_job_graph)
    post_state, post_graph_state = _split_job_state(post_run, post_graph)
    assert post_run == in_job_run  # every series, aggregate, rank and job fact but the job's state: the same
    assert post_graph == in_job_graph
    # asked while the job ran: RUNNING, no end time (scontrol's EndTime is the time limit's end then)
    assert (in_job_state["state"], in_job_state["end"]) == ("RUNNING", "")
    assert json.loads(in_job_state["extra"])["steps"]["0"]["state"] == "RUNNING"
    assert (
        value(in_job_graph_state["prov4ml:state"]) == "RUNNING"
        and in_job_graph_state["prov4ml:slurm_end"] is None
    )
    assert (post_state["state"], post_state["exit_code"]) == ("COMPLETED", "0:0") and post_state["end"]
    steps = json.loads(post_state["extra"])["steps"]
    assert steps["0"]["jobname"] == "hydra_pmi_proxy" and steps["0"]["ntasks"] == "2"  # one proxy per node
    (job,) = activities(post_graph, "prov4ml:Job")  # the job's 4 tasks, not the step's 2 proxies
    assert (value(job["prov4ml:ntasks"]), value(job["prov4ml:nodes"])) == ("4", "node01,node02")
