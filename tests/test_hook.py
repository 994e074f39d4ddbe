"""The import hook: which processes it records (ranks only), statuses of unmodified scripts, both mechanisms."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.rank import hook

STEP = {
    "SLURM_JOB_ID": "900",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_LOCALID": "1",
}
BATCH = {"SLURM_JOB_ID": "900", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # a helper in the batch script

UNMODIFIED = textwrap.dedent("""
    import json, multiprocessing as mp, subprocess, sys
    import prov4ml_hpc as p4

    def child(q):
        import prov4ml_hpc as p4
        q.put(p4.active_run() is not None)

    if __name__ == "__main__":
        run = p4.active_run()
        seen = {"run": run.run_id if run else None, "by": getattr(run, "started_by", None),
                "rank": run.global_rank if run else None}
        for i in range(3):
            p4.log_metric("loss", 1.0 / (i + 1))
        for method in ("fork", "spawn", "forkserver"):
            ctx = mp.get_context(method)
            q = ctx.Queue()
            proc = ctx.Process(target=child, args=(q,))
            proc.start()
            seen[method] = q.get(timeout=60)
            proc.join()
        seen["subprocess"] = subprocess.run(
            [sys.executable, "-c", "import prov4ml_hpc as p4; print(p4.active_run() is not None)"],
            capture_output=True, text=True).stdout.strip()
        print(json.dumps(seen), flush=True)
        if sys.argv[1:] == ["raise"]:
            raise RuntimeError("hooked failure")
        if sys.argv[1:] == ["exit"]:
            sys.exit(5)
