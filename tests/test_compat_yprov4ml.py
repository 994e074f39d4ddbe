"""The yProv4ML drop-in: yProv4ML's own example scripts run with only the import line changed (and synthetic
data), and each mapped call records what yProv4ML 3.2.8 records.

The yProv4ML figures these tests hold the drop-in to were read from the real yProv4ML 3.2.8 (tests/data/yprov4ml,
made by its gen_v3.py; its README says how): the same script run through the drop-in must give the same series,
steps, parameters, roles and FLOP totals as the real output imported.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc.merge.reader import read_rank_file
from prov4ml_hpc.merge.runfile import read_run_file

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

DATA = Path(__file__).parent / "data" / "yprov4ml"
DROPIN = "import prov4ml_hpc.compat.yprov4ml as yprov4ml"


def _script(text: str) -> str:
    out = textwrap.dedent(text)
    assert "\nimport yprov4ml\n" in out
    return out.replace("\nimport yprov4ml\n", f"\n{DROPIN}  # was: import yprov4ml\n")


def run_script(tmp_path: Path, text: str, *args: str, name: str = "train.py", **env: str) -> tuple[str, Path]:
    """Run a script with the drop-in in tmp_path (a fresh interpreter); return its stdout and run directory."""
    script = tmp_path / name
    script.write_text(text)
    e = clean_env(MPLBACKEND="Agg", **env)
    e["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), e.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = glob.glob(str(tmp_path / "prov" / "*" / "*" / "ranks"))
    assert len(runs) == 1, runs
    return proc.stdout, Path(runs[0]).parent


def graph(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def entity(doc: dict, **where) -> dict:
    found = [
        attrs
        for attrs in doc["entity"].values()
        if all(attrs.get(f"prov4ml:{k}") == v for k, v in where.items())
    ]
    assert len(found) == 1, (where, len(found))
    return found[0]


def relation(doc: dict, kind: str, a: str, b: str) -> list[tuple[str, str]]:
    out = []
    for rel in doc.get(kind, {}).values():
        for r in rel if isinstance(rel, list) else [rel]:
            out.append((r[a], r[b]))
    return out


def lit(value):
    """A PROV-JSON literal as a Python value ({"$": "32", "type": "xsd:int"} -> 32)."""
    if not (isinstance(value, dict) and "$" in value):
        return value
    kind = value.get("type", "")
    if kind in ("xsd:int", "xsd:long", "xsd:integer"):
        return int(value["$"])
    if kind in ("xsd:double", "xsd:float"):
        return float(value["$"])
    return value["$"]


# ---- yProv4ML's examples, adapted only to synthetic data ----------------------------------------------------
# examples/prov4ml_torch.py (HPCI-Lab/yProv4ML): MNIST replaced by random 28x28 images, DEVICE "mps" -> "cpu".
EX_TORCH = _script("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from tqdm import tqdm
    import sys
    sys.path.append(".")
    import yprov4ml

    PATH_DATASETS = "./data"
    BATCH_SIZE = 32
    EPOCHS = 5
    DEVICE = "cpu"

    COMP = True#yprov4ml.CompressorType.LZ4
    yprov4ml.start_run(
        prov_user_namespace="www.example.org",
        experiment_name="example",
        provenance_save_dir="prov",
        save_after_n_logs=100,
        collect_all_processes=True,
        # disable_codecarbon=True,
        metrics_file_type="nc",
        use_compressor=COMP,
    )

    yprov4ml.log_source_code()
    yprov4ml.log_execution_command(cmd="python", path="prov4ml_torch.py")

    class MNISTModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(
                torch.nn.Linear(28 * 28, 10),
                torch.nn.ReLU(),
            )

        def forward(self, x):
            return self.model(x.view(x.size(0), -1))

    mnist_model = MNISTModel().to(DEVICE)
    mnist_model = yprov4ml.ProvenanceTrackedModel(mnist_model)

    class ToTensor:  # synthetic data: torchvision's transform, as a name only
        def __repr__(self):
            return "ToTensor()"
    tform = ToTensor()
    yprov4ml.log_param("dataset transformation", tform)

    torch.manual_seed(0)
    train_ds = TensorDataset(torch.rand(BATCH_SIZE * 3, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE * 3,)))
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True)
    yprov4ml.log_dataset("train_dataset", train_loader, context="Training")

    test_ds = TensorDataset(torch.rand(BATCH_SIZE * 6, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE * 6,)))
    test_ds = Subset(test_ds, range(BATCH_SIZE*5))
    test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE)
    yprov4ml.log_dataset("val_dataset", test_loader, context="Validation")

    optim = torch.optim.Adam(mnist_model.parameters(), lr=0.001)
    yprov4ml.log_param("optimizer", "Adam")

    loss_fn = nn.MSELoss().to(DEVICE)
    loss_fn = yprov4ml.ProvenanceTrackedFunction(loss_fn, context="Training")
    yprov4ml.log_context("TrainingButDifferent", "Training")
    val_loss_fn = yprov4ml.ProvenanceTrackedFunction(nn.MSELoss(), context="TrainingButDifferent")

    losses = []
    for epoch in range(EPOCHS):
        mnist_model.train()
        for x, y in tqdm(train_loader):
            x, y = x.to(DEVICE), y.to(DEVICE)
            optim.zero_grad()
            y_hat = mnist_model(x)
            y = F.one_hot(y, 10).float()
            loss = loss_fn(y_hat, y)
            loss.backward()
            optim.step()
            losses.append(loss.item())

    yprov4ml.end_run(
        create_graph=True,
        create_svg=True,
        crate_ro_crate=True
    )
""")


