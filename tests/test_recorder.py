"""The public API and the rank buffer, on real HDF5 files: what each kind of input gets, and shutdown paths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from fractions import Fraction

import h5py
import numpy as np
import pytest
from conftest import clean_env, run_python

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.errors import ConfigError, InvalidNameError, NoActiveRunError, RunAlreadyActiveError


def start(run_root, **kw):
    kw.setdefault("run_id", "t1")
    return p4.start_run("exp", run_root, system_metrics=False, **kw)


def test_run_layout_metadata_and_values(run_root):
    run = start(run_root)
    assert run.rank_file == os.path.join(run_root, "exp", "t1", "ranks", "rank-00000.h5")
    p4.log_params({"lr": 0.1, "layers": 3, "opt": "adam", "nested": {"a": [1, 2]}, "flag": True})
    for i in range(10):
        p4.log_metric("loss", 1.0 / (i + 1), step=i)
    p4.log_metrics({"acc": 0.5, "f1": 0.25}, step=3, context=p4.VALIDATION)
    assert p4.end_run() == "completed"
    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "completed" and rf.closed_cleanly
    a = rf.attrs
    assert a["schema_version"] == schema.SCHEMA_VERSION and a["format"] == schema.RANK_FORMAT
    assert (a["global_rank"], a["local_rank"], a["world_size"], a["run_id"], a["experiment"]) == (
        0,
        0,
        1,
        "t1",
        "exp",
    )
    assert a["pid"] == os.getpid() and a["cwd"] == os.getcwd() and isinstance(a["argv"], list)
    assert a["start_time"].endswith("+00:00") and a["end_time"].endswith("+00:00")
    assert a["end_time_unix"] >= a["start_time_unix"] and "h5py" in a["packages"]
    assert a["package_version"] == p4.__version__ and a["python_version"].count(".") == 2
    assert rf.params == {"lr": 0.1, "layers": 3, "opt": "adam", "nested": {"a": [1, 2]}, "flag": True}
    loss = rf.values("loss")
    assert list(loss["step"]) == list(range(10))
    assert np.allclose(loss["value"], [1.0 / (i + 1) for i in range(10)])
    assert np.all(np.diff(loss["time"]) >= 0) and abs(loss["time"][0] - time.time()) < 60
    assert list(rf.values("acc", "validation")["value"]) == [0.5]


def test_step_none_counts_per_series_and_continues_after_explicit_steps(run_root):
    run = start(run_root)
    for _ in range(3):
        p4.log_metric("a", 1.0)
    p4.log_metric("b", 1.0)
    p4.log_metric("a", 1.0, step=100)
    p4.log_metric("a", 1.0)
    p4.log_metric("a", 1.0, context="validation")
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    assert list(rf.values("a")["step"]) == [0, 1, 2, 100, 101]
    assert list(rf.values("b")["step"]) == [0]
    assert list(rf.values("a", "validation")["step"]) == [0]


class Tensor0d:
    """Stands in for a 0-d torch tensor without importing torch: it converts with __float__."""

    def __float__(self) -> float:
        return 2.5


class BigTensor:
    def __float__(self) -> float:
        raise TypeError("only one element tensors can be converted to Python scalars")


# value -> what is stored ("drop" = rejected, counted, reported once)
VALUE_CASES = [
    (1.5, 1.5),
    (3, 3.0),
    (True, 1.0),
    (False, 0.0),
    (np.float32(0.25), 0.25),
    (np.int64(7), 7.0),
    (np.array(4.0), 4.0),
    (Tensor0d(), 2.5),
    (Fraction(1, 4), 0.25),
    (float("nan"), "nan"),
    (float("inf"), math.inf),
    (float("-inf"), -math.inf),
    (None, "drop"),
    ("0.5", "drop"),
    (b"1", "drop"),
    (1 + 2j, "drop"),
    (BigTensor(), "drop"),
    (np.array([1.0, 2.0]), "drop"),
    (10**400, "drop"),
    ([1], "drop"),
]


def test_every_kind_of_value(run_root, capsys):
    run = start(run_root)
    for i, (value, _) in enumerate(VALUE_CASES):
        p4.log_metric(f"v{i}", value, step=1)
        p4.log_metric(f"v{i}", value, step=2)  # second bad value: counted, not reported again
    p4.log_metric("after", 1.0)  # logging goes on
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    for i, (_, expected) in enumerate(VALUE_CASES):
        got = rf.values(f"v{i}")["value"]
        if expected == "drop":
            assert len(got) == 0, VALUE_CASES[i]
            assert rf.attrs["problems"][f"rejected_value:training/v{i}"] == 2
        elif expected == "nan":
            assert len(got) == 2 and np.isnan(got).all()
        else:
            assert list(got) == [expected, expected], VALUE_CASES[i]
    reported = [line for line in capsys.readouterr().err.splitlines() if "value dropped" in line]
    assert len(reported) == sum(1 for _, e in VALUE_CASES if e == "drop")  # once per series
    problems = rf.records_of("problem")
    assert len(problems) == len(reported)
    assert list(rf.values("after")["value"]) == [1.0]


@pytest.mark.parametrize("step", [1.5, "3", None.__class__, True, np.float64(2.0)])
def test_bad_steps_are_dropped_not_raised(run_root, step):
    run = start(run_root)
    p4.log_metric("m", 1.0, step=step)
    p4.log_metric("m", 2.0, step=np.int32(4))
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    assert list(rf.values("m")["step"]) == [4]
    assert sum(rf.attrs["problems"].values()) == 1


ODD_NAMES = ["a/b", "..", ".", "../../../etc/passwd", "loss val", "ünïcødé 😀", "", "x" * 1024, "%2F", "a.b"]


def test_odd_names_round_trip_and_never_touch_the_file_system(run_root, tmp_path):
    run = start(run_root)
    for k, name in enumerate(ODD_NAMES):
        p4.log_metric(name, float(k), context=name)
        p4.log_param(name, k)
    p4.log_metric("y" * 1025, 1.0)  # too long: dropped and reported
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    for k, name in enumerate(ODD_NAMES):
        assert list(rf.values(name, name)["value"]) == [float(k)]
    assert rf.params == {name: k for k, name in enumerate(ODD_NAMES)}
    assert rf.attrs["problems"]["name_too_long"] == 1
    files = {os.path.relpath(os.path.join(d, f), run_root) for d, _, fs in os.walk(run_root) for f in fs}
    assert files == {os.path.join("exp", "t1", "ranks", "rank-00000.h5")}


def test_ten_thousand_series(run_root):
    run = start(run_root)
    for i in range(10_000):
        p4.log_metric(f"layer{i}.grad_norm", float(i), step=0)
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    assert len(rf.series) == 10_000 and rf.nrows == 10_000
    rows = rf.rows()
    assert np.array_equal(rows["value"], np.arange(10_000, dtype=float))
    assert rf.series[9_999].name == "layer9999.grad_norm"


def test_misuse_raises_clear_errors(run_root):
    with pytest.raises(NoActiveRunError, match="start_run"):
        p4.log_metric("x", 1.0)
    with pytest.raises(NoActiveRunError):
        p4.log_param("x", 1)
    assert p4.end_run() is None
    start(run_root)
    with pytest.raises(RunAlreadyActiveError, match="end_run"):
        start(run_root, run_id="t2")
    with pytest.raises(InvalidNameError, match="metric name must be a str"):
        p4.log_metric(3, 1.0)
    with pytest.raises(InvalidNameError, match="context must be a str"):
        p4.log_metric("x", 1.0, context=3)
    with pytest.raises(InvalidNameError):
        p4.log_metric(["x"], 1.0)
    with pytest.raises(InvalidNameError):
        p4.log_param(None, 1)
    with pytest.raises(ConfigError, match="role"):
        p4.log_artifact(__file__, role="sideways")
    assert isinstance(InvalidNameError("x"), p4.Prov4mlHpcError)
    p4.end_run()


def test_never_overwrites_an_existing_rank_file(run_root):
    start(run_root)
    p4.end_run()
    with pytest.raises(ConfigError, match="already exists.*nothing is ever overwritten"):
        start(run_root)


def test_bad_options_fail_fast(run_root, monkeypatch):
    with pytest.raises(ConfigError, match="directory name"):
        start(run_root, run_id="../escape")
    monkeypatch.setenv("PROV4ML_HPC_FLUSH_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="PROV4ML_HPC_FLUSH_INTERVAL"):
        start(run_root)
    monkeypatch.delenv("PROV4ML_HPC_FLUSH_INTERVAL")
    with pytest.raises(
        ConfigError,
        match=r"flush_interval=0 \(argument; the variable is PROV4ML_HPC_FLUSH_INTERVAL\) must be > 0",
    ):
        start(run_root, flush_interval=0)
    assert p4.active_run() is None


def test_context_manager_marks_failure(run_root):
    with pytest.raises(ZeroDivisionError), start(run_root) as run:
        p4.log_metric("x", 1.0)
        1 / 0  # noqa: B018
    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "failed" and "ZeroDivisionError" in rf.attrs["status_reason"]
    assert list(rf.values("x")["value"]) == [1.0]


def test_artifacts_models_datasets(run_root, tmp_path):
    src = tmp_path / "ckpt" / "model.pt"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 1000)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "a.bin").write_bytes(b"12345")
    run = start(run_root, copy_artifacts=True)
    rec = p4.log_artifact(src, role="output", context="training", step=3)
    p4.log_artifact(src, name="../../../../outside.pt")
    p4.log_artifact(src, name="/etc/cron.d/evil")
    p4.log_artifact(tmp_path / "missing.txt")
    p4.log_model(name="net", path=src, attrs={"epoch": 1})

    class Param:
        def __init__(self, n):
            self.n = n

        def numel(self):
            return self.n

    class Net:
        def parameters(self):
            return [Param(12), Param(5)]

    p4.log_model(Net(), name="net-object")
    p4.log_dataset(list(range(7)), name="tiny", path=data_dir)
    p4.end_run()
    import hashlib

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert rec["sha256"] == digest and rec["size"] == 7000
    rf = p4.read_rank_file(run.rank_file)
    arts = rf.records_of("artifact")
    assert [a["name"] for a in arts][:1] == [str(src)]
    assert all(a["sha256"] == digest for a in arts[:3])
    assert arts[3].get("exists") is False
    run_dir = os.path.realpath(run.run_dir)
    for a in arts[:3]:
        copy = os.path.realpath(os.path.join(run_dir, a["copy"]))
        assert copy.startswith(os.path.join(run_dir, "artifacts") + os.sep)
        with open(copy, "rb") as fh:
            assert fh.read() == src.read_bytes()
    assert not (tmp_path / "outside.pt").exists()
    models = rf.records_of("model")
    assert models[0]["sha256"] == digest and models[0]["attrs"] == {"epoch": 1}
    assert models[1]["model"]["parameters"] == 17 and models[1]["model"]["class"].endswith("Net")
    ds = rf.records_of("dataset")[0]
    assert ds["role"] == "input" and ds["dataset"]["length"] == 7 and ds["files"] == 1 and ds["size"] == 5
    assert "artifact_missing" in rf.attrs["problems"]


def test_data_reaches_the_file_while_the_script_is_idle(run_root):
    """Time-based flush: a plain reader sees values within the flush interval even if nothing else is logged."""
    run = start(run_root, flush_interval=0.2)
    p4.log_metric("x", 1.0)
    deadline = time.time() + 3
    seen = 0
    while time.time() < deadline and not seen:
        time.sleep(0.1)
        seen = p4.read_rank_file(run.rank_file).nrows
    assert seen == 1
    assert p4.read_rank_file(run.rank_file).status == "running"
    p4.end_run()


def test_buffer_is_bounded_and_flushed_early_when_full(run_root):
    run = start(run_root, flush_interval=60, buffer_rows=1000)
    for i in range(50_000):
        p4.log_metric("x", float(i))
    time.sleep(0.3)
    rec = run.recorder
    assert len(rec._buf) < 4 * 1000 * 2  # the flusher was woken, not only the 60 s timer
    assert rec.flushed_rows >= 49_000
    p4.end_run()
    assert p4.read_rank_file(run.rank_file).nrows == 50_000


def test_interpreter_exit_closes_the_run(run_root):
    code = (
        "import prov4ml_hpc as p4\n"
        f"run = p4.start_run('exp', {run_root!r}, run_id='atexit', system_metrics=False)\n"
        "p4.log_metric('x', 1.0)\nprint(run.rank_file)\n"
    )
    path = run_python(code).stdout.strip()
    rf = p4.read_rank_file(path)
    assert rf.status == "completed" and rf.nrows == 1


def test_uncaught_exception_marks_the_rank_failed(run_root):
    code = (
        "import prov4ml_hpc as p4\n"
        f"run = p4.start_run('exp', {run_root!r}, run_id='boom', system_metrics=False)\n"
        "print(run.rank_file, flush=True)\np4.log_metric('x', 1.0)\nraise RuntimeError('diverged')\n"
    )
    proc = run_python(code, check=False)
    assert proc.returncode == 1 and "RuntimeError: diverged" in proc.stderr  # the user's traceback is intact
    rf = p4.read_rank_file(proc.stdout.strip())
    assert rf.status == "failed" and rf.attrs["status_reason"] == "uncaught RuntimeError: diverged"
    assert rf.nrows == 1


def test_forked_child_never_touches_the_parent_file(run_root):
    """A fork child (DataLoader worker) that logs and exits normally, running HDF5's exit-time close."""
    code = f"""
import os, sys, time
import prov4ml_hpc as p4
run = p4.start_run('exp', {run_root!r}, run_id='fork', system_metrics=False, flush_interval=0.05)
for i in range(1000):
    p4.log_metric('parent', float(i), step=i)
pids = []
step = 1000
for k in range(3):
    pid = os.fork()
    if pid == 0:
        for i in range(5000):
            p4.log_metric('child', 1.0)     # warned once, dropped
        p4.log_param('child_param', 1)
        p4.end_run()                          # no-op in the child
        sys.exit(0)                           # normal exit: atexit + HDF5 library shutdown
    pids.append(pid)
    for i in range(100):
        p4.log_metric('parent', float(step), step=step)
        step += 1
for pid in pids:
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
for i in range(900):
    p4.log_metric('parent', float(step), step=step)
    step += 1
p4.end_run()
print(run.rank_file)
"""
    proc = run_python(code)
    assert proc.stderr.count("forked child process") == 3  # one clear message per child
    rf = p4.read_rank_file(proc.stdout.strip())
    assert rf.status == "completed"
    assert [s.name for s in rf.series] == ["parent"]
    v = rf.values("parent")
    assert list(v["step"]) == list(range(2200))