""")


def hooked_env(tmp_path, **extra):
    return clean_env(
        PROV4ML_HPC_HOOK="1", PYTHONPATH=hook.site_dir(), PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), **extra
    )


def rank_files(tmp_path):
    return sorted(glob.glob(str(tmp_path / "runs" / "*" / "*" / "ranks" / "*.h5")))


# ---- who is recorded (pure) ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, argv, expected",
    [
        ({}, ["python", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "0", **STEP}, ["python", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "t.py"], True),
        ({"PROV4ML_HPC_HOOK": "1", **BATCH}, ["python", "t.py"], False),
        (
            {"PROV4ML_HPC_HOOK": "1", "SLURM_JOB_ID": "1", "SLURM_STEP_ID": "batch", "SLURM_PROCID": "0"},
            ["python", "t.py"],
            False,
        ),
        ({"PROV4ML_HPC_HOOK": "1", "PMI_RANK": "0", "PMI_SIZE": "2"}, ["python", "t.py"], True),
        ({"PROV4ML_HPC_HOOK": "1", "RANK": "0", "WORLD_SIZE": "2"}, ["python", "-u", "t.py"], True),
        ({"PROV4ML_HPC_HOOK": "1"}, ["python", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "all"}, ["python", "t.py"], True),
        ({"PROV4ML_HPC_HOOK": "1", **STEP, hook.MARKER_ENV: "123"}, ["python", "t.py"], False),
        (
            {"PROV4ML_HPC_HOOK": "1", **STEP},
            [
                "python",
                "-c",
                "from multiprocessing.spawn import spawn_main; spawn_main()",
                "--multiprocessing-fork",
            ],
            False,
        ),
        (
            {"PROV4ML_HPC_HOOK": "1", **STEP},
            ["python", "-c", "from multiprocessing.resource_tracker import main"],
            False,
        ),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "-m", "prov4ml_hpc", "merge", "x"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "-m", "prov4ml_hpc.run", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "/venv/bin/prov4ml-hpc", "merge", "x"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "/venv/bin/torchrun", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "-m", "torch.distributed.run", "t.py"], False),
        ({"PROV4ML_HPC_HOOK": "1", **STEP}, ["python", "-W", "ignore", "-X", "dev", "t.py"], True),
    ],
)
def test_should_activate(env, argv, expected):
    ok, why = hook.should_activate(env, argv)
    assert ok is expected, why


def test_command_target():
    assert hook.command_target(["py", "-W", "x", "-mpkg", "a"]) == ("module", "pkg")
    assert hook.command_target(["py", "-u", "s.py", "-m", "x"]) == ("path", "s.py")
    assert hook.command_target(["py"]) == ("stdin", "")


# ---- real processes ---------------------------------------------------------------------------------------
@pytest.fixture
def unmodified(tmp_path):
    path = tmp_path / "unmodified.py"
    path.write_text(UNMODIFIED)
    return path


@pytest.mark.parametrize(
    "arg, code, status, reason",
    [
        ("ok", 0, schema.STATUS_COMPLETED, ""),
        ("raise", 1, schema.STATUS_FAILED, "uncaught RuntimeError: hooked failure"),
        ("exit", 5, schema.STATUS_FAILED, "exit code 5"),
    ],
)
def test_unmodified_script_in_a_rank_process(tmp_path, unmodified, arg, code, status, reason):
    env = hooked_env(tmp_path, PROV4ML_HPC_GATHER="0", **STEP)
    proc = subprocess.run(
        [sys.executable, str(unmodified), arg], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == code, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[0])
    assert seen == {
        "run": "slurm-900",
        "by": "hook",
        "rank": 1,
        "fork": False,
        "spawn": False,
        "forkserver": False,
        "subprocess": "False",
    }
    (path,) = rank_files(tmp_path)  # one rank file: no child started a run
    assert path.endswith("slurm-900/ranks/rank-00001.h5")
    rf = p4.read_rank_file(path)
    assert (rf.status, rf.attrs.get(schema.A_STATUS_REASON, "")) == (status, reason)
    assert rf.nrows == 3
    if arg == "raise":
        assert "RuntimeError: hooked failure" in proc.stderr
        tb = tmp_path / "runs" / "experiment" / "slurm-900" / "artifacts" / "rank-00001" / "traceback.txt"
        assert "hooked failure" in tb.read_text()


def test_batch_script_helper_is_not_recorded(tmp_path):
    env = hooked_env(tmp_path, **BATCH)
    proc = subprocess.run(
        [sys.executable, "-c", "import prov4ml_hpc as p4; print(p4.active_run())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "None" and not rank_files(tmp_path)


def test_launcher_under_the_hook_records_once(tmp_path, unmodified):
    env = hooked_env(tmp_path, PROV4ML_HPC_GATHER="0", **STEP)
    proc = subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc.run", str(unmodified)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["by"] == "launcher"
    assert len(rank_files(tmp_path)) == 1


def test_sitecustomize_chains_to_the_one_it_shadows(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    env = clean_env(PYTHONPATH=os.pathsep.join([hook.site_dir(), str(other)]))
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('CHAINED'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "yes", out.stderr


@pytest.mark.slow
def test_pth_in_a_venv_and_both_mechanisms_record_once(tmp_path, unmodified):
    """The .pth written by `python -m prov4ml_hpc.hook install` into a venv's site-packages; the one variable
    is then enough, also when prov4ml_hpc and its dependencies sit in a later site folder (the system one);
    with the sitecustomize also on PYTHONPATH the process is still recorded once."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    py = str(venv / "bin" / "python")
    if sys.prefix != sys.base_prefix:
        # these tests run in a venv themselves: the new venv's "system" site folder is the base interpreter's,
        # without prov4ml_hpc; add ours as a later site folder (after prov4ml_hpc_hook.pth, like the system one)
        import site

        later = subprocess.run(
            [py, "-c", "import site; print(site.getsitepackages()[0])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirs = [d for d in site.getsitepackages() if d.startswith(sys.prefix)]
        Path(later, "zz-outer-site.pth").write_text(f"import site; [site.addsitedir(d) for d in {dirs!r}]\n")
    pth = subprocess.run(
        [py, "-m", "prov4ml_hpc.hook", "install"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
        timeout=60,
    ).stdout.strip()
    assert pth.startswith(str(venv)) and pth.endswith(hook.PTH_NAME)
    env = clean_env(
        PROV4ML_HPC_HOOK="1", PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), PROV4ML_HPC_GATHER="0", **STEP
    )
    proc = subprocess.run([py, str(unmodified)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["by"] == "hook"
    env["PYTHONPATH"] = hook.site_dir()
    env["PROV4ML_HPC_EXPERIMENT"] = "both"
    proc = subprocess.run([py, str(unmodified)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(rank_files(tmp_path)) == 2
    # unset: nothing happens; uninstalled: nothing left behind
    quiet = subprocess.run(
        [py, "-c", "import sys; print('prov4ml_hpc' in sys.modules)"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert quiet.stdout.strip() == "False" and quiet.stderr == ""
    subprocess.run([py, "-m", "prov4ml_hpc.hook", "uninstall"], env=clean_env(), check=True, timeout=60)
    assert not os.path.exists(pth)


def test_hook_never_breaks_the_process(tmp_path):
    """A rank whose run cannot start (the rank file exists) runs its script unrecorded, with one message."""
    env = hooked_env(tmp_path, PROV4ML_HPC_RUN_ID="dup", PROV4ML_HPC_GATHER="0", **STEP)
    code = "import prov4ml_hpc as p4; print(p4.active_run() is not None)"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert first.stdout.strip() == "True" and second.returncode == 0 and second.stdout.strip() == "False"
    assert "prov4ml-hpc hook: not recording this process" in second.stderr