def test_example_prov4ml_torch(tmp_path):
    _, run_dir = run_script(tmp_path, EX_TORCH, name="prov4ml_torch.py")
    rf = read_rank_file(run_dir / "ranks" / "rank-00000.h5")
    assert rf.status == "completed"
    # ProvenanceTrackedFunction: metric named after the function, step = its call count, source the same name
    assert rf.values("MSELoss", "training")["step"].tolist() == list(range(5 * 3))
    sources = {
        (r["attrs"]["metric"], r["attrs"]["source"])
        for r in rf.records_of("event")
        if r["name"] == "metric_source"
    }
    assert ("MSELoss", "MSELoss") in sources
    doc = graph(run_dir)
    # parameters: yProv4ML's default is_input=False -> generated by the run's root activity, with their values
    cmd = entity(doc, name="execution_command")
    assert cmd["prov:value"] == "python prov4ml_torch.py" and cmd["prov4ml:role"] == "output"
    assert entity(doc, name="dataset transformation")["prov:value"] == "ToTensor()"
    assert entity(doc, name="prov_user_namespace")["prov:value"] == "www.example.org"
    rank_act = "run:r00000.a0"
    gen = relation(doc, "wasGeneratedBy", "prov:entity", "prov:activity")
    assert ("run:r00000.a0.param.--.optimizer", rank_act) in gen
    # datasets with yProv4ML's statistics (true counts: 96 samples in 3 batches; a Subset of 160 in 5)
    train = entity(doc, name="train_dataset")
    assert {
        k: lit(train[f"prov4ml:attr_stat_{k}"])
        for k in ("batch_size", "shuffle", "total_steps", "total_samples")
    } == {
        "batch_size": 32,
        "shuffle": True,
        "total_steps": 3,
        "total_samples": 96,
    }
    assert lit(entity(doc, name="val_dataset")["prov4ml:attr_stat_total_samples"]) == 160
    # log_context("TrainingButDifferent", "Training"): the child context is informed by its parent
    informed = relation(doc, "wasInformedBy", "prov:informed", "prov:informant")
    assert ("run:r00000.a0.ctx.TrainingButDifferent", "run:r00000.a0.ctx.training") in informed
    # ProvenanceTrackedModel(model): every Linear layer's inputs and outputs of every forward, in the run dir
    act = entity(doc, name="MNISTModel")
    with h5py.File(lit(act["prov4ml:path"])) as f:
        assert f["model.0/input"].shape == (5 * 96, 784) and f["model.0/output"].shape == (5 * 96, 10)
        assert f["model.0/input"].dtype == np.float16
    # end_run(create_graph, create_svg, crate_ro_crate): DOT, SVG and RO-Crate made here, in the run directory
    assert (run_dir / "provenance.dot").read_text().startswith("digraph")
    assert "<svg" in (run_dir / "provenance.svg").read_text()
    crate = json.loads((run_dir / "ro-crate-metadata.json").read_text())
    assert any(e.get("@id") == "provenance.json" for e in crate["@graph"])
    # log_source_code(): the script, with its sha256, copied under the run directory
    src = [a for a in rf.records_of("artifact") if a["attrs"].get("kind") == "source_code"]
    assert [a["name"] for a in src] == ["prov4ml_torch.py"] and src[0]["copy"].endswith(
        "src/prov4ml_torch.py"
    )
    assert sorted(os.listdir(tmp_path)) == [
        "prov",
        "prov4ml_torch.py",
    ]  # nothing else in the current directory


