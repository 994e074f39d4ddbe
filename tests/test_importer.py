"""import_yprov4ml on a run directory laid out as yProv4ML 3.x writes it (built here from its format)."""

from __future__ import annotations

import json
import math
import os

import pytest

from prov4ml_hpc.compat.importer import import_yprov4ml
from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.merge.reader import read_rank_file

T0 = 1_700_000_000_000  # Unix ms


def _prov_json(exp: str, rank: int, n: int) -> dict:
    root = f"{exp}_GR{rank}_{n}"
    return {
        "prefix": {
            "yprov": "https://github.com/HPCI-Lab/yProv4ML",
            "provml": "prov-ml",
            "default": root,
            "xsd": "http://www.w3.org/2000/10/XMLSchema#",
        },
        "agent": {"alice": {}},
        "activity": {
            root: {
                "yprov:experiment_name": root,
                "yprov:run_id": {"$": n, "type": "xsd:int"},
                "yprov:python_version": "3.12.1 (main) [GCC]",
                "yprov:global_rank": {"$": rank, "type": "xsd:int"},
                "prov:startedAtTime": {"$": "2023-11-14T22:13:20", "type": "xsd:dateTime"},
                "prov:endedAtTime": "2023-11-14T22:20:00^^xsd:dateTime",
            },
            "Training": {"prov:startedAtTime": "{'$': '2023-11-14T22:13:21', 'type': 'xsd:dateTime'}"},
        },
        "entity": {
            "lr": {"prov:type": "provml:HyperParameter", "prov:label": "lr", "prov:value": "0.01"},
            "optimizer": {
                "prov:type": "provml:HyperParameter",
                "prov:label": "optimizer",
                "prov:value": "Adam",
            },
            "model_final//Training": {
                "prov:type": "provml:Model",
                "prov:label": "model_final//Training",
                "dcterms:identifier": "prov/ex_0/artifacts_GR0/model_final.pt",
                "yprov:file_size": {"$": 1234, "type": "xsd:int"},
                "prov:role": "output",
            },
            "train_dataset//Training": {
                "prov:type": "provml:Dataset",
                "prov:label": "train_dataset",
                "yprov:total_samples": "60000",
            },
            "data.csv//Training": {
                "prov:label": "data.csv//Training",
                "dcterms:identifier": "data.csv",
                "prov:role": "input",
            },
            "MSE_loss//Training": {
                "prov:type": "provml:Metric",
                "prov:label": "MSE_loss//Training",
                "yprov:context": "Training",
                "yprov:source": "std.time",
                "dcterms:identifier": f"prov/{exp}_{n}/metrics_GR{rank}/MSE_loss_Training_std.time_GR{rank}.csv",
            },
        },
    }


@pytest.fixture
def yprov_run(tmp_path):
    """ex_3/: rank 0 complete (csv with name,context,source header + a NetCDF4 file), rank 1 crashed (no JSON,
    csv with an epoch,value,timestep header and a missing value)."""
    src = tmp_path / "prov" / "ex_3"
    m0, m1 = src / "metrics_GR0", src / "metrics_GR1"
    m0.mkdir(parents=True)
    m1.mkdir()
    (src / "artifacts_GR0").mkdir()
    (src / "prov_ex_GR0_3.json").write_text(json.dumps(_prov_json("ex", 0, 3)))
    lines = ["MSE_loss,Training,std.time"] + [
        f"{e},{0.5 / (i + 1)},{T0 + 1000 * i}" for i, e in enumerate([0, 0, 1, 1])
    ]
    (m0 / "MSE_loss_Training_std.time_GR0.csv").write_text("\n".join(lines) + "\n")
    (m1 / "acc_Validation_pytorch_GR1.csv").write_text(
        f"epoch,value,timestep\n0,0.5,{T0}\n1,None,{T0 + 5000}\n2,0.75,{T0 + 9000}\n"
    )
    (m1 / "broken_Training_x_GR1.zarr").mkdir()
    import h5py
    import numpy as np

    with h5py.File(m0 / "gpu_power_Training_codecarbon_GR0.nc", "w") as f:  # NetCDF4 is HDF5 underneath
        f.create_dataset("epochs", data=np.array([0, 1, 2], dtype="i4"))
        f.create_dataset("values", data=np.array([100.0, 110.5, 120.25], dtype="f4"))
        f.create_dataset("timestamps", data=np.array([T0, T0 + 1, T0 + 2], dtype="i8"))
    return src


