"""The launcher `python -m prov4ml_hpc.run`: argument parsing, __main__ semantics, statuses, tracebacks, MPI abort."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import clean_env, run_mpi

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.rank.launcher import LaunchOptions, UsageError, parse_args

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import prov4ml_hpc as p4
    run = p4.active_run()
    print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__, "file": globals().get("__file__"),
                      "run": run.run_id if run else None, "by": getattr(run, "started_by", None)}))
    for i in range(5):
        p4.log_metric("loss", 1.0 / (i + 1), step=i)
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "raise":
        raise ValueError("boom")
    if what == "exit":
        sys.exit(int(sys.argv[2]))
    if what == "exit-text":
        sys.exit("bad input")
""")


def launch(args, tmp_path, *, env=None, cwd=None):
    env = env or clean_env()
    env.setdefault("PROV4ML_HPC_RUN_DIR", str(tmp_path / "runs"))
    return subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc.run", *args],
        env=env,
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rank_files(tmp_path):
    return sorted(glob.glob(str(tmp_path / "runs" / "*" / "*" / "ranks" / "*.h5")))


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "sub" / "train.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


# ---- parsing ---------------------------------------------------------------------------------------------
def test_options_stop_at_the_script_name():
    opts = parse_args(["--run-dir", "r", "--experiment=e", "train.py", "--run-dir", "x", "-m", "y"])
    assert isinstance(opts, LaunchOptions)
    assert (opts.kind, opts.target, opts.args) == ("path", "train.py", ["--run-dir", "x", "-m", "y"])
    assert (opts.run_dir, opts.experiment) == ("r", "e")


