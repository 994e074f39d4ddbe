"""import_yprov4ml on run directories written by the real yProv4ML 3.2.8 and 2.0.10 (tests/data/yprov4ml, made
once by its gen_v3.py / gen_v2.py as its README says), merged and read back; plus edge cases built from them."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from prov4ml_hpc.cli import main
from prov4ml_hpc.compat.importer import import_yprov4ml, split_stem
from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.merge import merge_run
from prov4ml_hpc.merge.reader import read_rank_file

DATA = Path(__file__).parent / "data" / "yprov4ml"
V3_CSV = DATA / "v3_csv" / "fixture_csv_0"  # 2 ranks; rank 1 was SIGKILLed in its second epoch
V3_NC = DATA / "v3_nc" / "fixture_nc_0"
V2 = DATA / "v2" / "fixture_v2_0"


def _tree(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())


def _ranks(run_dir: str):
    return [read_rank_file(os.path.join(run_dir, "ranks", f"rank-{r:05d}.h5")) for r in range(2)]


def _graph(run_dir: str) -> dict:
    return json.loads(Path(run_dir, "provenance.json").read_text())


def test_real_3x_csv_run_with_a_killed_rank(tmp_path):
    before = _tree(V3_CSV)
    run_dir = import_yprov4ml(V3_CSV, tmp_path / "runs")
    assert run_dir == str(tmp_path / "runs" / "fixture_csv" / "yprov4ml-fixture_csv_0")
    assert _tree(V3_CSV) == before, "the source is left as it was"
    r0, r1 = _ranks(run_dir)
    assert (r0.status, r1.status) == ("completed", "running")  # rank 1 never wrote its graph
    assert r0.attrs["world_size"] == r1.attrs["world_size"] == 2
    assert (r0.attrs["user"], r0.attrs["node"], r0.attrs["python_version"]) == ("root", "vm", "3.12.1")
    # yProv4ML's local times with its time_zone "UTC+0000"
    assert r0.attrs["start_time"] == "2026-12-01T22:32:12.719057+00:00"
    assert r0.attrs["end_time"] == "2026-12-01T22:32:18.001366+00:00"
    # every metric file split as the PROV-JSON names it, also without a context or with '_' everywhere
    assert set(r0.series_names()) >= {
        ("", "acc"),  # acc_fixture_csv_GR0_0_None_GR0.csv: the run's root context
        ("my_custom_ctx", "m"),  # m_my_custom_ctx_None_GR0.csv
        ("training", "MSE_loss"),
        ("training", "CrossEntropyLoss"),
        ("training", "flops_pb"),  # ..._Training_fvcore.nn.FlopCountAnalysis_GR0.csv
        ("validation", "gpu_memory_usage_pct"),
    }
    assert len(r0.series_names()) == 22
    assert r0.values("acc", "")["value"].tolist() == [0.5, 0.75]
    assert r0.values("flops_pb", "training")["value"].tolist() == [32.0, 64.0]
    assert math.isnan(r0.values("cpu_energy", "validation")["value"][0])  # written "None"
    # the killed rank: what it flushed (every 4 values) survives, split with the contexts the other rank names
    assert set(r1.series_names()) == {("training", "MSE_loss"), ("training", "CrossEntropyLoss")}
    assert r1.values("MSE_loss", "training")["step"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert r1.records_of("problem") == []
    # parameters with their context, role and source; a list value kept
    params = {r["name"]: r for r in r0.records_of("param")}
    assert (params["lr"]["value"], params["lr"]["context"], params["lr"]["role"]) == (
        0.01,
        "training",
        "input",
    )
    assert params["lr"]["attrs"] == {"source": "config"}
    assert params["layers"]["value"] == [4, 2] and params["optimizer"]["role"] == "output"
    # the same checkpoint logged at both epochs: a list-valued entity, one record each
    ckpt = [a for a in r0.records_of("artifact") if a["name"] == "ckpt"]
    assert len(ckpt) == 2 and ckpt[0]["time"] < ckpt[1]["time"] and ckpt[0]["size"] == 1869
    # a copied file (Original_<name> + <name>) is one record: the original path, the copy as an attribute
    model = [m for m in r0.records_of("model") if m["name"] == "model_final.pt"][0]
    assert model["path"] == "model_final.pt"
    assert model["attrs"]["yprov4ml_copy"] == "prov/fixture_csv_0/artifacts_GR0/model_final/model_final.pt"
    assert model["attrs"]["total_params"] == 10
    ds = r0.records_of("dataset")[0]
    assert (ds["name"], ds["context"], ds["attrs"]["stat_batch_size"], ds["attrs"]["stat_shuffle"]) == (
        "train_dataset", "training", 4, True,
    )  # fmt: skip
    # merge: one graph with the context hierarchy and the parameters' roles
    result = merge_run(run_dir, query_slurm=False)
    assert result.exit_code == 1 and "partial ranks/rank-00001.h5" in result.problems[0]
    doc = _graph(run_dir)
    informed = {(r["prov:informed"], r["prov:informant"]) for r in doc["wasInformedBy"].values()}
    assert ("run:r00000.a0.ctx.TrainingButDifferent", "run:r00000.a0.ctx.training") in informed
    gen = {(r["prov:entity"], r["prov:activity"]) for r in doc["wasGeneratedBy"].values()}
    assert ("run:r00000.a0.metric.-.acc", "run:r00000.a0") in gen
    assert ("run:r00000.a0.param.--.optimizer", "run:r00000.a0") in gen


def test_real_3x_netcdf_run(tmp_path):
    run_dir = import_yprov4ml(V3_NC, tmp_path / "runs", experiment="renamed")
    assert run_dir == str(tmp_path / "runs" / "renamed" / "yprov4ml-fixture_nc_0")
    rf = read_rank_file(os.path.join(run_dir, "ranks", "rank-00000.h5"))
    assert rf.status == "completed" and len(rf.series_names()) == 22
    loss = rf.values("MSE_loss", "training")
    assert len(loss) == 8 and loss["step"].tolist() == [0] * 4 + [1] * 4
    assert loss["time"][0] == 1796164346.571  # timestamps (ms) as written
    assert rf.values("m", "my_custom_ctx")["value"].tolist() == [0.0, 1.0]
    assert merge_run(run_dir, query_slurm=False).exit_code == 0


def test_real_2x_run(tmp_path):
    run_dir = import_yprov4ml(V2, tmp_path / "runs")
    rf = read_rank_file(os.path.join(run_dir, "ranks", "rank-00000.h5"))
    # 2.x keeps parameters as attributes of its context activities and its times as parameters
    assert rf.params == {
        "execution_start_time": 1796164356.6967504,
        "lr": 0.01,
        "optimizer": "SGD",
        "execution_end_time": 1796164356.7418756,
    }
    assert (
        rf.attrs["start_time_unix"] == 1796164356.6967504 and rf.attrs["end_time_unix"] == 1796164356.7418756
    )
    assert set(rf.series_names()) == {
        ("training", "Loss"),  # Loss_Context.TRAINING_GR0.csv, header "Loss,Context.TRAINING,None"
        ("validation", "Acc"),
        ("training", "flops_pb"),
        ("training", "train_step"),
        ("", "nocontext"),  # nocontext_fixture_v2_GR0_0_GR0.csv: the root context
    }
    assert rf.values("flops_pb", "training")["value"].tolist() == [32.0, 64.0]  # 4 x (4 x 2), summed
    models = {m["name"]: m for m in rf.records_of("model")}
    assert sorted(models) == ["model_final", "model_version_0", "model_version_1"]
    assert (
        models["model_final"]["context"] == "models" and models["model_final"]["attrs"]["total_params"] == 10
    )
    ds = rf.records_of("dataset")[0]
    assert (ds["name"], ds["context"], ds["attrs"]["stat_batch_size"]) == ("train_dataset", "datasets", 4)
    events = [e for e in rf.records_of("event") if e["name"] == "context"]
    assert [(e["context"], e["attrs"]["parent"]) for e in events] == [("TrainingLOD2", "training")]
    arts = rf.records_of("artifact")
    assert [(a["name"], a["path"]) for a in arts] == [("requirements.txt", "requirements.txt")]
    assert rf.records_of("event")[0]["attrs"]["from"] == "yprov4ml 2.x"
    assert merge_run(run_dir, query_slurm=False).exit_code == 0


def test_refusals(tmp_path):
    import_yprov4ml(V3_NC, tmp_path / "runs")
    with pytest.raises(ConfigError, match="imported before"):
        import_yprov4ml(V3_NC, tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a yProv4ML run directory"):
        import_yprov4ml(tmp_path / "empty", tmp_path / "runs")
    with pytest.raises(ConfigError, match="not a directory"):
        import_yprov4ml(tmp_path / "nope", tmp_path / "runs")
    other = tmp_path / "other_0"
    other.mkdir()
    (other / "prov_other_GR0_0.json").write_text(
        json.dumps({"prefix": {"ex": "http://example.org/"}, "entity": {}})
    )
    with pytest.raises(ConfigError, match="not yProv4ML 3.x output .* nor 2.x output"):
        import_yprov4ml(other, tmp_path / "runs")
    assert not (tmp_path / "runs" / "other").exists()  # nothing written for a refused directory


def test_metric_file_names_without_the_graph(tmp_path):
    """The killed rank's case, alone: no PROV-JSON anywhere, the file names are all there is."""
    src = tmp_path / "my_exp_3"
    shutil.copytree(V3_CSV / "metrics_GR0", src / "metrics_GR0")
    (src / "metrics_GR0" / "acc_edge_GR0_0_None_GR0.csv").write_text(
        "epoch,value,timestep\n0,0.5,1700000000000\n"
    )
    run_dir = import_yprov4ml(src, tmp_path / "runs")
    rf = read_rank_file(os.path.join(run_dir, "ranks", "rank-00000.h5"))
    names = set(rf.series_names())
    assert {("training", "MSE_loss"), ("", "acc"), ("validation", "cpu_usage_pct")} <= names
    assert ("training", "flops_pb") in names
    # neither the graph nor the file says what "acc_edge_GR0_0" or "m_my_custom_ctx" are: reported, not guessed
    problems = " ".join(p["message"] for p in rf.records_of("problem"))
    assert "acc_edge_GR0_0_None_GR0.csv" in problems and "m_my_custom_ctx_None_GR0.csv" in problems
    assert rf.status == "running"