# examples/prov4ml_wrappers.py: MNIST replaced by random images, Subset sizes BATCH_SIZE*150/50 -> *3/*2.
EX_WRAPPERS = _script("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from tqdm import tqdm
    import yprov4ml

    PATH_DATASETS = "./data"
    BATCH_SIZE = 32
    EPOCHS = 10
    DEVICE = "cpu"

    yprov4ml.start_run(
        prov_user_namespace="www.example.org",
        experiment_name="example",
        provenance_save_dir="prov",
        save_after_n_logs=100,
        collect_all_processes=False,
        metrics_file_type="csv",
        use_compressor=False,
    )

    class MNISTModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(
                torch.nn.Linear(28 * 28, 28 * 28),
                torch.nn.Linear(28 * 28, 28 * 28),
                torch.nn.Linear(28 * 28, 10),
                torch.nn.ReLU(),
            )

        def forward(self, x):
            return self.model(x.view(x.size(0), -1))


    tform = "ToTensor()"  # synthetic data: no torchvision transform
    yprov4ml.log_param("dataset transformation", tform)

    mnist_model = MNISTModel().to(DEVICE)
    mnist_model = yprov4ml.WeightDistributionTrackedModel("mnist_model", mnist_model)
    yprov4ml.log_model("mnist_model", mnist_model, context="Training")

    train_ds = TensorDataset(torch.rand(BATCH_SIZE * 3, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE * 3,)))
    train_ds = Subset(train_ds, range(BATCH_SIZE*3))
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True)
    yprov4ml.log_dataset("train_dataset", train_loader, context="Training")

    test_ds = TensorDataset(torch.rand(BATCH_SIZE * 2, 1, 28, 28), torch.randint(0, 10, (BATCH_SIZE * 2,)))
    test_ds = Subset(test_ds, range(BATCH_SIZE*2))
    test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE)
    yprov4ml.log_dataset("val_dataset", test_loader, context="Validation")

    optim = torch.optim.Adam(mnist_model.parameters(), lr=0.001)
    yprov4ml.log_param("optimizer", "Adam")

    loss_fn = nn.MSELoss().to(DEVICE)
    loss_fn = yprov4ml.ProvenanceTrackedFunction(loss_fn, context="Training")
    yprov4ml.log_context("TrainingButDifferent", "Training")
    val_loss_fn = yprov4ml.ProvenanceTrackedFunction(nn.MSELoss(), context="Validation")

    losses = []
    for epoch in range(EPOCHS):
        mnist_model.train()
        for x, y in tqdm(train_loader):
            x, y = x.to(DEVICE), y.to(DEVICE)
            optim.zero_grad()
            y_hat = mnist_model(x)
            y = F.one_hot(y, 10).float()
            loss = loss_fn(y_hat, y)
            loss.backward()
            optim.step()
            losses.append(loss.item())

            # log system and carbon metrics (once per epoch), as well as the execution time
            yprov4ml.log_metric("MSE", loss.item(), context="Training", step=epoch)
            yprov4ml.log_system_metrics("Training", step=epoch)

        mnist_model.log_epoch(epoch)

        mnist_model.eval()
        with torch.no_grad():
            # mnist_model.cpu()
            for (x, y) in tqdm(test_loader):
                x, y = x.to(DEVICE), y.to(DEVICE)
                y_hat = mnist_model(x)
                y2 = F.one_hot(y, 10).float()
                loss = val_loss_fn(y_hat, y2)

                yprov4ml.log_metric("MSE", loss.item(), context="Validation", step=epoch)

    yprov4ml.end_run(create_graph=True, create_svg=True, crate_ro_crate=True)
