"""The post-job merge on real rank files: contents, aggregates, crashed/missing/corrupt ranks, atomicity."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import clean_env
from helpers_mpi import dump_h5, make_rank, run_dir, sha256_tree
from prov.model import ProvDocument

from prov4ml_hpc import schema
from prov4ml_hpc.errors import MergeError
from prov4ml_hpc.merge import merge_run
from prov4ml_hpc.merge.runfile import read_run_file

NAN, INF = float("nan"), float("inf")


def _values(rank: int) -> list[tuple[int, float]]:
    """Known data: every rank logs steps 0..49, rank 1 also logs steps 50..59 and repeats step 3;
    rank 2 logs a NaN at step 5 and an inf at step 6."""
    out = [(s, (s + 1) * 0.5 + rank * 10.0 + (s % 3) * 0.1) for s in range(50)]
    if rank == 1:
        out += [(s, -float(s)) for s in range(50, 60)] + [(3, 100.0)]
    if rank == 2:
        out[5] = (5, NAN)
        out[6] = (6, INF)
    return out


def _logs(p4, rank):
    p4.log_params({"lr": 0.01, "rank_seed": rank})
    for step, value in _values(rank):
        p4.log_metric("loss", value, step=step)
    p4.log_metric("acc", 0.5 + rank, step=1, context=p4.VALIDATION)
    p4.log_metric("weird/name.x", 1.0, step=0, context="ctx/../evil")


@pytest.fixture
def three_ranks(run_root):
    for rank in range(3):
        make_rank(run_root, rank, 3, logs=_logs)
    return run_dir(run_root)


def test_merge_writes_every_series_and_correct_aggregates(three_ranks):
    result = merge_run(three_ranks, query_slurm=False)
    assert result.exit_code == 0 and result.problems == []
    assert result.ranks == {"completed": ["rank-00000", "rank-00001", "rank-00002"]}
    assert result.values == sum(len(_values(r)) + 2 for r in range(3))
    rf = read_run_file(result.outputs["run.h5"])
    assert rf.attrs["format"] == schema.RUN_FORMAT and rf.attrs["schema_version"] == schema.SCHEMA_VERSION
    assert rf.attrs["world_size"] == 3 and rf.attrs["run_id"] == "m1"
    for rank in range(3):
        got = rf.values("loss", global_rank=rank)
        want = _values(rank)
        assert list(got["step"]) == [s for s, _ in want]
        np.testing.assert_array_equal(got["value"], [v for _, v in want])
        assert rf.ranks[f"rank-{rank:05d}"]["status"] == "completed"
    # every user name is escaped; nothing escapes /series
    odd = [s for s in rf.series if s[1] == "weird/name.x"]
    assert len(odd) == 3 and odd[0][0] == "ctx/../evil"
    assert odd[0][3] == "/series/ctx%2F%2E%2E%2Fevil/weird%2Fname%2Ex/rank-00000"
    # aggregates against numpy over the finite values of all ranks, per step
    agg = rf.aggregates("loss")
    by_step: dict[int, list[float]] = {}
    for rank in range(3):
        for step, value in _values(rank):
            by_step.setdefault(step, []).append(value)
    assert list(agg["step"]) == sorted(by_step)
    for row in agg:
        vals = np.array(by_step[int(row["step"])])
        fin = vals[np.isfinite(vals)]
        assert row["count"] == len(fin) and row["nonfinite"] == len(vals) - len(fin)
        assert row["min"] == fin.min() and row["max"] == fin.max()
        assert math.isclose(row["mean"], fin.mean(), rel_tol=1e-12)
        assert math.isclose(row["std"], fin.std(), rel_tol=1e-9, abs_tol=1e-12)
    assert list(rf.aggregates("acc", "validation")["mean"]) == [1.5]


def test_summary_and_provenance(three_ranks, tmp_path):
    result = merge_run(three_ranks, query_slurm=False)
    s = result.summary
    assert s.world_size == 3 and [r.status for r in s.ranks] == ["completed"] * 3
    r2 = s.ranks[2]
    loss = next(x for x in r2.series if x.name == "loss")
    assert (loss.count, loss.first_step, loss.last_step, loss.nonfinite) == (50, 0, 49, 2)
    fin = [v for _, v in _values(2) if math.isfinite(v)]
    assert (loss.min, loss.max, loss.last) == (min(fin), max(fin), _values(2)[-1][1])
    assert loss.dataset == "/series/training/loss/rank-00002"
    assert {p.name: p.value for p in r2.params} == {"lr": 0.01, "rank_seed": 2}
    assert {c.name for c in r2.contexts} == {"training", "validation", "ctx/../evil"}
    with open(result.outputs["provenance.json"], "rb") as f:
        text = f.read()
    doc = ProvDocument.deserialize(content=text.decode(), format="json")
    assert not doc.bundles
    for rec in doc.get_records():
        if rec.is_element():
            assert rec.label is not None, rec
    raw = json.loads(text)
    assert "prov4ml" in json.dumps(raw.get("prefix", {}))
    round_trip = ProvDocument.deserialize(content=doc.serialize(format="json"), format="json")
    assert round_trip == doc


def test_idempotent_and_rank_files_untouched(three_ranks):
    ranks_before = sha256_tree(os.path.join(three_ranks, "ranks"))
    first = merge_run(three_ranks, query_slurm=False)
    run1 = dump_h5(first.outputs["run.h5"])
    with open(first.outputs["provenance.json"], "rb") as f:
        prov1 = f.read()
    second = merge_run(three_ranks, query_slurm=False, block_rows=7)  # tiny blocks: same series bits
    run2 = dump_h5(second.outputs["run.h5"])
    with open(second.outputs["provenance.json"], "rb") as f:
        assert f.read() == prov1
    assert {k: v for k, v in run1.items() if "aggregates" not in k} == {
        k: v for k, v in run2.items() if "aggregates" not in k
    }
    third = merge_run(three_ranks, query_slurm=False)
    assert dump_h5(third.outputs["run.h5"]) == run1
    assert sha256_tree(os.path.join(three_ranks, "ranks")) == ranks_before
    assert sorted(os.listdir(three_ranks)) == ["provenance.json", "ranks", "run.h5"]


def test_missing_and_corrupt_ranks_are_recorded_others_merged(run_root):
    for rank in (0, 1):
        make_rank(run_root, rank, 5, logs=_logs)
    d = run_dir(run_root)
    with open(os.path.join(d, "ranks", "rank-00002.h5"), "wb") as f:
        f.write(b"garbage, not HDF5" * 100)
    with h5py.File(os.path.join(d, "ranks", "rank-00003.h5"), "w") as f:
        f.attrs["format"] = "something else"
    make_rank(run_root, 5, 7, logs=_logs)
    path5 = os.path.join(d, "ranks", "rank-00005.h5")
    with open(path5, "r+b") as f:
        f.truncate(os.path.getsize(path5) // 3)
    result = merge_run(d, query_slurm=False)
    assert result.exit_code == 1
    assert result.ranks["completed"] == ["rank-00000", "rank-00001"]
    assert result.ranks["corrupt"] == ["rank-00002", "rank-00003"]
    assert result.ranks["partial"] == ["rank-00005"]  # truncated: what remains is read
    assert result.ranks["missing"] == ["rank-00004", "rank-00006"]
    assert any("rank-00004" in p for p in result.problems)
    rf = read_run_file(result.outputs["run.h5"])
    assert (
        rf.ranks["rank-00002"]["status"] == "corrupt"
        and "cannot be opened" in rf.ranks["rank-00002"]["status_reason"]
    )
    assert rf.ranks["rank-00004"]["status"] == "missing"
    assert rf.aggregates("loss")["count"][0] == 2
    statuses = {r.global_rank: r.status for r in result.summary.ranks}
    assert statuses == {
        0: "completed",
        1: "completed",
        2: "corrupt",
        3: "corrupt",
        4: "missing",
        5: "partial",
        6: "missing",
    }


def test_strict_mode_raises_before_writing(run_root):
    make_rank(run_root, 0, 2, logs=_logs)
    d = run_dir(run_root)
    with pytest.raises(MergeError, match="strict.*missing rank-00001"):
        merge_run(d, strict=True, query_slurm=False)
    assert os.listdir(d) == ["ranks"]
    make_rank(run_root, 1, 2, logs=_logs)
    assert merge_run(d, strict=True, query_slurm=False).exit_code == 0


def test_no_rank_files_is_a_clear_error(tmp_path):
    with pytest.raises(MergeError, match="no rank files"):
        merge_run(tmp_path, query_slurm=False)
    with pytest.raises(MergeError, match="not a directory"):
        merge_run(tmp_path / "nope", query_slurm=False)


_WRITER = """
import os, sys, time
import prov4ml_hpc as p4
p4.start_run("exp", sys.argv[1], run_id="m1", system_metrics=False, gather=False, flush_interval=0.05,
             environ={"PMI_RANK": "1", "PMI_SIZE": "2"})
