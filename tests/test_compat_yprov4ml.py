"""The yProv4ML 3.x drop-in: a script written for yProv4ML runs unchanged except for its import line."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest

# A training script in yProv4ML 3.x style (calls as in its README/examples), no torch needed.
YPROV_SCRIPT = textwrap.dedent("""
    import random
    import sys
    import prov4ml_hpc.compat.yprov4ml as yprov4ml   # was: import yprov4ml

    yprov4ml.start_run(
        prov_user_namespace="www.example.org",
        experiment_name="example exp",
        provenance_save_dir=sys.argv[1],
        save_after_n_logs=100,
        collect_all_processes=True,
        metrics_file_type="nc",
        use_compressor=True,
        disable_codecarbon=True,
    )
    yprov4ml.log_source_code()
    yprov4ml.log_execution_command(cmd="python", path="train.py")
    yprov4ml.log_param("dataset transformation", object())
    yprov4ml.log_param("lr", 0.01)
    yprov4ml.log_context("TrainingButDifferent", "Training")
    with open("data.csv", "w") as f:
        f.write("x,y\\n1,2\\n")
    yprov4ml.log_dataset("train_dataset", [1, 2, 3], context="Training")
    yprov4ml.log_artifact("data", "data.csv", context=yprov4ml.Context.TRAINING, is_input=True)
    for epoch in range(3):
        for i in range(5):
            yprov4ml.log_metric("MSE", random.random(), context=yprov4ml.Context.TRAINING, step=epoch,
                                source="pytorch", timestamp=1700000000000)
        yprov4ml.log_metric("MSE", 0.5, "Validation", step=epoch)
        yprov4ml.log_system_metrics("Training", step=epoch)
        yprov4ml.log_carbon_metrics("Training", step=epoch)
        yprov4ml.log_current_execution_time("train_epoch_time", "Training", epoch)
    yprov4ml.log_metric("no_step", 1.0)
    yprov4ml.end_run(create_graph=True, create_svg=True, crate_ro_crate=True)
    print("OK")
""")

TORCH_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import prov4ml_hpc.compat.yprov4ml as yprov4ml

    yprov4ml.start_run("torch_exp", provenance_save_dir=sys.argv[1], collect_all_processes=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 4)), batch_size=4)
    yprov4ml.log_dataset("train", loader, context="training")
    yprov4ml.log_model("mnist_model", model, log_model_layers=True)
    for epoch in range(2):
        yprov4ml.save_model_version("mnist_model_version", model, "training", epoch)
        yprov4ml.log_flops_per_batch("flops_batch", model, (torch.randn(4, 4),), "training", step=epoch)
    yprov4ml.log_flops_per_epoch("flops_epoch", model, loader, context="training", step=0)
    yprov4ml.end_run()
""")


def _run(tmp_path, script_text):
    script = tmp_path / "train.py"
    script.write_text(script_text)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PMIX_", "PROV4ML_HPC_"))
    }
    env["PROV4ML_HPC_SYSTEM_METRICS"] = "0"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "prov")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = glob.glob(str(tmp_path / "prov" / "*" / "*" / "ranks" / "rank-*.h5"))
    assert len(files) == 1, files
    from prov4ml_hpc.merge.reader import read_rank_file

    return proc, read_rank_file(files[0])


def test_yprov4ml_script_runs_unchanged(tmp_path):
    proc, rf = _run(tmp_path, YPROV_SCRIPT)
    assert "OK" in proc.stdout
    assert rf.status == "completed"
    assert rf.attrs["experiment"] == "example_exp"
    mse = rf.values("MSE", "training")
    assert mse["step"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert rf.values("MSE", "validation")["value"].tolist() == [0.5, 0.5, 0.5]
    assert rf.values("no_step", "training")["step"].tolist() == [0]
    assert len(rf.values("train_epoch_time", "training")) == 3
    assert rf.params["lr"] == 0.01
    assert rf.params["dataset transformation"].startswith("<object object")
    events = {r["name"]: r for r in rf.records_of("event")}
    assert events["yprov4ml_start_run"]["attrs"]["prov_user_namespace"] == "www.example.org"
    assert events["yprov4ml_start_run"]["attrs"]["disable_codecarbon"] is True
    assert events["execution_command"]["attrs"] == {"command": "python", "path": "train.py"}
    assert events["context"]["context"] == "TrainingButDifferent"
    assert events["context"]["attrs"]["parent"] == "training"
    assert events["metric_source"]["attrs"] == {"metric": "MSE", "source": "pytorch"}
    assert len(events["source_code"]["attrs"]["script_sha256"]) == 64
    arts = {r["name"]: r for r in rf.records_of("artifact")}
    assert arts["data"]["role"] == "input" and len(arts["data"]["sha256"]) == 64
    assert arts["data"]["copy"].startswith("artifacts/rank-00000/")  # copied as yProv4ML does by default
    assert rf.records_of("dataset")[0]["name"] == "train_dataset"
    # the script's directory got nothing but its own files
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "prov", "train.py"]


def test_yprov4ml_models_and_flops(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install -r requirements-ml.txt)")
    _, rf = _run(tmp_path, TORCH_SCRIPT)
    models = rf.records_of("model")
    final = [m for m in models if m["name"] == "mnist_model"][0]
    assert final["model"]["parameters"] == 4 * 3 + 3 + 3 * 2 + 2
    assert final["attrs"]["layers"][0] == ["0", "Linear"]
    assert "/artifacts/rank-00000/models/" in final["path"] and len(final["sha256"]) == 64
    versions = [m["attrs"]["version"] for m in models if m["name"] == "mnist_model_version"]
    assert versions == [0, 1]
    assert rf.values("flops_batch", "training")["value"].tolist() == [2 * 4 * (4 * 3 + 3 * 2)] * 2
    assert rf.values("flops_epoch", "training")["value"].tolist() == [3 * 2 * 4 * (4 * 3 + 3 * 2)]
    ds = rf.records_of("dataset")[0]
    assert ds["attrs"]["batch_size"] == 4 and ds["attrs"]["total_samples"] == 12


def test_context_mapping_and_alias():
    from prov4ml_hpc.compat import yprov4ml

    class Old(__import__("enum").Enum):
        TRAINING = 0

    assert yprov4ml._ctx(None) == "training"
    assert yprov4ml._ctx(yprov4ml.Context.VALIDATION) == "validation"
    assert yprov4ml._ctx(Old.TRAINING) == "training"
    assert yprov4ml._ctx("Training") == "training"
    assert yprov4ml._ctx("TrainingButDifferent") == "TrainingButDifferent"
    had = sys.modules.pop("yprov4ml", None)
    try:
        yprov4ml.install_alias()
        import yprov4ml as alias

        assert alias is yprov4ml
    finally:
        sys.modules.pop("yprov4ml", None)
        if had is not None:
            sys.modules["yprov4ml"] = had


def test_calls_without_a_run_raise_the_usual_error():
    import prov4ml_hpc as p4
    from prov4ml_hpc.compat import yprov4ml

    assert p4.active_run() is None
    with pytest.raises(p4.NoActiveRunError):
        yprov4ml.log_metric("x", 1.0)
    assert yprov4ml.end_run() is None
