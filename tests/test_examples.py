"""The DDP examples, run for real: one process, `mpiexec -n 4`, `torchrun --nproc-per-node 2` and `srun`.

Each run is small (1024 samples, 2 epochs, an 8-32-4 MLP) and checked through the rank files it leaves.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import clean_env, run_mpi

pytest.importorskip("torch", reason="torch is not installed (pip install -r requirements-ml.txt)")

from prov4ml_hpc.merge.reader import read_rank_file  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLAIN, EXPLICIT = str(EXAMPLES / "ddp_plain.py"), str(EXAMPLES / "ddp_explicit.py")
SAMPLES, BATCH, EPOCHS = 1024, 32, 2
HAVE_LAUNCHER = importlib.util.find_spec("prov4ml_hpc.run") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for_ddp(**extra: str) -> dict[str, str]:
    return clean_env(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        **extra,
    )


def rank_files(root: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(root / "*" / "*" / "ranks" / "rank-*.h5")))


def check_explicit_run(root: Path, world: int) -> list:
    files = rank_files(root)
    assert len(files) == world, files
    rfs = [read_rank_file(f) for f in files]
    assert {rf.attrs["run_id"] for rf in rfs} == {rfs[0].attrs["run_id"]}, "one run id on every rank"
    assert sorted(rf.global_rank for rf in rfs) == list(range(world))
    steps_per_epoch = -(-SAMPLES // world // BATCH)
    for rf in rfs:
        assert rf.status == "completed", rf.attrs.get("status_reason")
        assert rf.attrs["world_size"] == world
        loss = rf.values("loss", "training")
        assert loss["step"].tolist() == list(range(EPOCHS * steps_per_epoch))
        assert len(rf.values("accuracy", "training")) == len(loss)
        assert rf.values("epoch_loss", "training")["step"].tolist() == list(range(EPOCHS))
        val = rf.values("accuracy", "validation")
        assert val["step"].tolist() == list(range(EPOCHS)) and 0.25 < val["value"][-1] <= 1.0
        assert rf.params["world_size"] == world and rf.params["lr"] == 0.05
        assert {r["name"] for r in rf.records_of("dataset")} == {"blobs-train", "blobs-val"}
    # all ranks see the same all-reduced epoch means
    assert len({tuple(rf.values("epoch_loss", "training")["value"].round(12)) for rf in rfs}) == 1
    ckpts = [r for r in rfs[0].records_of("model") if r["name"].startswith("checkpoint")]
    assert [r["attrs"]["epoch"] for r in ckpts] == list(range(EPOCHS))
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in ckpts)
    assert not any(r["name"].startswith("checkpoint") for rf in rfs[1:] for r in rf.records_of("model"))
    return rfs


def test_explicit_single_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, EXPLICIT, "--run-dir", str(tmp_path / "runs")],
        env=env_for_ddp(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (rf,) = check_explicit_run(tmp_path / "runs", 1)
    assert rf.attrs["run_id_source"] == "local"


@pytest.mark.mpi
def test_explicit_under_mpiexec_4(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'prov4ml-hpc[mpich]')")
    run_mpi(4, [EXPLICIT, "--run-dir", str(tmp_path / "runs")], env=env_for_ddp(), timeout=150)
    rfs = check_explicit_run(tmp_path / "runs", 4)
    assert {rf.attrs["identity_source"] for rf in rfs} == {"pmi"}
    assert rfs[0].attrs["run_id_source"] == "mpi"


def torchrun(tmp_path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun is not on PATH (it comes with torch)")
    proc = subprocess.run(
        [exe, *args], env=env_for_ddp(), capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_explicit_under_torchrun_standalone(tmp_path):
    """--standalone gives TORCHELASTIC_RUN_ID a random UUID: the run id is torchrun-<uuid> on both ranks."""
    torchrun(tmp_path, "--standalone", "--nproc-per-node", "2", EXPLICIT, "--run-dir", str(tmp_path / "runs"))
    rfs = check_explicit_run(tmp_path / "runs", 2)
    assert {rf.attrs["identity_source"] for rf in rfs} == {"torchrun"}
    assert rfs[0].attrs["run_id"].startswith("torchrun-") and rfs[0].attrs["run_id_source"] == "torchrun"


AGREE = textwrap.dedent("""
    import os, sys
    from prov4ml_hpc.integrations.torch_dist import agree_run_id_torch
    import prov4ml_hpc as p4
    before = agree_run_id_torch(int(os.environ["WORLD_SIZE"]))      # through torchrun's agent store
    import torch.distributed as dist
    dist.init_process_group("gloo")
    after = agree_run_id_torch(int(os.environ["WORLD_SIZE"]))       # through the process group
    with p4.start_run("agree", run_dir=sys.argv[1], run_id=before) as run:
        p4.log_metric("x", 1.0)
    print("IDS", os.environ["RANK"], os.environ["TORCHELASTIC_RUN_ID"], before, after, flush=True)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_run_id_agreement_under_torchrun_without_rdzv_id(tmp_path):
    """Static rendezvous: TORCHELASTIC_RUN_ID is "none"; agree_run_id_torch gives both ranks one id."""
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    proc = torchrun(
        tmp_path,
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        str(script),
        str(tmp_path / "runs"),
    )
    ids = [ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("IDS ")]
    assert len(ids) == 2 and {i[1] for i in ids} == {"none"}
    assert len({i[2] for i in ids}) == 1 and len({i[3] for i in ids}) == 1 and ids[0][2] != ids[0][3]
    files = rank_files(tmp_path / "runs")
    assert [f.parent.parent.name for f in files] == [ids[0][2]] * 2