for i in range(5000):
    p4.log_metric("loss", float(i), step=i)
time.sleep(0.5)  # flushed by now
print("flushed", flush=True)
for i in range(5000, 5100):
    p4.log_metric("loss", float(i), step=i)
time.sleep(60)
"""


def test_killed_rank_is_partial_with_its_flushed_rows(run_root):
    make_rank(run_root, 0, 2, logs=_logs)
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, run_root], env=clean_env(), stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "flushed"
            time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    result = merge_run(run_dir(run_root), query_slurm=False)
    assert result.exit_code == 1 and result.ranks["partial"] == ["rank-00001"]
    r1 = result.summary.ranks[1]
    assert r1.status == "partial" and "last flush" in r1.reason and r1.end_time is not None
    loss = read_run_file(result.outputs["run.h5"]).values("loss", global_rank=1)
    assert len(loss) >= 5000 and list(loss["step"]) == list(range(len(loss)))


_MERGER = """
import os, signal, sys
from prov4ml_hpc.merge import merge_run
def die(done, total, what):
    os.kill(os.getpid(), signal.SIGKILL)
merge_run(sys.argv[1], query_slurm=False, progress=die, block_rows=10)
"""


def test_interrupted_merge_keeps_previous_outputs_and_rerun_completes(three_ranks):
    first = merge_run(three_ranks, query_slurm=False)
    before = sha256_tree(three_ranks + "/ranks"), dump_h5(first.outputs["run.h5"])
    with open(first.outputs["provenance.json"], "rb") as f:
        prov = f.read()
    proc = subprocess.run([sys.executable, "-c", _MERGER, three_ranks], env=clean_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(three_ranks) if n.endswith(".tmp")]
    assert leftovers  # the killed merge's temporary run file
    assert (sha256_tree(three_ranks + "/ranks"), dump_h5(first.outputs["run.h5"])) == before
    with open(first.outputs["provenance.json"], "rb") as f:
        assert f.read() == prov
    again = merge_run(three_ranks, query_slurm=False)
    assert dump_h5(again.outputs["run.h5"]) == before[1]
    assert sorted(os.listdir(three_ranks)) == ["provenance.json", "ranks", "run.h5"]


def test_attempts_are_kept_apart(run_root):
    for rank in range(2):
        make_rank(run_root, rank, 2, logs=_logs)
    make_rank(run_root, 0, 2, attempt=1, logs=_logs)
    result = merge_run(run_dir(run_root), query_slurm=False)
    assert result.ranks["missing"] == ["rank-00001.attempt-1"]
    rf = read_run_file(result.outputs["run.h5"])
    assert {(c, n, a) for c, n, a, _ in rf.aggregate_keys if n == "loss"} == {
        ("training", "loss", 0),
        ("training", "loss", 1),
    }
    assert rf.aggregates("loss", attempt=1)["count"][0] == 1
    assert len(rf.values("loss", global_rank=0, attempt=1)) == 50
    assert [(r.global_rank, r.attempt) for r in result.summary.ranks] == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_progress_and_bounded_blocks(run_root):
    def logs(p4, rank):
        for i in range(3000):
            p4.log_metric(f"m{i % 3}", float(i), step=i // 3)

    make_rank(run_root, 0, 1, logs=logs)
    calls = []
    result = merge_run(
        run_dir(run_root), query_slurm=False, block_rows=500, progress=lambda d, t, w: calls.append((d, t, w))
    )
    assert calls[-1] == (3000, 3000, "rank-00000") and len(calls) == 6
    with h5py.File(result.outputs["run.h5"], "r") as f:
        ds = f["/series/training/m1/rank-00000"]
        assert ds.chunks is not None and list(ds["step"]) == list(range(1000))