def test_split_stem():
    known = {"Training", "my_custom_ctx", "edge_GR0_0"}
    assert split_stem("acc_edge_GR0_0_None", known, "edge_GR0_0", False) == (
        "acc",
        "edge_GR0_0",
        "None",
        True,
    )
    assert split_stem("m_my_custom_ctx_None", known, "x_GR0_0", False) == ("m", "my_custom_ctx", "None", True)
    assert split_stem("MSE_loss_Training_std.time", known, "x_GR0_0", False)[:3] == (
        "MSE_loss",
        "Training",
        "std.time",
    )
    assert split_stem("Loss_Context.TRAINING", set(), "x_GR0_0", True)[:2] == ("Loss", "Context.TRAINING")
    assert split_stem("a_b_c_d", set(), "x_GR0_0", False) == ("a_b", "c", "d", False)


def test_cli_import_and_merge(tmp_path):
    result = CliRunner().invoke(main, ["import-yprov4ml", str(V2), "--run-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = result.output.strip().splitlines()[-1]
    assert run_dir == str(tmp_path / "runs" / "fixture_v2" / "yprov4ml-fixture_v2_0")
    assert os.path.exists(os.path.join(run_dir, "provenance.json")) and os.path.exists(
        os.path.join(run_dir, "run.h5")
    )
    again = CliRunner().invoke(main, ["import-yprov4ml", str(V2), "--run-dir", str(tmp_path / "runs")])
    assert again.exit_code == 1 and "imported before" in again.output