def test_agreement_is_none_without_torch_distributed(monkeypatch):
    from prov4ml_hpc.integrations.torch_dist import agree_run_id_torch

    assert agree_run_id_torch(2, environ={}) is None


def test_plain_example(tmp_path):
    """ddp_plain.py has no prov4ml code: through the launcher when it exists, else it must simply train."""
    env = env_for_ddp(PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), PROV4ML_HPC_EXPERIMENT="plain")
    args = [PLAIN, "--checkpoint-dir", str(tmp_path / "ck")]
    cmd = [sys.executable, "-m", "prov4ml_hpc.run", *args] if HAVE_LAUNCHER else [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "epoch 1:" in proc.stdout
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-0.pt", "epoch-1.pt"]
    assert "prov4ml" not in Path(PLAIN).read_text().split('"""', 2)[2], (
        "the plain example has no prov4ml code"
    )
    if HAVE_LAUNCHER:
        (f,) = rank_files(tmp_path / "runs")
        assert read_rank_file(f).status == "completed"


@pytest.mark.mpi
def test_plain_example_under_mpiexec(tmp_path):
    args = [PLAIN, "--checkpoint-dir", str(tmp_path / "ck")]
    if HAVE_LAUNCHER:
        args = ["-m", "prov4ml_hpc.run", *args]
    env = env_for_ddp(PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), PROV4ML_HPC_EXPERIMENT="plain")
    proc = run_mpi(2, args, env=env, timeout=150)
    assert "2 ranks)" in proc.stdout
    if HAVE_LAUNCHER:
        rfs = [read_rank_file(f) for f in rank_files(tmp_path / "runs")]
        assert sorted(rf.global_rank for rf in rfs) == [0, 1]
        assert all(rf.status == "completed" for rf in rfs)


@pytest.mark.slurm
def test_explicit_under_srun(slurm_cluster, tmp_path):
    """A real sbatch job whose step `srun -n 2` runs the explicit example; the run id is the job's."""
    pytest.importorskip("mpi4py")
    runs = tmp_path / "runs"
    script = textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH -n 2
        #SBATCH -o {tmp_path}/job.out
        #SBATCH -e {tmp_path}/job.err
        export MASTER_PORT={free_port()} OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore PROV4ML_HPC_SYSTEM_METRICS=0
        srun -n 2 {sys.executable} {EXPLICIT} --run-dir {runs}
        """)
    job = slurm_cluster.submit(script, env=slurm_cluster.full_env(clean_env()), cwd=tmp_path)
    state = slurm_cluster.wait(job, timeout=180)
    log = (tmp_path / "job.out").read_text() + (tmp_path / "job.err").read_text()
    assert state == "COMPLETED", log[-4000:]
    rfs = check_explicit_run(runs, 2)
    assert rfs[0].attrs["run_id"] == f"slurm-{job}" and rfs[0].attrs["run_id_source"] == "slurm"
