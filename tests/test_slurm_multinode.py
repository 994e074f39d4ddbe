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
    """conftest strips SLURM_* in every test: give the merge's scontrol/sacct queries this cluster. Jobs a
    failed test left behind are cancelled, so that they do not hold the nodes of the next test."""
    monkeypatch.setenv("SLURM_CONF", str(multinode_cluster.conf))
    yield
    multinode_cluster.cancel_all()


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
    run["/"].pop(schema.A_PROVENANCE_SHA256)  # the hash of a graph that holds the job's state
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


# ---- (c) PyTorch DDP over gloo across 2 nodes, recorded by the launcher -------------------------------------
DDP_TRAIN = """
import os
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import prov4ml_hpc as p4

# the multi-node template exported MASTER_ADDR (first node of the allocation) and MASTER_PORT
dist.init_process_group("gloo", rank=int(os.environ["SLURM_PROCID"]), world_size=int(os.environ["SLURM_NTASKS"]))
rank = dist.get_rank()
torch.manual_seed(1234 + rank)  # every rank its own data; DDP keeps the weights equal
model = DDP(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(20):
    x = torch.randn(16, 8)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
    p4.log_metric("loss", loss.item(), step=step)
checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
p4.log_metric("weights_checksum", checksum, step=20)
p4.log_param("master_addr", os.environ["MASTER_ADDR"])
dist.destroy_process_group()
print("ddp", rank, os.uname().nodename, repr(checksum), flush=True)
"""


