"""Signals under the launcher, with real signals sent to real subprocesses: close time, status, chaining, exit."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.rank import signals

LOOP = textwrap.dedent("""
    import signal, sys, time
    import prov4ml_hpc as p4
    from prov4ml_hpc import signals
    mode = sys.argv[1]
    if mode == "chained":  # a framework's checkpoint-on-signal handler that was there before ours
        def on_term(signum, frame):
            p4.log_metric("checkpoint", 1.0)  # the run is still open for the handler
            print("chained handler called", flush=True)
            sys.exit(42)
        signal.signal(signal.SIGTERM, on_term)
        signals.install()
    if mode == "ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signals.install()
    if mode == "later":  # a handler installed after ours that calls ours as the previous one (Lightning)
        ours = signal.getsignal(signal.SIGTERM)
        def later(signum, frame):
            ours(signum, frame)
            print("later handler called", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, later)
    i = 0
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        p4.log_metric("x", float(i), step=i)
        i += 1
        time.sleep(0.001)
    print("loop ended", flush=True)
""")


def start(tmp_path, mode, run_id, signals_opt="TERM,INT,USR1"):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    env = clean_env(PROV4ML_HPC_RUN_DIR=str(tmp_path / "runs"), PROV4ML_HPC_FLUSH_INTERVAL="0.2")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prov4ml_hpc.run",
            "--run-id",
            run_id,
            "--signals",
            signals_opt,
            str(script),
            mode,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        restore_signals=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(0.5)
    return proc


def rank(tmp_path, run_id):
    (path,) = glob.glob(str(tmp_path / "runs" / "experiment" / run_id / "ranks" / "*.h5"))
    return p4.read_rank_file(path)


@pytest.mark.parametrize(
    "sig, reason", [(signal.SIGTERM, "SIGTERM (scancel or time limit)"), (signal.SIGINT, "SIGINT")]
)
def test_terminating_signal_closes_within_a_second_and_dies_by_it(tmp_path, sig, reason):
    proc = start(tmp_path, "plain", f"s{int(sig)}")
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"closing and exiting took {elapsed:.2f} s"
    rf = rank(tmp_path, f"s{int(sig)}")
    assert rf.status == schema.STATUS_CANCELLED
    assert rf.attrs[schema.A_STATUS_REASON].startswith(reason)
    assert rf.nrows > 100  # everything logged until the signal
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # the default action ran: as without prov4ml-hpc
    else:  # Python's handler (KeyboardInterrupt) was chained; python then exits by SIGINT
        assert proc.returncode == -signal.SIGINT
        assert "KeyboardInterrupt" in err and "prov4ml_hpc" not in err


def test_previous_python_handler_is_chained(tmp_path):
    proc = start(tmp_path, "chained", "chained")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert "chained handler called" in out and proc.returncode == 42
    rf = rank(tmp_path, "chained")
    assert rf.status == schema.STATUS_CANCELLED
    assert rf.attrs[schema.A_STATUS_REASON] == "SIGTERM (scancel or time limit); then exit code 42"
    assert ("training", "checkpoint") in rf.series_names()  # logged by the handler after the signal
    (event,) = rf.records_of(schema.REC_EVENT)
    assert event["attrs"]["signal"] == "SIGTERM" and event["attrs"]["previous_handler"].endswith("on_term")


def test_ignored_signal_is_recorded_and_ignored(tmp_path):
    proc = start(tmp_path, "ignored", "ignored")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # still running
    proc.kill()
    proc.communicate(timeout=10)
    rf = rank(tmp_path, "ignored")
    assert [r["attrs"]["signal"] for r in rf.records_of(schema.REC_EVENT)] == ["SIGTERM"]  # flushed at once


def test_framework_handler_installed_later_keeps_control(tmp_path):
    proc = start(tmp_path, "later", "later")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert "later handler called" in out and proc.returncode == 7
    rf = rank(tmp_path, "later")
    assert rf.status == schema.STATUS_CANCELLED


def test_usr1_is_a_warning_then_sigterm_closes(tmp_path):
    proc = start(tmp_path, "plain", "usr1")
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert proc.poll() is None  # the warning does not end training
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM
    rf = rank(tmp_path, "usr1")
    assert rf.status == schema.STATUS_CANCELLED
    assert [r["attrs"]["signal"] for r in rf.records_of(schema.REC_EVENT)] == ["SIGUSR1"]


def test_usr1_not_installed_by_default(tmp_path):
    proc = start(tmp_path, "plain", "default-sigs", signals_opt="")
    proc.send_signal(signal.SIGUSR1)  # nobody handles it: the default action, as without prov4ml-hpc
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGUSR1
    assert rank(tmp_path, "default-sigs").status == schema.STATUS_RUNNING  # merge: partial, flushed rows kept


def test_parse_signals():
    assert signals.parse_signals("TERM, sigusr1,INT,TERM") == (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    assert signals.parse_signals("none") == ()
    with pytest.raises(ConfigError, match="unknown signal"):
        signals.parse_signals("TERMINATE")
    with pytest.raises(ConfigError, match="cannot be caught"):
        signals.parse_signals("KILL")


def test_no_handler_installed_at_import():
    code = (
        "import signal, prov4ml_hpc, prov4ml_hpc.signals, prov4ml_hpc.hook, prov4ml_hpc.run; "
        "print(signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=30
    ).stdout
    assert out.split() == [str(signal.SIG_DFL)] * 2


def test_final_status_rules():
    signals.reset()
    try:
        assert signals.final_status("completed", None) == ("completed", None)
        signals.state.warned = ("signalled", "SIGUSR1")
        assert signals.final_status("completed", None) == ("completed", None)
        assert signals.final_status("failed", "exit code 1") == ("signalled", "SIGUSR1; then exit code 1")
        signals.state.pending = ("cancelled", "SIGTERM")
        assert signals.final_status("completed", None) == ("cancelled", "SIGTERM")
    finally:
        signals.reset()


def test_a_repeated_sigterm_does_not_cut_the_close_short(tmp_path):
    """SLURM sends SIGTERM twice at a time limit (slurmstepd and srun): the file still closes as cancelled."""
    import signal as _signal
    import subprocess as _sp
    import sys as _sys

    from conftest import clean_env

    import prov4ml_hpc as _p4

    script = tmp_path / "loop.py"
    script.write_text(
        "import time\nimport prov4ml_hpc as p4\nprint(p4.active_run().rank_file, flush=True)\n"
        "i = 0\nwhile True:\n    p4.log_metric('x', float(i)); i += 1\n    if i % 1000 == 0: time.sleep(0.001)\n"
    )
    proc = _sp.Popen(
        [
            _sys.executable,
            "-m",
            "prov4ml_hpc.run",
            "--run-dir",
            str(tmp_path / "r"),
            "--run-id",
            "twice",
            str(script),
        ],
        env=clean_env(),
        stdout=_sp.PIPE,
        text=True,
    )
    path = proc.stdout.readline().strip()
    import time as _time

    _time.sleep(0.5)
    for _ in range(4):  # signals sent together merge into one: space them so some land during the close
        proc.send_signal(_signal.SIGTERM)
        _time.sleep(0.004)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -_signal.SIGTERM
    rf = _p4.read_rank_file(path)
    assert rf.status == "cancelled" and rf.nrows > 0