def test_import_yprov4ml_run(yprov_run, tmp_path):
    before = sorted(str(p) for p in yprov_run.rglob("*"))
    run_dir = import_yprov4ml(yprov_run, tmp_path / "runs")
    assert run_dir == str(tmp_path / "runs" / "ex" / "yprov4ml-ex_3")
    assert sorted(str(p) for p in yprov_run.rglob("*")) == before, "the source is left as it was"
    r0 = read_rank_file(os.path.join(run_dir, "ranks", "rank-00000.h5"))
    r1 = read_rank_file(os.path.join(run_dir, "ranks", "rank-00001.h5"))
    assert (r0.status, r1.status) == (
        "completed",
        "running",
    )  # rank 1 never wrote its graph: merge says partial
    assert r0.attrs["world_size"] == r1.attrs["world_size"] == 2
    assert r0.attrs["run_id"] == r1.attrs["run_id"] == "yprov4ml-ex_3"
    assert r0.attrs["user"] == "alice" and r0.attrs["python_version"] == "3.12.1"
    loss = r0.values("MSE_loss", "training")
    assert loss["step"].tolist() == [0, 0, 1, 1]
    assert loss["value"].tolist() == [0.5, 0.25, 0.5 / 3, 0.125]
    assert loss["time"].tolist() == [T0 / 1000 + i for i in range(4)]
    power = r0.values("gpu_power", "training")
    assert power["value"].tolist() == [100.0, 110.5, 120.25] and power["step"].tolist() == [0, 1, 2]
    acc = r1.values("acc", "validation")
    assert acc["step"].tolist() == [0, 1, 2] and math.isnan(acc["value"][1]) and acc["value"][2] == 0.75
    assert r0.params == {"lr": 0.01, "optimizer": "Adam"}
    model = r0.records_of("model")[0]
    assert (
        model["name"] == "model_final//Training" and model["size"] == 1234 and model["context"] == "training"
    )
    assert r0.records_of("dataset")[0]["name"] == "train_dataset"
    art = r0.records_of("artifact")[0]
    assert art["role"] == "input" and art["path"] == "data.csv"
    sources = [r for r in r0.records_of("event") if r["name"] == "metric_source"]
    assert sources[0]["attrs"]["source"] == "std.time"
    assert any("zarr" in r["message"] for r in r1.records_of("problem"))
    assert r0.attrs["start_time_unix"] < r0.attrs["end_time_unix"]


def test_import_refuses_to_overwrite_and_non_yprov_dirs(yprov_run, tmp_path):
    import_yprov4ml(yprov_run, tmp_path / "runs", experiment="renamed")
    with pytest.raises(ConfigError, match="imported before"):
        import_yprov4ml(yprov_run, tmp_path / "runs", experiment="renamed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a yProv4ML run directory"):
        import_yprov4ml(tmp_path / "empty", tmp_path / "runs")
    with pytest.raises(ConfigError, match="not a directory"):
        import_yprov4ml(tmp_path / "nope", tmp_path / "runs")


def test_metric_file_names_with_underscores(tmp_path):
    src = tmp_path / "my_exp_0"
    (src / "metrics_GR0").mkdir(parents=True)
    (src / "metrics_GR0" / "val_top_1_acc_Validation_my_source_GR0.csv").write_text(f"0,1.0,{T0}\n")
    run_dir = import_yprov4ml(src, tmp_path / "runs")
    rf = read_rank_file(os.path.join(run_dir, "ranks", "rank-00000.h5"))
    assert rf.series_names() == [("validation", "val_top_1_acc")]
    assert rf.status == "running" and rf.attrs["experiment"] == "my_exp"
