"""Prov4mlHpcLogger with a real Lightning Trainer on CPU: steps, contexts from Lightning's stage, checkpoints."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install -r requirements-ml.txt)")
pytest.importorskip("lightning", reason="lightning is not installed (pip install -r requirements-ml.txt)")

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's advice (workers, srun, ...) is not ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from prov4ml_hpc.integrations.lightning import Prov4mlHpcLogger

    class Tiny(L.LightningModule):
        def __init__(self, lr=0.05, hidden=8, opt={"name": "sgd", "momentum": 0.0}):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))

        def _step(self, batch):
            x, y = batch
            logits = self.net(x)
            return torch.nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

        def training_step(self, batch, i):
            loss, acc = self._step(batch)
            self.log("loss", loss, on_step=True, on_epoch=True)
            self.log("acc", acc, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            loss, acc = self._step(batch)
            self.log("loss", loss)
            self.log("acc", acc)

        def test_step(self, batch, i):
            loss, acc = self._step(batch)
            self.log("loss", loss)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    dl = lambda: DataLoader(TensorDataset(x, y), batch_size=8, num_workers=0)
    logger = Prov4mlHpcLogger("lit", run_dir=sys.argv[1], start_run_kwargs={"system_metrics": False})
    ckpt = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, callbacks=[ckpt],
                        log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False)
    model = Tiny()
    trainer.fit(model, dl(), dl())
    trainer.validate(model, dl())
    trainer.test(model, dl())
    print("RUN_DIR", logger.log_dir)
""")


def _run(tmp_path, env_extra):
    script = tmp_path / "lit.py"
    script.write_text(SCRIPT)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PMIX_", "PROV4ML_HPC_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
    }
    env.update(env_extra)
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run_dir = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("RUN_DIR ")][0]
    files = glob.glob(os.path.join(run_dir, "ranks", "rank-*.h5"))
    assert len(files) == 1, files
    from prov4ml_hpc.merge.reader import read_rank_file

    return run_dir, read_rank_file(files[0])


def _check(rf, run_dir):
    assert rf.status == "completed"
    series = set(rf.series_names())
    # steps and epoch metrics in training, epoch-end values in validation, test values in testing
    assert ("training", "loss_step") in series and ("training", "loss_epoch") in series
    assert ("training", "acc") in series
    assert ("validation", "loss") in series and ("validation", "acc") in series
    assert ("testing", "loss") in series
    assert not any(n.startswith("val") for _, n in series)
    steps = rf.values("loss_step", "training")["step"].tolist()
    assert steps == sorted(steps) and steps[0] >= 1 and len(steps) == 8  # 16 batches, every 2nd step
    # 2 epoch ends in fit + 1 trainer.validate
    assert len(rf.values("loss", "validation")) == 3
    assert len(rf.values("loss", "testing")) == 1
    # epoch-end training values carry the step Lightning passes (global step - 1 at the epoch's end)
    assert rf.values("acc", "training")["step"].tolist() == [7, 15]
    params = rf.params
    assert params["lr"] == 0.05 and params["hidden"] == 8 and params["opt/name"] == "sgd"
    ckpts = [r for r in rf.records_of("model") if r["attrs"].get("kind") == "checkpoint"]
    assert ckpts and all(len(r["sha256"]) == 64 for r in ckpts)
    assert all(r["path"].startswith(run_dir) for r in ckpts), "checkpoints land inside the run directory"
    assert any(r["attrs"]["best"] for r in ckpts)
    assert {"lightning_finalize"} <= {r["name"] for r in rf.records_of("event")}


@pytest.mark.slow
def test_fit_validate_test_plain_process(tmp_path):
    run_dir, rf = _run(tmp_path, {})
    _check(rf, run_dir)
    assert rf.global_rank == 0 and rf.attrs["world_size"] == 1


@pytest.mark.slow
def test_under_slurm_environment_plugin(tmp_path):
    """Lightning picks its SLURMEnvironment; the run id and rank come from the same SLURM variables."""
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "lit-test",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "localhost",
    }
    run_dir, rf = _run(tmp_path, env)
    _check(rf, run_dir)
    assert rf.attrs["run_id"] == "slurm-4242"
    assert rf.attrs["identity_source"] == "slurm"


def test_flatten_params():
    from argparse import Namespace

    from prov4ml_hpc.integrations.lightning import flatten_params

    flat = flatten_params(
        {"a": 1, "opt": {"lr": 0.1, "betas": (0.9, 0.99)}, "ns": Namespace(k="v"), "fn": len, "empty": {}}
    )
    assert flat == {"a": 1, "opt/lr": 0.1, "opt/betas": (0.9, 0.99), "ns/k": "v", "fn": "len", "empty": {}}


def test_requeue_finalize_closes_its_own_run(tmp_path):
    """Lightning's SIGUSR1 requeue handler calls finalize("finished"): our own run closes as signalled."""
    import prov4ml_hpc as p4
    from prov4ml_hpc.integrations.lightning import Prov4mlHpcLogger

    assert p4.active_run() is None
    lg = Prov4mlHpcLogger("req", run_dir=str(tmp_path), start_run_kwargs={"system_metrics": False})
    lg.log_metrics({"loss": 1.0}, step=3)
    path = lg.run.rank_file
    lg.finalize("finished")
    assert p4.active_run() is None
    lg.log_metrics({"loss": 2.0}, step=4)  # dropped, no crash
    rf = p4.read_rank_file(path)
    assert rf.status == "signalled"
    assert rf.values("loss", "training")["step"].tolist() == [3]


def test_uses_an_active_run_and_leaves_it_open(tmp_path):
    import prov4ml_hpc as p4
    from prov4ml_hpc.integrations.lightning import Prov4mlHpcLogger

    run = p4.start_run("outer", run_dir=str(tmp_path), system_metrics=False)
    try:
        lg = Prov4mlHpcLogger("ignored")
        assert lg.version == run.run_id and lg.name == "outer" and lg.log_dir == run.run_dir
        lg.log_hyperparams({"x": 1})
        lg.finalize("success")
        assert p4.active_run() is run
    finally:
        p4.end_run()
    assert p4.read_rank_file(run.rank_file).params == {"x": 1}