def test_pytorch_ddp_gloo_across_two_nodes(multinode_cluster, tmp_path):
    pytest.importorskip(
        "torch", reason="torch is not installed (scripts/test.sh installs requirements-ml.txt)"
    )
    (tmp_path / "ddp.py").write_text(DDP_TRAIN)
    script = render(tmp_path, command=[PY, str(tmp_path / "ddp.py")], name="p4-mn-ddp")
    job_id = multinode_cluster.submit(script, cwd=tmp_path)
    state = multinode_cluster.wait(job_id, timeout=150)
    assert state == "COMPLETED", (multinode_cluster.show_job(job_id), output(tmp_path, job_id))
    (path,) = runs(tmp_path)
    files = [p4.read_rank_file(f) for f in rank_files(path)]
    assert [(rf.global_rank, rf.attrs["node"], rf.status) for rf in files] == [
        (r, NODES[r // 2], schema.STATUS_COMPLETED) for r in range(4)
    ]
    assert {rf.params["master_addr"] for rf in files} == {"node01"}
    losses = [tuple(rf.values("loss")["value"].tolist()) for rf in files]
    assert [len(x) for x in losses] == [20] * 4 and len(set(losses)) == 4  # different data on every rank
    checksums = {float(rf.values("weights_checksum")["value"][0]) for rf in files}
    assert len(checksums) == 1  # gradients were averaged across both nodes: identical weights everywhere
    merged = merge_cli(multinode_cluster, path)
    assert merged.returncode == 0, merged.stderr


# ---- (d) Lightning DDP across 2 nodes under srun, SLURM auto-requeue on SIGUSR1 ----------------------------
LIGHTNING_TRAIN = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
import lightning as L
import prov4ml_hpc as p4
from prov4ml_hpc.integrations.lightning import Prov4mlHpcLogger

ATTEMPT = int(os.environ.get("SLURM_RESTART_COUNT", "0"))

class Tiny(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, i):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        if ATTEMPT == 0 and i == 2:
            # Wait here for SIGUSR1, in Python: Lightning's handler runs a collective (the checkpoint's barrier),
            # so every rank must run it; a rank blocked in DDP's gradient all-reduce (C++) could not, and the
            # job would hang. Our logger's run ends in the handler (finalize): then go on.
            deadline = time.monotonic() + 60
            while p4.active_run() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(256, 8, generator=g), torch.randn(256, 1, generator=g))
logger = Prov4mlHpcLogger("lit", run_dir=sys.argv[1], start_run_kwargs={"system_metrics": False, "flush_interval": 0.2})
trainer = L.Trainer(
    strategy="ddp", num_nodes=2, devices=2, accelerator="cpu", max_epochs=4, logger=logger,
    default_root_dir=sys.argv[2], log_every_n_steps=1, enable_progress_bar=False,
    enable_model_summary=False, enable_checkpointing=False,
)
trainer.fit(Tiny(), DataLoader(data, batch_size=8))
print("fit done", ATTEMPT, trainer.global_rank, os.uname().nodename, trainer.global_step, flush=True)
"""


def _logged_steps(path: Path, steps: int) -> bool:
    files = rank_files(path)
    if len(files) != 4:
        return False
    try:
        return all(len(p4.read_rank_file(f).values("train_loss")) >= steps for f in files)
    except KeyError:  # no train_loss series yet
        return False


TOTAL_STEPS = 4 * 256 // (8 * 4)  # max_epochs x batches per rank and epoch (DistributedSampler over 4 ranks)


def test_lightning_ddp_two_nodes_auto_requeue(multinode_cluster, tmp_path):
    pytest.importorskip("lightning", reason="lightning is not installed (pip install -r requirements-ml.txt)")
    cluster = multinode_cluster
    (tmp_path / "lit.py").write_text(LIGHTNING_TRAIN)
    (tmp_path / "ckpt").mkdir()
    script = f"""#!/bin/bash
#SBATCH -J p4-mn-lightning
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -t 5
#SBATCH --requeue
#SBATCH -o {tmp_path}/out-%j.txt
#SBATCH --open-mode=append
srun {PY} {tmp_path}/lit.py {tmp_path}/runs {tmp_path}/ckpt
"""
    job_id = cluster.submit(script, cwd=tmp_path)
    path = tmp_path / "runs" / "lit" / f"slurm-{job_id}"
    deadline = time.monotonic() + 120
    while not _logged_steps(path, 2) and time.monotonic() < deadline:
        time.sleep(0.3)  # every rank's logger flushed steps 0 and 1: all wait in batch 2 for the signal
    assert _logged_steps(path, 2), (cluster.show_job(job_id), output(tmp_path, job_id))
    # SIGUSR1 to every task of the job: what `#SBATCH --signal=USR1@N` sends N seconds before the time limit
    cluster._run(["scancel", "--signal=USR1", job_id])
    deadline = time.monotonic() + 60
    while cluster.show_job(job_id).get("Restarts") != "1" and time.monotonic() < deadline:
        time.sleep(0.3)  # rank 0's handler saves the checkpoint, then runs `scontrol requeue`
    job = cluster.show_job(job_id)
    assert job.get("Restarts") == "1", (job, output(tmp_path, job_id))
    while cluster.show_job(job_id).get("JobState") != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(2.0)  # not within the second the old credential was revoked (see test_slurm_tier)
    cluster._run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])  # skip SLURM's requeue delay
    state = cluster.wait(job_id, timeout=150)
    out = output(tmp_path, job_id)
    assert state == "COMPLETED", (cluster.show_job(job_id), out)
    assert out.count("Handling auto-requeue signal: 10") == 1 and f"Requeued SLURM job: {job_id}" in out
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["hpc_ckpt_1.ckpt"]
    import torch

    saved_at = torch.load(tmp_path / "ckpt" / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]
    assert sorted(w.split()[2:] for w in out.splitlines() if w.startswith("fit done")) == [
        ["1", str(r), NODES[r // 2], str(TOTAL_STEPS)] for r in range(4)
    ]  # only the second attempt ended its fit, resumed from the checkpoint, on the same ranks and nodes
    files = {os.path.basename(f): p4.read_rank_file(f) for f in rank_files(path)}
    assert {name: rf.status for name, rf in files.items()} == {
        **{f"rank-{r:05d}.h5": schema.STATUS_SIGNALLED for r in range(4)},
        **{f"rank-{r:05d}.attempt-1.h5": schema.STATUS_COMPLETED for r in range(4)},
    }
    for name, rf in files.items():
        assert (rf.attrs["node"], rf.attrs["local_rank"]) == (NODES[rf.global_rank // 2], rf.global_rank % 2)
        assert rf.attrs["attempt"] == (1 if "attempt-1" in name else 0), name
    for r in range(4):
        first, second = files[f"rank-{r:05d}.h5"], files[f"rank-{r:05d}.attempt-1.h5"]
        finalize = [
            e["attrs"]["status"]
            for e in first.records_of(schema.REC_EVENT)
            if e["name"] == "lightning_finalize"
        ]
        assert finalize == ["finished"]  # Lightning's requeue handler, then our logger closed the attempt
        assert first.attrs[schema.A_STATUS_REASON] == "Lightning SLURM auto-requeue (finalize)"
        # every step trained before the checkpoint is in attempt 0; attempt 1 logs every remaining step (Lightning
        # numbers them from saved_at + 1; the step in flight at the signal is trained again after the restart)
        assert first.values("train_loss")["step"].tolist() == list(range(saved_at))
        assert second.values("train_loss")["step"].tolist() == list(range(saved_at + 1, TOTAL_STEPS + 1))
    merged = merge_cli(cluster, path)
    assert merged.returncode == 0, merged.stderr
    ranks = activities(graph(path), "RankProcess")
    assert sorted((value(a["prov4ml:attempt"]), value(a["prov4ml:status"])) for a in ranks) == (
        [("0", "signalled")] * 4 + [("1", "completed")] * 4
    )


# ---- (e) a node lost mid-job ----------------------------------------------------------------------------
def test_node_lost_mid_job_is_merged_as_partial_with_every_flushed_row(multinode_cluster, tmp_path):
    from prov4ml_hpc.merge.runfile import read_run_file

    cluster = multinode_cluster
    (tmp_path / "train.py").write_text(TRAIN)
    script = render(
        tmp_path, command=[PY, str(tmp_path / "train.py"), "100000", "0.01"], name="p4-mn-nodefail"
    )
    # --no-requeue: SLURM requeues a batch job whose node fails (JobRequeue=1), which would start a 2nd attempt
    job_id = cluster.submit(
        script, args=["--no-requeue"], env={"PROV4ML_HPC_FLUSH_INTERVAL": "0.2"}, cwd=tmp_path
    )
    path = tmp_path / "runs" / "experiment" / f"slurm-{job_id}"
    wait_for_rows(path, 4, rows=50)
    try:
        killed = cluster.kill_node("node02")  # slurmd, slurmstepd and ranks 2 and 3, all SIGKILLed
        assert len(killed) >= 4, killed
        state = cluster.wait(job_id, timeout=90)  # slurmctld notices after SlurmdTimeout (~20-30 s here)
    finally:
        cluster.restart_node("node02")  # back to idle for the next tests
    out = output(tmp_path, job_id)
    assert state == "NODE_FAIL", (cluster.show_job(job_id), out)
    assert "srun: error: Node failure on node02" in out
    flushed = {rf.global_rank: rf for rf in (p4.read_rank_file(f) for f in rank_files(path))}
    assert {r: rf.status for r, rf in flushed.items()} == {
        0: schema.STATUS_CANCELLED,  # node01's ranks: SLURM ended the job's step with SIGTERM
        1: schema.STATUS_CANCELLED,
        2: schema.STATUS_RUNNING,  # node02's ranks: killed, their files never closed
        3: schema.STATUS_RUNNING,
    }
    merged = merge_cli(cluster, path)
    assert merged.returncode == 1, merged.stderr  # partial ranks
    assert "2 cancelled, 2 partial" in merged.stdout
    run = read_run_file(path / schema.RUN_FILE)
    assert {stem: r["status"] for stem, r in run.ranks.items()} == {
        "rank-00000": "cancelled",
        "rank-00001": "cancelled",
        "rank-00002": "partial",
        "rank-00003": "partial",
    }
    for rank, rf in flushed.items():
        assert run.ranks[f"rank-{rank:05d}"]["rows"] == rf.nrows, rank  # every flushed row, not one more
        merged_loss, own = run.values("loss", global_rank=rank), rf.values("loss")
        for field in ("step", "value", "time"):  # bit for bit
            assert merged_loss[field].tobytes() == own[field].tobytes(), (rank, field)
    assert min(len(flushed[r].values("loss")) for r in (0, 1)) > max(
        len(flushed[r].values("loss")) for r in (2, 3)
    )
    (job,) = activities(graph(path), "prov4ml:Job")
    assert value(job["prov4ml:state"]) == "NODE_FAIL" and value(job["prov4ml:nodes"]) == "node01,node02"


# ---- a rank that fails in a job without MPI: the others end (no MPI_Init at end_run) -----------------------
FAILING = """
import os
import prov4ml_hpc as p4
for i in range(20):
    p4.log_metric("loss", float(i), step=i)
if os.environ["SLURM_PROCID"] == "3":
    raise ValueError("rank 3 fails")
print("done", os.environ["SLURM_PROCID"], flush=True)
"""


def test_a_failed_rank_does_not_hang_the_others_without_kill_on_bad_exit(multinode_cluster, tmp_path):
    cluster = multinode_cluster
    (tmp_path / "fail.py").write_text(FAILING)
    # plain srun, as in docs/slurm.md: without --kill-on-bad-exit nothing ends the other ranks for them
    script = f"""#!/bin/bash
#SBATCH -J p4-mn-fail
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -t 5
#SBATCH -o {tmp_path}/out-%j.txt
export PROV4ML_HPC_RUN_DIR={tmp_path}/runs PROV4ML_HPC_GATHER_TIMEOUT=10
srun {PY} -m prov4ml_hpc.run {tmp_path}/fail.py
"""
    job_id = cluster.submit(script, cwd=tmp_path)
    state = cluster.wait(job_id, timeout=90)  # it hung until the time limit when end_run imported mpi4py.MPI
    out = output(tmp_path, job_id)
    assert state == "FAILED", (cluster.show_job(job_id), out)
    assert sorted(line for line in out.splitlines() if line.startswith("done")) == [
        "done 0",
        "done 1",
        "done 2",
    ]
    (path,) = runs(tmp_path)
    assert {rf.global_rank: rf.status for rf in map(p4.read_rank_file, rank_files(path))} == {
        0: schema.STATUS_COMPLETED,
        1: schema.STATUS_COMPLETED,
        2: schema.STATUS_COMPLETED,
        3: schema.STATUS_FAILED,
    }
    # the end of job needs no MPI (rank 0 waits for the other ranks' closed files): merged in the job
    assert (path / schema.RUN_FILE).exists() and (path / schema.PROV_FILE).exists()
    merged = merge_cli(cluster, path)
    assert merged.returncode == 0, merged.stderr
