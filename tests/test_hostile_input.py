"""Strings and steps a hostile but realistic user logs: every one is stored exactly (or rejected and said), merged.

Before the fix a lone surrogate (a latin-1 file name as ``os.listdir`` returns it) stopped the rank's recording
(file left ``running`` with 0 rows), a NUL in a metric name made ``merge`` die, a non-UTF-8 working directory
made ``start_run`` raise, and steps past 2**53 were silently rounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.merge import merge_run
from prov4ml_hpc.merge.runfile import read_run_file

HOSTILE = [
    "caf\udce9",  # os.fsdecode of latin-1 bytes
    "\ud800 alone",  # a lone high surrogate (not from surrogateescape)
    "nul\x00inside",
    "ctl\x01\x1b[31m\x7f",
    "line\nbreak\ttab",
    "",
    "/",
    "..",
    "a/b.c",
    "\u202eRTL \U0001f389",
    '"quoted" & <xml> $x$',
]


def test_hostile_names_contexts_params_and_events_are_stored_and_merged_exactly(run_root):
    run = p4.start_run("exp", run_root, run_id="hostile", system_metrics=False, flush_interval=0.05)
    for k, s in enumerate(HOSTILE):
        for i in range(3):
            p4.log_metric(s, float(k * 10 + i), step=i, context="training")
            p4.log_metric("m", float(i), step=i, context=s)
        p4.log_param(f"p{k}{s}", s)
        p4.log_event(f"e{s}", context=s, what=s)
    for i in range(5000):  # rows after the hostile strings: recording must go on
        p4.log_metric("after", float(i), step=i)
    assert p4.end_run() == "completed"

    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "completed" and not rf.problems
    assert rf.nrows == len(HOSTILE) * 6 + 5000
    names = rf.series_names()
    for k, s in enumerate(HOSTILE):
        assert ("training", s) in names and (s, "m") in names
        assert list(rf.values(s, "training")["value"]) == [k * 10.0, k * 10.0 + 1, k * 10.0 + 2]
        assert rf.params[f"p{k}{s}"] == s
    events = rf.records_of(schema.REC_EVENT)
    assert [(e["name"], e["context"], e["attrs"]["what"]) for e in events] == [
        (f"e{s}", s, s) for s in HOSTILE
    ]

    result = merge_run(run.run_dir, query_slurm=False)
    assert result.exit_code == 0 and result.values == rf.nrows
    merged = read_run_file(result.outputs["run.h5"])
    keys = {(c, n) for c, n, _, _ in merged.series}
    for k, s in enumerate(HOSTILE):
        assert ("training", s) in keys and (s, "m") in keys
        assert list(merged.values(s, "training")["value"]) == [k * 10.0, k * 10.0 + 1, k * 10.0 + 2]
    with h5py.File(result.outputs["run.h5"], "r") as f:
        records = [json.loads(t) for t in f["ranks/rank-00000/records"].asstr()[:]]
    params = {r["name"]: r["value"] for r in records if r["type"] == schema.REC_PARAM}
    assert params == {f"p{k}{s}": s for k, s in enumerate(HOSTILE)}


def test_artifact_with_a_latin1_file_name_from_listdir(run_root, tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9 \xff.bin"), "wb") as f:
        f.write(b"payload")
    (name,) = os.listdir(folder)  # 'caf\udce9 \udcff.bin'
    run = p4.start_run("exp", run_root, run_id="latin1", system_metrics=False, flush_interval=0.05)
    rec = p4.log_artifact(os.path.join(folder, name), copy=True)
    for i in range(5000):
        p4.log_metric("loss", float(i), step=i)
    assert p4.end_run() == "completed"
    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "completed" and rf.nrows == 5000
    (art,) = rf.records_of(schema.REC_ARTIFACT)
    assert art["path"] == rec["path"] and os.fsencode(art["path"]).endswith(b"caf\xe9 \xff.bin")
    assert art["size"] == 7
    result = merge_run(run.run_dir, query_slurm=False)
    assert result.exit_code == 0 and result.values == 5000
    with h5py.File(result.outputs["run.h5"], "r") as f:
        records = [json.loads(t) for t in f["ranks/rank-00000/records"].asstr()[:]]
    (merged,) = [r for r in records if r["type"] == schema.REC_ARTIFACT]
    assert merged["path"] == art["path"] and merged["copy"] == art["copy"]
    with open(os.path.join(run.run_dir, art["copy"]), "rb") as f:
        assert f.read() == b"payload"


def test_steps_beyond_2_53_are_rejected_and_said_never_rounded(run_root, capsys):
    run = p4.start_run("exp", run_root, run_id="steps", system_metrics=False)
    good = [0, 1, 2**53 - 1, -(2**53 - 1), -5]
    bad = [2**53, 2**53 + 1, 2**63, 2**64 + 7, -(2**63) - 1, 10**400]
    for step in good + bad:
        p4.log_metric("s", 1.0, step=step)
    p4.log_metric("s", 2.0, step=3)  # recording goes on
    assert p4.end_run() == "completed"
    rf = p4.read_rank_file(run.rank_file)
    assert list(rf.values("s")["step"]) == [*good, 3]
    assert rf.attrs[schema.A_PROBLEMS]["rejected_value:training/s"] == len(bad)
    problems = rf.records_of(schema.REC_PROBLEM)
    assert len(problems) == 1 and "outside +-2**53" in problems[0]["message"]
    assert capsys.readouterr().err.count("outside +-2**53") == 1


def test_non_utf8_working_directory_runs_the_script_and_records(tmp_path):
    cwd = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    os.mkdir(cwd)
    with open(os.path.join(cwd, b"train.py"), "w") as f:
        f.write("import prov4ml_hpc as p4\np4.log_metric('x', 1.0)\nprint('script ran')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc.run", "--run-id", "cwd", "train.py"],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "script ran"
    path = os.path.join(cwd, b"prov4ml_runs", b"experiment", b"cwd", b"ranks", b"rank-00000.h5")
    rf = p4.read_rank_file(os.fsdecode(path))
    assert rf.status == "completed" and rf.nrows == 1
    assert os.fsencode(rf.attrs[schema.A_CWD]) == cwd  # the exact bytes
    result = merge_run(os.fsdecode(os.path.dirname(os.path.dirname(path))), query_slurm=False)
    assert result.exit_code == 0
    with h5py.File(result.outputs["run.h5"], "r") as f:
        assert os.fsencode(f["ranks/rank-00000"].attrs[schema.A_CWD]) == cwd


@pytest.mark.parametrize(
    "reason, kept",
    [
        ("caf\udce9", "caf\udce9"),  # surrogateescape text: exact (stored as its original bytes)
        ("nul\x00reason", "nul\\x00reason"),  # HDF5 cannot hold a NUL: a visible escape, never an error
        ("\udfff", "\\udfff"),
    ],
)
def test_a_hostile_end_reason_never_stops_the_close(run_root, reason, kept):
    run = p4.start_run("exp", run_root, run_id="reason", system_metrics=False)
    p4.log_metric("x", 1.0)
    assert p4.end_run(status="failed", reason=reason) == "failed"
    rf = p4.read_rank_file(run.rank_file)
    assert rf.status == "failed" and rf.nrows == 1
    assert rf.attrs[schema.A_STATUS_REASON] == kept


def test_nul_and_control_characters_in_names_are_merged(run_root):
    """The recorder always kept these (JSON escapes them); HDF5 attributes cannot hold a NUL: merge died."""
    run = p4.start_run("exp", run_root, run_id="nul", system_metrics=False)
    for i in range(100):
        p4.log_metric("lo\x00ss", float(i), step=i, context="c\x01tx\x00")
    assert p4.end_run() == "completed"
    result = merge_run(run.run_dir, query_slurm=False)
    assert result.exit_code == 0 and result.values == 100
    merged = read_run_file(result.outputs["run.h5"])
    assert [(c, n) for c, n, _, _ in merged.series] == [("c\x01tx\x00", "lo\x00ss")]
    assert list(merged.values("lo\x00ss", "c\x01tx\x00")["step"]) == list(range(100))