""")

from prov4ml_hpc.compat.yprov_system import SYSTEM_SERIES as YPROV_SYSTEM  # noqa: E402


def test_example_prov4ml_wrappers(tmp_path):
    _, run_dir = run_script(tmp_path, EX_WRAPPERS, name="prov4ml_wrappers.py")
    rf = read_run_file(run_dir / "run.h5")
    epochs = [e for e in range(10) for _ in range(3)]
    assert rf.values("MSE", "training")["step"].tolist() == epochs
    assert rf.values("MSE", "validation")["step"].tolist() == [e for e in range(10) for _ in range(2)]
    assert len(rf.values("MSELoss", "validation")) == 20
    # log_system_metrics("Training", step=epoch): yProv4ML's 16 series, in that context, at that step
    names = {name for ctx, name, _, _ in rf.series if ctx == "training"}
    assert set(YPROV_SYSTEM) <= names
    cpu = rf.values("cpu_usage_pct", "training")
    assert cpu["step"].tolist() == epochs
    assert np.all((cpu["value"] >= 0) & (cpu["value"] <= 100))
    ram = rf.values("ram_usage_gb", "training")["value"]
    assert np.all(ram > 0)
    # WeightDistributionTrackedModel.log_epoch: 7 statistics per weight layer per epoch, as an output artifact
    doc = graph(run_dir)
    dist = entity(doc, name="mnist_model", kind="artifact")
    with h5py.File(lit(dist["prov4ml:path"])) as f:
        assert f["epochs"][:].tolist() == list(range(10))
        assert sorted(f["layers"]) == ["model.0", "model.1", "model.2"] and f["layers/model.0"].shape == (
            10,
            7,
        )
    # log_model: yProv4ML's figures
    model = entity(doc, name="mnist_model", kind="model")
    params = 2 * (784 * 784 + 784) + 784 * 10 + 10
    assert lit(model["prov4ml:attr_total_params"]) == params
    assert lit(model["prov4ml:attr_memory_of_model"]) == pytest.approx(params * 4 / 1e6)
    assert model["prov4ml:context"] == "training"


# examples/cnn_training.py: CIFAR10 replaced by random 3x32x32 images, Subset sizes BATCH_SIZE*200/100 -> *2/*1.
EX_CNN = _script("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from tqdm import tqdm
    import sys
    sys.path.append("../yProv4ML")

    import yprov4ml

    yprov4ml.start_run(
        prov_user_namespace="www.example.org",
        experiment_name="experiment_name",
        provenance_save_dir="prov",
        save_after_n_logs=100,
        collect_all_processes=True,
        disable_codecarbon=True
    )

    PATH_DATASETS = "./data"
    BATCH_SIZE = 32
    EPOCHS = 5
    DEVICE = "cpu"

    class CNN(nn.Module):

        def __init__(self, out_classes=10):
            super().__init__()
            self.sequential = nn.Sequential(
                nn.Conv2d(3,20,5),
                nn.ReLU(),
                nn.Conv2d(20,64,5),
                nn.ReLU()
            )

            self.mlp = nn.Linear(36864, out_features=out_classes)

        def forward(self, x):
            x = self.sequential(x)
            x = x.reshape(x.shape[0], -1)
            x = self.mlp(x)
            return x


    model = CNN()

    train_ds = TensorDataset(torch.rand(BATCH_SIZE * 2, 3, 32, 32), torch.randint(0, 10, (BATCH_SIZE * 2,)))
    train_ds = Subset(train_ds, range(BATCH_SIZE*2))
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE)
    yprov4ml.log_dataset("train_loader", train_loader)


    test_ds = TensorDataset(torch.rand(BATCH_SIZE * 1, 3, 32, 32), torch.randint(0, 10, (BATCH_SIZE * 1,)))
    test_ds = Subset(test_ds, range(BATCH_SIZE*1))
    test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE)
    yprov4ml.log_dataset("test_loader", test_loader)

    optim = torch.optim.Adam(model.parameters(), lr=0.1)

    loss_fn = nn.MSELoss().to(DEVICE)

    losses = []
    for epoch in range(EPOCHS):
        model.train()
        for i, (x, y) in enumerate(tqdm(train_loader)):
            x, y = x.to(DEVICE), y.to(DEVICE)
            optim.zero_grad()
            y_hat = model(x)
            y = F.one_hot(y, 10).float()
            loss = loss_fn(y_hat, y)
            loss.backward()
            optim.step()
            losses.append(loss.item())

            # log system and carbon metrics (once per epoch), as well as the execution time
            yprov4ml.log_metric("MSE_train", loss.item(), context=yprov4ml.Contexts.TRAINING, step=epoch)
            # prov4ml.log_carbon_metrics(Contexts.TRAINING, step=epoch)
            yprov4ml.log_system_metrics(yprov4ml.Contexts.TRAINING, step=epoch)
        # save incremental model versions
        yprov4ml.save_model_version(f"mnist_model_version", model, yprov4ml.Contexts.MODELS, epoch)



    import matplotlib.pyplot as plt
    plt.plot(losses)
    plt.show()

    model.eval()
    avg_loss = 0
    total_correct = 0
    total_samples = 0
    for i, (x, y) in tqdm(enumerate(test_loader)):
        x, y = x.to(DEVICE), y.to(DEVICE)
        y_hat = model(x)
        y2 = F.one_hot(y, 10).float()
        loss = loss_fn(y_hat, y2)
        avg_loss += loss.item()

        _, predicted = torch.max(y2, 1)
        total_correct += (predicted == y).sum().item()
        total_samples += y.size(0)
        yprov4ml.log_metric("MSE_val", loss.item(), yprov4ml.Contexts.VALIDATION, step=epoch)

    yprov4ml.log_model("mnist_model_final", model, log_model_layers=True, is_input=False)

    avg_loss /= len(test_loader)
    acc = total_correct / total_samples

    print(f"Average loss: {avg_loss:.4f}, Accuracy: {acc:.4f}")

    yprov4ml.end_run(
        create_graph=True,
        create_svg=True,
    )
""")


def test_example_cnn_training(tmp_path):
    out, run_dir = run_script(tmp_path, EX_CNN, name="cnn_training.py")
    assert "Average loss:" in out
    rf = read_rank_file(run_dir / "ranks" / "rank-00000.h5")
    assert rf.values("MSE_train", "training")["step"].tolist() == [e for e in range(5) for _ in range(2)]
    assert rf.values("MSE_val", "validation")["step"].tolist() == [4]  # `epoch` after the loop, as written
    # save_model_version(name, model, Contexts.MODELS, epoch): 2.x's positional step; one file per version
    versions = [m for m in rf.records_of("model") if m["name"] == "mnist_model_version"]
    assert [(m["attrs"]["version"], m["step"], m["context"]) for m in versions] == [
        (e, e, "models") for e in range(5)
    ]
    assert [os.path.basename(m["path"]) for m in versions] == [
        f"mnist_model_version_{e}.pt" for e in range(5)
    ]
    final = [m for m in rf.records_of("model") if m["name"] == "mnist_model_final"][0]
    layers = json.loads((run_dir / final["attrs"]["layers_description_path"]).read_text())
    assert layers["sequential"]["0"] == {
        "layer_type": "<class 'torch.nn.modules.conv.Conv2d'>",
        "in_channels": "3",
        "out_channels": "20",
        "kernel_size": "(5, 5)",
        "stride": "(1, 1)",
        "padding": "(0, 0)",
        "dtype": "torch.float32",
    }
    # log_dataset without a context: the run's root (used by the rank activity itself)
    doc = graph(run_dir)
    used = relation(doc, "used", "prov:activity", "prov:entity")
    assert ("run:r00000.a0", "run:r00000.a0.dataset.train_loader") in used
    assert (run_dir / "provenance.svg").exists() and not (run_dir / "ro-crate-metadata.json").exists()