def test_write_failure_keeps_training_and_flushed_data(run_root):
    """A write that fails half-way (here RLIMIT_FSIZE -> EFBIG, as a quota would): training goes on, the
    problem is reported once, the rank is marked failed, the process exits cleanly, and everything flushed
    before stays readable (the reader repairs the superblock's end-of-file on a temporary copy)."""
    code = f"""
import resource, signal, time, os
import prov4ml_hpc as p4
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
run = p4.start_run('exp', {run_root!r}, run_id='full', system_metrics=False, flush_interval=0.05)
for i in range(100):
    p4.log_metric('x', float(i), step=i)
time.sleep(0.3)
flushed = run.recorder.flushed_rows
size = os.path.getsize(run.rank_file)
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
for i in range(100, 200000):
    p4.log_metric('x', float(i), step=i)
    if i % 20000 == 0:
        time.sleep(0.1)
    if run.recorder.status == 'failed':  # space is back (the limit lifted) for the rest of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
status = p4.end_run()
print(run.rank_file, flushed, status, run.recorder.dropped_rows, 'trained-to-the-end')
"""
    proc = run_python(code)
    path, flushed, status, dropped, done = proc.stdout.split()
    assert done == "trained-to-the-end" and status == "failed" and int(dropped) > 0
    assert proc.stderr.count("writing the rank file failed") == 1
    rf = p4.read_rank_file(path)
    v = rf.values("x")
    assert len(v) >= int(flushed) >= 100
    assert list(v["step"]) == list(range(len(v)))  # a prefix, no torn rows
    assert list(v["value"]) == [float(i) for i in range(len(v))]


