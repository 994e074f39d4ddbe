"""The click commands: exit codes, stdout/stderr split, and the library calls behind them (CliRunner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import pytest
from click.testing import CliRunner
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc.cli import main


def make_run(root, ranks=2, run_id="cli", kill_last=False):
    for r in range(ranks):
        env = {"PMI_RANK": str(r), "PMI_SIZE": str(ranks), "PROV4ML_HPC_RUN_ID": run_id}
        run = p4.start_run("exp", root, system_metrics=False, gather=False, environ=env)
        for s in range(20):
            p4.log_metric("loss", 1.0 / (s + 1) + r, step=s)
        p4.log_param("lr", 0.1)
        p4.end_run()
    return run.run_dir


def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and p4.__version__ in r.output
    r = CliRunner().invoke(main, ["--help"])
    for cmd in (
        "demo",
        "merge",
        "inspect",
        "report",
        "export",
        "run",
        "sbatch",
        "compare",
        "import-yprov4ml",
    ):
        assert cmd in r.output


def test_merge_inspect_export(tmp_path):
    run_dir = make_run(str(tmp_path))
    r = CliRunner().invoke(main, ["merge", run_dir, "--no-slurm", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert (
        res["exit_code"] == 0
        and res["values"] == 40
        and res["ranks"]["completed"] == ["rank-00000", "rank-00001"]
    )
    r = CliRunner().invoke(main, ["inspect", run_dir, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)
    r = CliRunner().invoke(main, ["inspect", run_dir])
    assert "loss" in r.output and "2 completed" in r.output
    for fmt in ("provn", "dot", "json"):
        out = tmp_path / f"g.{fmt}"
        r = CliRunner().invoke(main, ["export", run_dir, "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 0
    r = CliRunner().invoke(main, ["export", run_dir, "--format", "rocrate"])
    assert r.exit_code == 0 and os.path.exists(os.path.join(run_dir, "ro-crate-metadata.json"))


def test_merge_exit_codes_for_a_missing_rank(tmp_path):
    run_dir = make_run(str(tmp_path), ranks=3)
    os.remove(os.path.join(run_dir, "ranks", "rank-00001.h5"))
    r = CliRunner().invoke(main, ["merge", run_dir, "--no-slurm"])
    assert r.exit_code == 1 and "missing" in r.output
    assert os.path.exists(os.path.join(run_dir, "run.h5"))
    os.remove(os.path.join(run_dir, "run.h5"))
    r = CliRunner().invoke(main, ["merge", run_dir, "--no-slurm", "--strict"])
    assert r.exit_code == 1 and not os.path.exists(os.path.join(run_dir, "run.h5"))


def test_errors_are_one_line_messages(tmp_path):
    r = CliRunner().invoke(main, ["merge", str(tmp_path)])
    assert r.exit_code == 1 and "Error:" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "provn"])
    assert r.exit_code == 1 and "merge" in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "nope"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["sbatch", "single-node", "--job-name", "bad name;rm", "--", "t.py"])
    assert r.exit_code == 1 and "job name 'bad name;rm'" in r.output
    r = CliRunner().invoke(main, ["sbatch", "single-node"])
    assert r.exit_code == 2


def test_sbatch_quotes_every_command_word():
    r = CliRunner().invoke(
        main,
        [
            "sbatch",
            "single-node",
            "--nodes",
            "1",
            "--time",
            "00:10:00",
            "--",
            "train.py",
            "--name",
            "$(reboot); `x` 'y'",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "#SBATCH --nodes=1" in r.output and "#SBATCH --time=00:10:00" in r.output
    launch = [line for line in r.output.splitlines() if "prov4ml_hpc.run train.py" in line][0]
    import shlex

    assert shlex.split(launch)[-1] == "$(reboot); `x` 'y'"


def test_run_command_and_start_run_inside_the_launcher(tmp_path):
    """A script that calls start_run/end_run itself, launched through `prov4ml-hpc run`: one run, one file."""
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\nimport prov4ml_hpc as p4\n"
        "with p4.start_run('ignored') as run:\n"
        "    p4.log_metric('x', float(sys.argv[1]))\n"
        "p4.log_metric('after_end_run', 1.0)\n"  # the launcher's run is still active
        "print(run.rank_file)\n"
    )
    env = clean_env(PROV4ML_HPC_RUN_ID="launched")
    proc = subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc", "run", "--run-dir", str(tmp_path / "r"), str(script), "3.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rf = p4.read_rank_file(proc.stdout.strip())
    assert rf.status == "completed" and list(rf.values("x")["value"]) == [3.5]
    assert len(rf.values("after_end_run")) == 1
    assert os.listdir(tmp_path / "r" / "experiment" / "launched" / "ranks") == ["rank-00000.h5"]


@pytest.mark.mpi
def test_demo_writes_merged_outputs_and_report(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "prov4ml_hpc",
            "demo",
            "--ranks",
            "2",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "20",
            "--run-dir",
            str(tmp_path / "d"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    run_dir = r.stdout.split("run directory: ")[1].split()[0]
    for name in ("run.h5", "provenance.json", os.path.join("report", "index.html")):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with h5py.File(os.path.join(run_dir, "run.h5"), "r") as f:
        assert f.attrs["format"] == "prov4ml-hpc-run"


def test_package_version_matches_pyproject():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == p4.__version__