def test_module_command_and_flags():
    opts = parse_args(["--no-system-metrics", "--flush-interval", "0.5", "-m", "pkg.mod", "-v"])
    assert (opts.kind, opts.target, opts.args) == ("module", "pkg.mod", ["-v"])
    assert opts.system_metrics is False and opts.flush_interval == 0.5
    opts = parse_args(["--copy-artifacts", "-c", "print(1)", "a"])
    assert (opts.kind, opts.target, opts.args, opts.copy_artifacts) == ("command", "print(1)", ["a"], True)
    assert parse_args(["--", "-weird.py"]).target == "-weird.py"
    assert parse_args(["--help", "x.py"]) == "help"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no script"),
        (["--bogus", "x.py"], "unknown option"),
        (["--run-dir"], "needs a value"),
        (["--flush-interval", "abc", "x.py"], "a number"),
        (["--buffer-rows", "0", "x.py"], "positive"),
        (["-m"], "module name"),
        (["--no-gather=1", "x.py"], "takes no value"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(argv)


def test_usage_error_exit_status_2(tmp_path):
    proc = launch(["--bogus", "x.py"], tmp_path)
    assert proc.returncode == 2 and "unknown option" in proc.stderr


# ---- running ---------------------------------------------------------------------------------------------
def test_script_runs_as_main_with_python_argv_and_path(tmp_path, script):
    proc = launch(["--run-id", "r1", "sub/train.py", "a", "b"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    seen = json.loads(proc.stdout.splitlines()[0])
    assert seen["argv"] == ["sub/train.py", "a", "b"]
    assert seen["path0"] == str(script.parent.resolve())
    assert seen["name"] == "__main__" and seen["file"] == str(script)
    assert seen["run"] == "r1" and seen["by"] == "launcher"
    (path,) = rank_files(tmp_path)
    rf = p4.read_rank_file(path)
    assert rf.status == schema.STATUS_COMPLETED and rf.nrows == 5


def test_module_and_command(tmp_path, script):
    env = clean_env(PYTHONPATH=str(script.parent))
    proc = launch(["--run-id", "m1", "-m", "train", "x"], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert '"argv": ["' + str(script) + '", "x"]' in proc.stdout
    proc = launch(
        [
            "--run-id",
            "c1",
            "-c",
            "import sys, prov4ml_hpc as p4; print(sys.argv, __name__, p4.active_run().run_id)",
            "y",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['-c', 'y'] __main__ c1"


def test_options_from_environment(tmp_path, script):
    env = clean_env(PROV4ML_HPC_RUN_ID="from-env", PROV4ML_HPC_EXPERIMENT="envexp")
    proc = launch(["sub/train.py"], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert rank_files(tmp_path)[0].endswith(os.path.join("envexp", "from-env", "ranks", "rank-00000.h5"))


@pytest.mark.parametrize(
    "args, code, reason",
    [
        (["exit", "0"], 0, ""),
        (["exit", "3"], 3, "exit code 3"),
        (["exit-text"], 1, "exit code 1"),
    ],
)
def test_exit_codes(tmp_path, script, args, code, reason):
    proc = launch(["--run-id", "e", "sub/train.py", *args], tmp_path)
    assert proc.returncode == code
    rf = p4.read_rank_file(rank_files(tmp_path)[0])
    assert rf.status == (schema.STATUS_COMPLETED if code == 0 else schema.STATUS_FAILED)
    assert rf.attrs.get(schema.A_STATUS_REASON, "") == reason
    if args == ["exit-text"]:
        assert "bad input" in proc.stderr


def test_uncaught_exception_traceback_artifact(tmp_path, script):
    proc = launch(["--run-id", "x", "sub/train.py", "raise"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):\n")
    assert "prov4ml_hpc" not in proc.stderr and "runpy" not in proc.stderr  # as `python train.py` shows it
    assert proc.stderr.rstrip().endswith("ValueError: boom")
    rf = p4.read_rank_file(rank_files(tmp_path)[0])
    assert rf.status == schema.STATUS_FAILED
    assert rf.attrs[schema.A_STATUS_REASON] == "uncaught ValueError: boom"
    assert rf.nrows == 5  # everything logged before the exception is kept
    tb_file = tmp_path / "runs" / "experiment" / "x" / "artifacts" / "rank-00000" / "traceback.txt"
    assert tb_file.read_text() == proc.stderr
    (art,) = rf.records_of(schema.REC_ARTIFACT)
    assert art["role"] == "output" and art["path"] == str(tb_file) and art["sha256"]
    (event,) = [r for r in rf.records_of(schema.REC_EVENT) if r["name"] == "uncaught_exception"]
    assert event["attrs"]["type"] == "builtins.ValueError" and event["attrs"]["message"] == "boom"


def test_missing_script(tmp_path):
    proc = launch(["--run-id", "nf", "nope.py"], tmp_path)
    assert proc.returncode == 1 and "FileNotFoundError" in proc.stderr
    assert p4.read_rank_file(rank_files(tmp_path)[0]).status == schema.STATUS_FAILED


def test_setup_error_fails_fast(tmp_path, script):
    proc = launch(["--run-id", "bad/id", "sub/train.py"], tmp_path)
    assert proc.returncode == 1 and "run id" in proc.stderr and not rank_files(tmp_path)


@pytest.mark.mpi
def test_mpi_abort_on_one_failing_rank(tmp_path):
    """Rank 1 raises while rank 0 waits in a collective: the launcher aborts MPI instead of hanging."""
    script = tmp_path / "mpi_fail.py"
    script.write_text(
        textwrap.dedent("""
        from mpi4py import MPI
        import prov4ml_hpc as p4
        comm = MPI.COMM_WORLD
        p4.log_metric("x", 1.0)
        if comm.Get_rank() == 1:
            raise RuntimeError("rank 1 fails")
        comm.Barrier()
    """)
    )
    env = clean_env(PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), PROV4ML_HPC_RUN_ID="mpi-abort")
    proc = run_mpi(2, ["-m", "prov4ml_hpc.run", str(script)], env=env, timeout=60, check=False)
    assert proc.returncode != 0
    assert "RuntimeError: rank 1 fails" in proc.stderr
    rf = p4.read_rank_file(str(tmp_path / "runs" / "experiment" / "mpi-abort" / "ranks" / "rank-00001.h5"))
    assert rf.status == schema.STATUS_FAILED and rf.nrows == 1


def test_requeue_attempts_never_overwrite(tmp_path, script):
    """Same SLURM job, higher SLURM_RESTART_COUNT: the same run directory, a new rank file per attempt."""
    base = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_LOCALID": "0",
    }
    for restart in ("", "1", "2"):
        env = clean_env(**base, **({"SLURM_RESTART_COUNT": restart} if restart else {}))
        proc = launch(["sub/train.py"], tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
    names = [os.path.basename(p) for p in rank_files(tmp_path)]
    assert names == ["rank-00000.attempt-1.h5", "rank-00000.attempt-2.h5", "rank-00000.h5"]
    assert {os.path.basename(os.path.dirname(os.path.dirname(p))) for p in rank_files(tmp_path)} == {
        "slurm-4242"
    }
    assert [p4.read_rank_file(p).attempt for p in rank_files(tmp_path)] == [1, 2, 0]


def test_array_task_run_id(tmp_path, script):
    env = clean_env(
        SLURM_JOB_ID="501",
        SLURM_ARRAY_JOB_ID="500",
        SLURM_ARRAY_TASK_ID="1",
        SLURM_STEP_ID="0",
        SLURM_PROCID="0",
        SLURM_NTASKS="1",
    )
    assert launch(["sub/train.py"], tmp_path, env=env).returncode == 0
    assert "/slurm-500_1/ranks/rank-00000.h5" in rank_files(tmp_path)[0]


def test_a_bug_in_start_run_never_stops_the_script(tmp_path):
    """Setup errors (ConfigError) stop the launcher; any other failure of ours runs the script unrecorded."""
    (tmp_path / "train.py").write_text("print('script ran')\n")
    code = (
        "import sys\nfrom prov4ml_hpc.rank import api, launcher\n"
        "def broken(*a, **k):\n    raise RuntimeError('injected bug')\n"
        "api.start_run = broken\nraise SystemExit(launcher.launch(['train.py']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == "script ran\n"
    assert "not recording this rank, the script runs anyway: RuntimeError: injected bug" in proc.stderr