# ---- the same script through the drop-in and through the real yProv4ML 3.2.8 ----------------------------------
def test_same_record_as_real_yprov4ml(tmp_path):
    from prov4ml_hpc.compat.importer import import_yprov4ml

    text = (DATA / "gen_v3.py").read_text()
    _, run_dir = run_script(tmp_path, _script(text), "csv", name="gen_v3.py")
    ours = read_rank_file(run_dir / "ranks" / "rank-00000.h5")
    real_dir = import_yprov4ml(DATA / "v3_csv" / "fixture_csv_0", tmp_path / "imported")
    real = read_rank_file(os.path.join(real_dir, "ranks", "rank-00000.h5"))
    # the same series in the same contexts at the same steps (ours adds prov4ml-hpc's own "system" sample)
    our_series = {s for s in ours.series_names() if s[0] != "system"}
    assert our_series == set(real.series_names())
    for ctx, name in sorted(our_series):
        assert ours.values(name, ctx)["step"].tolist() == real.values(name, ctx)["step"].tolist(), (ctx, name)
    # the same values where the run is deterministic: FLOP running totals, the loss of the same seed, the root
    # context's and a custom context's values
    for ctx, name in [
        ("training", "flops_pb"),
        ("", "acc"),
        ("my_custom_ctx", "m"),
        ("validation", "val_loss"),
    ]:
        assert ours.values(name, ctx)["value"].tolist() == real.values(name, ctx)["value"].tolist(), name
    assert ours.values("flops_pb", "training")["value"].tolist() == [
        32.0,
        64.0,
    ]  # 4 x (4 x 2) multiply-adds, summed
    np.testing.assert_allclose(
        ours.values("MSE_loss", "training")["value"], real.values("MSE_loss", "training")["value"], rtol=1e-6
    )

    # parameters: the same values, contexts, roles and sources
    def params(rf):
        return {
            r["name"]: (r["value"], r["context"], r.get("role"), r.get("attrs", {}).get("source"))
            for r in rf.records_of("param")
        }

    mine, theirs = params(ours), params(real)
    assert mine["lr"] == theirs["lr"] == (0.01, "training", "input", "config")
    assert mine["optimizer"] == theirs["optimizer"] == ("SGD", None, "output", None)
    assert mine["layers"] == theirs["layers"] == ([4, 2], None, "output", None)
    assert theirs["execution_command"][0] == "python /workspace/fixture_csv_0/artifacts/gen_v3.py"
    assert (
        mine["execution_command"][0] == "python gen_v3.py"
    )  # the path as given, not a made-up /workspace one
    # the same checkpoint logged at each epoch: one record each, in both
    assert len([a for a in ours.records_of("artifact") if a["name"] == "ckpt"]) == 2
    assert len([a for a in real.records_of("artifact") if a["name"] == "ckpt"]) == 2
    # the dataset: yProv4ML's statistics; its total_samples (len x batch size) and total_batches (len) are the
    # documented difference: 16 samples in 4 batches of 4
    ds_ours, ds_real = (rf.records_of("dataset")[0]["attrs"] for rf in (ours, real))
    for key in ("stat_batch_size", "stat_num_workers", "stat_shuffle", "stat_total_steps"):
        assert ds_ours[key] == ds_real[key], key
    assert (ds_real["stat_total_samples"], ds_real["stat_total_batches"]) == (64, 16)
    assert (ds_ours["stat_total_samples"], ds_ours["stat_total_batches"]) == (16, 4)
    # log_model's figures
    final_ours = [m for m in ours.records_of("model") if m["name"] == "model_final"][0]["attrs"]
    final_real = [m for m in real.records_of("model") if m["name"] == "model_final.pt"][0]["attrs"]
    for key in ("total_params", "memory_of_model", "total_memory_load_of_model"):
        assert final_ours[key] == pytest.approx(final_real[key]), key


# ---- one call at a time, in this process ----------------------------------------------------------------------
@pytest.fixture
def yp(tmp_path, monkeypatch):
    from prov4ml_hpc.compat import yprov4ml

    monkeypatch.chdir(tmp_path)
    yprov4ml.start_run("unit", provenance_save_dir=str(tmp_path / "prov"), use_run_id=0)
    yield yprov4ml
    if p4.active_run() is not None:
        yprov4ml.end_run()


def _finish(yp) -> tuple[Path, dict]:
    run_dir = Path(yp.get_run_dir())
    yp.end_run()
    return run_dir, graph(run_dir)


