"""What the recorder does when something fails: an error in the flusher, the final close, a stalled flusher,
the process's file size limit.  Each is reported once, never crashes the process, and what the messages say is
what readers find in the file."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time

import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.merge import merge_run
from prov4ml_hpc.rank import recorder as recorder_mod


def start(root: str, **kw):
    return p4.start_run("exp", root, run_id="f", system_metrics=False, **kw)


def test_an_error_in_the_flusher_is_said_once_and_its_rows_counted_in_dropped_rows(
    run_root, capsys, monkeypatch
):
    run = start(run_root, flush_interval=0.05)
    rec = run.recorder
    convert = rec._rows
    lost: list[int] = []

    def broken(chunk):
        if not lost:
            lost.append(len(chunk) // 4)
            raise RuntimeError("injected conversion bug")
        return convert(chunk)

    monkeypatch.setattr(rec, "_rows", broken)
    for i in range(1000):
        p4.log_metric("x", float(i), step=i)
    time.sleep(0.4)  # a flush meets the bug
    for i in range(1000, 2000):
        p4.log_metric("x", float(i), step=i)
    assert p4.end_run() == "completed"  # recording went on after the error
    rf = p4.read_rank_file(run.rank_file)
    assert lost and rf.status == "completed"
    assert rf.nrows == 2000 - lost[0] and rf.attrs[schema.A_DROPPED_ROWS] == lost[0]
    assert rf.attrs[schema.A_PROBLEMS]["flush_error"] == 1
    (problem,) = rf.records_of(schema.REC_PROBLEM)
    assert (
        "injected conversion bug" in problem["message"]
        and f"{lost[0]} rows were dropped" in problem["message"]
    )
    assert capsys.readouterr().err.count("injected conversion bug") == 1


def test_an_error_outside_the_write_does_not_stop_the_flusher(run_root, capsys, monkeypatch):
    run = start(run_root, flush_interval=0.05)
    rec = run.recorder
    take = rec._take
    raised: list[bool] = []

    def broken():
        if not raised:
            raised.append(True)
            raise RuntimeError("injected take bug")
        return take()

    monkeypatch.setattr(rec, "_take", broken)
    p4.log_metric("x", 1.0)
    time.sleep(0.4)
    assert raised and rec._flusher.is_alive()
    for i in range(100):
        p4.log_metric("x", float(i))
    time.sleep(0.4)
    assert p4.read_rank_file(run.rank_file).nrows == 101  # flushed by the flusher, before any close
    p4.end_run()
    assert capsys.readouterr().err.count("injected take bug") == 1


def test_a_stalled_flusher_stops_slowing_the_hot_path(run_root, monkeypatch):
    monkeypatch.setattr(recorder_mod, "STALL_SECONDS", 0.3)
    run = start(run_root, buffer_rows=64, flush_interval=10)
    rec = run.recorder
    rows = recorder_mod.HARD_FACTOR * 64 + 500  # past the hard cap: the hot path waits for the flusher
    rec._io_lock.acquire()  # the flusher cannot write, as on a hung file system
    try:
        t0 = time.monotonic()
        for i in range(rows):
            p4.log_metric("x", float(i), step=i)
        elapsed = time.monotonic() - t0
    finally:
        rec._io_lock.release()
    assert elapsed < 5 and rec.problems["flusher_stalled"] == 1
    assert p4.end_run() == "completed"
    rf = p4.read_rank_file(run.rank_file)
    assert list(rf.values("x")["step"]) == list(range(rows))  # nothing lost while it waited


FINAL_CLOSE = """
import prov4ml_hpc as p4
from prov4ml_hpc import schema
run = p4.start_run("exp", {root!r}, run_id="close", system_metrics=False)
for i in range(10000):
    p4.log_metric("x", float(i), step=i)
writer = run.recorder._writer
set_attrs = writer.set_attrs
def failing(attrs):
    if schema.A_STATUS in attrs:
        raise OSError("injected: the file system went away")
    set_attrs(attrs)
writer.set_attrs = failing
print(p4.end_run(), run.rank_file)
"""


def test_a_failure_during_the_final_close_is_said_and_the_process_exits_cleanly(run_root):
    proc = subprocess.run(
        [sys.executable, "-c", FINAL_CLOSE.format(root=run_root)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    status, path = proc.stdout.split()
    assert status == "failed"
    (line,) = [x for x in proc.stderr.splitlines() if "writing the rank file failed" in x]
    assert "injected: the file system went away" in line and "keeps status 'running'" in line
    assert "the 10000 rows flushed" in line
    rf = p4.read_rank_file(path)
    assert rf.status == "running" and rf.nrows == 10000  # what the message says


LIMITED = """
import time
import prov4ml_hpc as p4
from prov4ml_hpc.rank import recorder
if {efbig}:
    recorder.FSIZE_RESERVE = -(1 << 40)  # no check before writing: the write itself fails with EFBIG