def test_full_disk_stops_cleanly_before_the_disk_is_full(tmp_path):
    """A real small file system (tmpfs): the flusher sees the disk nearly full, closes the file properly with
    status failed, and training goes on."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code = f"""
import os, time
import prov4ml_hpc as p4
run = p4.start_run('exp', {str(mnt)!r}, run_id='disk', system_metrics=False, flush_interval=0.05)
for i in range(100):
    p4.log_metric('x', float(i), step=i)
time.sleep(0.3)
st = os.statvfs({str(mnt)!r})
with open(os.path.join({str(mnt)!r}, 'filler'), 'wb') as f:
    f.write(b'0' * (st.f_bavail * st.f_frsize - (18 << 20)))
for i in range(100, 2_000_000):
    p4.log_metric('x', float(i), step=i)
print(run.rank_file, p4.end_run(), 'trained-to-the-end')
"""
        proc = run_python(code)
        path, status, done = proc.stdout.split()
        assert (status, done) == ("failed", "trained-to-the-end")
        assert proc.stderr.count("disk is almost full") == 1
        rf = p4.read_rank_file(path)
        assert rf.status == "failed" and "almost full" in rf.attrs["status_reason"] and not rf.problems
        v = rf.values("x")
        assert len(v) >= 100 and list(v["step"]) == list(range(len(v)))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_deleted_run_directory_is_reported_once(run_root):
    import shutil

    run = start(run_root, flush_interval=0.05)
    p4.log_metric("x", 1.0)
    time.sleep(0.2)
    shutil.rmtree(run.run_dir)
    for i in range(1000):
        p4.log_metric("x", float(i))
    time.sleep(0.3)
    assert run.recorder.status == "failed" and "deleted" in run.recorder.reason
    assert p4.end_run() == "failed"


def test_rank_file_is_plain_hdf5(run_root):
    """Users and other tools can read the buffer with h5py alone (documented in docs/format.md)."""
    run = start(run_root)
    p4.log_metric("loss", 0.5, step=1)
    p4.end_run()
    with h5py.File(run.rank_file, "r") as f:
        series = [json.loads(s) for s in f["series"].asstr()[:]]
        rows = f["rows"][:]
    assert series[0]["name"] == "loss" and rows[0]["value"] == 0.5 and rows[0]["step"] == 1
    assert rows.dtype == schema.row_dtype()


def test_start_run_works_in_a_fresh_interpreter_with_env_config(tmp_path):
    env = clean_env(
        PROV4ML_HPC_RUN_DIR=str(tmp_path / "r"), PROV4ML_HPC_EXPERIMENT="envexp", PROV4ML_HPC_RUN_ID="envid"
    )
    proc = run_python(
        "import prov4ml_hpc as p4\nr = p4.start_run()\nprint(r.rank_file)\np4.end_run()", env=env
    )
    assert proc.stdout.strip() == str(tmp_path / "r" / "envexp" / "envid" / "ranks" / "rank-00000.h5")