def test_metrics_root_context_lists_timestamps_and_sources(yp):
    yp.log_metric("acc", 0.5)  # no context: the run's root context
    yp.log_metric("Indices", [1, 2, 3], context="Training", step=2)  # yProv4ML writes "[1, 2, 3]"
    yp.log_metric("Indices", torch.tensor([4, 5]), context="Training", step=3)
    yp.log_metric("t", 1.0, context="Training", timestamp=1_700_000_000_123)
    yp.log_metric("loss", 0.1, "Training", 7, "pytorch")
    yp.log_metrics({"a": 1.0, "b": 2.0}, context="Validation", step=1)
    run_dir, doc = _finish(yp)
    rf = read_run_file(run_dir / "run.h5")
    assert rf.values("acc", "")["step"].tolist() == [0]
    ind = rf.values("Indices", "training")
    assert list(zip(ind["step"].tolist(), ind["value"].tolist(), strict=True)) == [
        (2, 1),
        (2, 2),
        (2, 3),
        (3, 4),
        (3, 5),
    ]
    assert rf.values("t", "training")["time"].tolist() == [1_700_000_000.123]
    assert rf.values("b", "validation")["value"].tolist() == [2.0]
    gen = relation(doc, "wasGeneratedBy", "prov:entity", "prov:activity")
    assert ("run:r00000.a0.metric.-.acc", "run:r00000.a0") in gen  # hangs on the rank (root) activity itself
    assert not [a for a in doc["activity"] if a.endswith(".ctx.-")]  # no context activity for the root
    events = [
        r
        for r in read_rank_file(run_dir / "ranks" / "rank-00000.h5").records_of("event")
        if r["name"] == "metric_source"
    ]
    assert [e["attrs"] for e in events] == [{"metric": "loss", "source": "pytorch"}]


def test_params_roles_sources_and_contexts(yp):
    yp.log_param("lr", 0.01, context="Training", source="config", is_input=True)
    yp.log_param("layers", [1, 2, 3])
    yp.log_context("fine", "Training", source_of_data="loader")
    yp.create_context("finer", "fine")  # 2.x
    yp.log_metric("x", 1.0, context="finer")
    yp.log_execution_start_time()
    yp.log_execution_end_time()
    yp.log_current_execution_time("now", "Training", 3)
    _, doc = _finish(yp)
    lr = entity(doc, name="lr")
    assert (lit(lr["prov:value"]), lr["prov4ml:role"], lr["prov4ml:attr_source"]) == (0.01, "input", "config")
    used = relation(doc, "used", "prov:activity", "prov:entity")
    assert ("run:r00000.a0.ctx.training", "run:r00000.a0.param.training.lr") in used  # used by its context
    assert entity(doc, name="layers")["prov:value"] == "[1,2,3]"
    informed = relation(doc, "wasInformedBy", "prov:informed", "prov:informant")
    assert ("run:r00000.a0.ctx.fine", "run:r00000.a0.ctx.training") in informed
    assert ("run:r00000.a0.ctx.finer", "run:r00000.a0.ctx.fine") in informed
    start, end = (
        lit(entity(doc, name=n)["prov:value"]) for n in ("execution_start_time", "execution_end_time")
    )
    assert time.time() - 60 < start <= end <= time.time()
    assert time.time() - 60 < lit(entity(doc, name="now", context="training")["prov4ml:last"]) <= time.time()


def test_artifacts_missing_file_copy_name_and_models(yp, tmp_path):
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        yp.log_artifact("missing", "nope.bin")
    rec = yp.log_artifact(
        "data", "data.csv", context=yp.Context.TRAINING, is_input=True, log_copy_subdirectory="raw"
    )
    assert rec["copy"] == "artifacts/rank-00000/raw/data.csv" and len(rec["sha256"]) == 64
    assert (Path(yp.get_run_dir()) / rec["copy"]).read_text() == "x,y\n1,2\n"
    again = yp.log_artifact("data", "data.csv", "Training", 3)  # 2.x positional step
    assert (again["step"], again["attrs"], again["copy"]) == (3, {}, "artifacts/rank-00000/data.csv")
    model = torch.nn.Linear(4, 2)
    v0 = yp.save_model_version("m", model, "Training", 0)  # 2.x positional step
    v1 = yp.save_model_version("m", model, "Training", step=1)
    assert (v0["attrs"]["version"], v0["step"], v1["attrs"]["version"]) == (0, 0, 1)
    assert v1["path"].endswith("artifacts/rank-00000/m/m_1.pt") and os.path.getsize(v1["path"]) == v1["size"]
    assert yp.functs.get_artifacts_dir().endswith("artifacts/rank-00000")
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "prov"]


def test_flop_totals_in_fvcore_units(yp):
    model = torch.nn.Sequential(torch.nn.Linear(28 * 28, 10), torch.nn.ReLU())
    data = torch.utils.data.TensorDataset(torch.rand(160, 784), torch.zeros(160))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    batch = next(iter(loader))
    for step in range(2):
        yp.log_flops_per_batch("flops_pb", model, batch, "Training", step=step)
        yp.log_flops_per_epoch("flops_pe", model, data, "Training", step=step)
    yp.log_flops_per_epoch("flops_loader", model, loader, "Training", step=0)  # yProv4ML: TypeError
    run_dir, _ = _finish(yp)
    rf = read_run_file(run_dir / "run.h5")
    # yProv4ML 3.2.8 logged 250880, 501760 and 1254400, 2508800 for this model (784 x 10 multiply-adds per sample)
    assert rf.values("flops_pb", "training")["value"].tolist() == [250880.0, 501760.0]
    assert rf.values("flops_pe", "training")["value"].tolist() == [1254400.0, 2508800.0]
    # a DataLoader counts its dataset; the epoch total is one counter for every label, as in yProv4ML
    assert rf.values("flops_loader", "training")["value"].tolist() == [2508800.0 + 1254400.0]