run = p4.start_run("exp", {root!r}, run_id="fsize", system_metrics=False, flush_interval=0.05)
for i in range(400_000):
    p4.log_metric("x", float(i), step=i)
    if i % 20_000 == 0:
        time.sleep(0.05)
print(p4.end_run(), run.rank_file, "trained-to-the-end")
"""


def _limited(code: str) -> subprocess.CompletedProcess:
    def limit() -> None:  # what `ulimit -f 4096` does: soft and hard limit, 4 MiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def test_file_size_limit_closes_the_file_cleanly_and_messages_match_readers(run_root):
    proc = _limited(LIMITED.format(root=run_root, efbig=False))
    assert proc.returncode == 0, proc.stderr  # was SIGSEGV at exit
    status, path, done = proc.stdout.split()
    assert (status, done) == ("failed", "trained-to-the-end")
    (line,) = [x for x in proc.stderr.splitlines() if "writing the rank file failed" in x]
    assert "file size limit" in line and "closed with status 'failed'" in line
    said = int(re.search(r"holds the (\d+) rows", line).group(1))
    rf = p4.read_rank_file(path)
    assert rf.status == "failed" and "file size limit" in rf.attrs[schema.A_STATUS_REASON]
    assert rf.nrows == said > 0 and not rf.problems
    assert list(rf.values("x")["step"]) == list(range(said))
    result = merge_run(rf.path.rsplit("/ranks/", 1)[0], query_slurm=False)
    assert result.values == said and result.ranks == {"failed": ["rank-00000"]}


def test_a_write_that_hits_the_file_size_limit_never_crashes_the_exit(run_root):
    proc = _limited(LIMITED.format(root=run_root, efbig=True))
    assert proc.returncode == 0, proc.stderr[-3000:]  # was SIGSEGV: the memfd sink is size-limited too
    status, path, done = proc.stdout.split()
    assert (status, done) == ("failed", "trained-to-the-end")
    (line,) = [x for x in proc.stderr.splitlines() if "writing the rank file failed" in x]
    assert "File too large" in line and "keeps status 'running'" in line
    said = int(re.search(r"the (\d+) rows flushed", line).group(1))
    rf = p4.read_rank_file(path)
    assert rf.status == "running"
    steps = rf.values("x")["step"]
    assert len(steps) >= said and list(steps) == list(range(len(steps)))  # a prefix, at least what was said


@pytest.mark.parametrize("exc", [FileNotFoundError, PermissionError])
def test_fail_writes_keeps_training_for_any_oserror(run_root, exc, monkeypatch, capsys):
    run = start(run_root, flush_interval=0.05)

    def gone() -> None:
        raise exc("injected")

    monkeypatch.setattr(run.recorder, "_check_file", gone)
    for i in range(100):
        p4.log_metric("x", float(i))
    time.sleep(0.3)
    for i in range(100):
        p4.log_metric("x", float(i))
    assert p4.end_run() == "failed"
    assert run.recorder.dropped_rows == 200
    assert capsys.readouterr().err.count("writing the rank file failed") == 1


def test_the_final_close_takes_everything_even_while_the_slow_lock_is_held(run_root):
    """A signal's helper thread closes the run while the interrupted main thread holds the slow lock (it was
    creating a series): the close must not wait for it forever, nor leave the pending rows and series behind."""
    import threading

    run = start(run_root, flush_interval=60)
    for i in range(3000):
        p4.log_metric("a", float(i), step=i)
        p4.log_metric("b", float(i), step=i, context="v")
    rec = run.recorder
    statuses: list[str] = []
    rec._slow_lock.acquire()  # as the suspended main thread would hold it
    try:
        closer = threading.Thread(target=lambda: statuses.append(rec.close("cancelled", "SIGTERM")))
        t0 = time.monotonic()
        closer.start()
        closer.join(20)
        elapsed = time.monotonic() - t0
    finally:
        rec._slow_lock.release()
    assert statuses == ["cancelled"] and elapsed < 10
    p4.end_run()
    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "cancelled" and rf.nrows == 6000
    assert sorted(rf.series_names()) == [("training", "a"), ("v", "b")]