def test_system_metrics_from_our_sources(yp, tmp_path):
    from test_samplers import FakeNvml, make_zone

    from prov4ml_hpc.compat import yprov_run, yprov_system

    zone = make_zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1_000_000)
    dram = make_zone(tmp_path / "powercap", "intel-rapl:0:0", "dram", 2_000_000)
    run = p4.active_run()
    # NVML and RAPL replayed (this machine has neither): the documented values of an H100 and of sysfs counters
    yprov_run.STATE.tracker = yprov_system.Tracker(
        run, nvml=FakeNvml.load("two_h100.json"), rapl_root=str(tmp_path / "powercap")
    )
    assert yprov_run.STATE.tracker.mode == "RAPL+NVML"
    yp.log_system_metrics("Training", step=0)  # sets the energy baselines
    (zone / "energy_uj").write_text("4000000\n")  # +3 J
    (dram / "energy_uj").write_text("2500000\n")  # +0.5 J
    yp.log_system_metrics("Training", step=1)
    run_dir, _ = _finish(yp)
    rf = read_run_file(run_dir / "run.h5")

    def v(name):
        return rf.values(name, "training")["value"].tolist()

    assert rf.values("gpu_usage_pct", "training")["step"].tolist() == [0, 1]
    assert v("gpu_usage_pct") == [97.0, 97.0] and v("gpu_power") == [612.345, 612.345]
    assert v("gpu_temperature_c") == [58.0, 58.0]
    assert v("gpu_memory_usage_gb") == pytest.approx([61203283968 / 2**30] * 2)
    assert v("gpu_memory_usage_pct") == pytest.approx([61203283968 / 85520809984 * 100] * 2)
    assert math.isnan(v("gpu_energy")[0]) and v("gpu_energy")[1] == pytest.approx(612.345)
    assert math.isnan(v("cpu_energy")[0]) and v("cpu_energy")[1] == pytest.approx(3.0)
    assert v("ram_energy")[1] == pytest.approx(0.5) and v("cpu_power")[1] > 0
    assert all(math.isnan(x) for x in v("gpu_memory_power"))  # not measured (yProv4ML writes an estimate)
    src = {
        r["attrs"]["source"]
        for r in read_rank_file(run_dir / "ranks" / "rank-00000.h5").records_of("event")
        if r["name"] == "metric_source"
    }
    assert src == {"RAPL+NVML"}


def test_carbon_metrics(yp):
    from types import SimpleNamespace

    from prov4ml_hpc.rank.samplers.energy import CodeCarbonSource

    yp.log_carbon_metrics("Training", step=0)  # no codecarbon reading here: NaN, said once
    run = p4.active_run()
    source = CodeCarbonSource(run.recorder, "node")
    # the fields of codecarbon's EmissionsData that yProv4ML 2.x logs (codecarbon is not run here)
    source._handler = SimpleNamespace(
        last=SimpleNamespace(
            emissions=0.002, emissions_rate=1e-5, cpu_power=42.0, gpu_power=250.0, ram_power=10.0,
            cpu_energy=0.01, gpu_energy=0.05, ram_energy=0.002, energy_consumed=0.062,
        )
    )  # fmt: skip
    run.sampler = SimpleNamespace(sources=[source], stop=lambda timeout=None: True, sample_once=lambda: None)
    yp.log_carbon_metrics("Training", step=1)
    run.sampler = None
    run_dir, _ = _finish(yp)
    rf = read_run_file(run_dir / "run.h5")
    emissions = rf.values("emissions", "training")
    assert (
        emissions["step"].tolist() == [0, 1]
        and math.isnan(emissions["value"][0])
        and emissions["value"][1] == 0.002
    )
    assert rf.values("energy_consumed", "training")["value"][1] == 0.062
    assert rf.values("gpu_power", "training")["value"][1] == 250.0


def test_getters_read_our_graph_and_values(yp):
    for step in range(3):
        yp.log_metric("loss", 1.0 / (step + 1), context="Training", step=step)
    yp.log_param("lr", 0.01)
    run_dir, _ = _finish(yp)
    g = yp.getters
    path = str(run_dir / "provenance.json")
    metrics = g.list_entities(path, "provml:Metric")
    assert metrics == ["run:r00000.a0.metric.training.loss"]
    assert g.list_parameters(path) == {"lr": 0.01}
    assert g.get_parameter(path, "lr", "value") == 0.01
    df = g.get_metric(path, "loss", context="training")
    assert list(df.columns) == ["epoch", "value", "timestep"] and df["value"].tolist() == [1.0, 0.5, 1 / 3]
    assert g.list_provjson_in_proj(run_dir.parent) == [run_dir / "provenance.json"]


def test_names_of_every_version_and_the_alias():
    from prov4ml_hpc.compat import yprov4ml

    class Old(__import__("enum").Enum):
        TRAINING = 0

    assert yprov4ml.ctx(None) == "" and yprov4ml.ctx(None, None) is None
    assert yprov4ml.ctx(yprov4ml.Context.VALIDATION) == "validation"
    assert yprov4ml.ctx(Old.TRAINING) == "training" and yprov4ml.ctx("Context.TRAINING") == "training"
    assert (
        yprov4ml.ctx("Training") == "training"
        and yprov4ml.ctx("TrainingButDifferent") == "TrainingButDifferent"
    )
    assert yprov4ml.Contexts.MODELS == "models" and yprov4ml.Context.DATASETS == "datasets"
    assert (
        yprov4ml.MetricsType.NETCDF.value == "netcdf"
        and yprov4ml.CompressorType.BLOSC_ZSTD.value == "blosc_zstd"
    )
    assert callable(yprov4ml.functs.get_run_dir) and callable(yprov4ml.getters.get_metric)
    assert issubclass(yprov4ml.ProvenanceTrackedModel, torch.nn.Module)
    saved = {
        k: sys.modules.pop(k)
        for k in ("yprov4ml", "yprov4ml.functs", "yprov4ml.utils", "yprov4ml.utils.getters")
        if k in sys.modules
    }
    try:
        yprov4ml.install_alias()
        import yprov4ml as alias
        from yprov4ml.functs import get_run_dir
        from yprov4ml.utils import getters  # noqa: F401

        assert alias is yprov4ml and get_run_dir is yprov4ml.get_run_dir
    finally:
        for k in ("yprov4ml", "yprov4ml.functs", "yprov4ml.utils", "yprov4ml.utils.getters"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def test_calls_without_a_run_raise_the_usual_error(tmp_path):
    from prov4ml_hpc.compat import yprov4ml

    assert p4.active_run() is None
    for call in (
        lambda: yprov4ml.log_metric("x", 1.0),
        lambda: yprov4ml.log_param("x", 1),
        lambda: yprov4ml.log_artifact("x", str(tmp_path)),
        lambda: yprov4ml.log_system_metrics(),
    ):
        with pytest.raises(p4.NoActiveRunError):
            call()
    assert yprov4ml.end_run() is None


def test_log_source_code_with_git(tmp_path):
    repo = tmp_path / "proj"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text(
        "import sys\n" + DROPIN + "\n"
        "yprov4ml.start_run('git', provenance_save_dir=sys.argv[1])\n"
        "yprov4ml.log_source_code(True)\n"  # 3.x: use_git positional
        "yprov4ml.end_run()\n"
    )
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "train.py"], ["commit", "-qm", "x"]):
        subprocess.run(git + args, check=True, capture_output=True)
    subprocess.run(
        git + ["remote", "add", "origin", "https://user:secret@example.org/team/proj.git"], check=True
    )
    commit = subprocess.run(
        git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    e = clean_env()
    e["PYTHONPATH"] = str(Path(__file__).parent.parent)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "prov")], cwd=repo, env=e, check=True, timeout=120
    )
    (rank,) = glob.glob(str(tmp_path / "prov" / "git" / "*" / "ranks" / "rank-00000.h5"))
    params = read_rank_file(rank).params
    assert params["source_code"] == f"https://example.org/team/proj.git/{commit}"
    assert "secret" not in Path(rank).read_bytes().decode("latin-1")


@pytest.mark.mpi
def test_mpi_ranks_and_exports_after_the_gather(tmp_path):
    from conftest import run_mpi

    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\n" + DROPIN + "\n"
        "yprov4ml.start_run('mpi', provenance_save_dir=sys.argv[1], collect_all_processes=False)\n"
        "rank = yprov4ml.functs.get_run_dir()\n"
        "for step in range(3):\n"
        "    yprov4ml.log_metric('loss', 1.0 / (step + 1), context='Training', step=step)\n"
        "yprov4ml.end_run(create_graph=True, create_svg=True, crate_ro_crate=True)\n"
    )
    e = clean_env()
    e["PYTHONPATH"] = str(Path(__file__).parent.parent)
    run_mpi(2, [str(script), str(tmp_path / "prov")], env=e, timeout=180)
    (run_dir,) = glob.glob(str(tmp_path / "prov" / "mpi" / "*"))
    names = sorted(os.listdir(run_dir))
    assert {"provenance.json", "provenance.dot", "provenance.svg", "ro-crate-metadata.json", "run.h5"} <= set(
        names
    )
    rf = read_run_file(os.path.join(run_dir, "run.h5"))
    assert [rf.values("loss", "training", r)["step"].tolist() for r in (0, 1)] == [[0, 1, 2], [0, 1, 2]]
    assert re.search(r"rank 1", (Path(run_dir) / "provenance.svg").read_text())
