"""inspect (prov4ml_hpc.view.inspect) on real runs: unmerged, merged, running, partial (kill -9), requeued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import clean_env

import prov4ml_hpc as p4
from prov4ml_hpc.view.inspect import format_summary, summarize


def make_run(
    root: str,
    run_id: str,
    *,
    ranks: int = 4,
    steps: int = 50,
    attempt: int = 0,
    lr: float = 0.1,
    fail_rank: int | None = None,
    experiment: str = "exp",
    world: int | None = None,
) -> str:
    """A real multi-rank run, one rank after the other in this process (fake PMI environments)."""
    data = os.path.join(root, "data.bin")
    os.makedirs(root, exist_ok=True)
    with open(data, "wb") as fh:
        fh.write(b"x" * 1000)
    run_dir = ""
    for r in range(ranks):
        env = {"PMI_RANK": str(r), "PMI_SIZE": str(world or ranks), "PROV4ML_HPC_ATTEMPT": str(attempt)}
        run = p4.start_run(experiment, root, run_id=run_id, system_metrics=False, gather=False, environ=env)
        run_dir = run.run_dir
        p4.log_params({"lr": lr, "batch_size": 32, "rank_seed": 7})
        p4.log_dataset(name="train-data", path=data)
        for s in range(steps):
            p4.log_metric("loss", 1.0 / (s + 1) + 0.01 * r + lr, step=s + attempt * steps)
            p4.log_metric("accuracy", s / steps, step=s + attempt * steps)
        p4.log_metric("val_loss", 0.5 + lr, step=0, context=p4.VALIDATION)
        ckpt = os.path.join(run.run_dir, "artifacts", f"model-{r}.bin")
        os.makedirs(os.path.dirname(ckpt), exist_ok=True)
        with open(ckpt, "wb") as fh:
            fh.write(b"w" * 64)
        p4.log_model(name="weights", path=ckpt)
        if r == fail_rank:
            p4.end_run(status="failed", reason="ValueError: boom")
        else:
            p4.end_run()
    return run_dir


def _series(d, ctx, name):
    return next(s for s in d["series"] if s["context"] == ctx and s["name"] == name)


def test_unmerged_run(tmp_path):
    run_dir = make_run(str(tmp_path), "r1", fail_rank=2)
    t0 = time.perf_counter()
    d = summarize(run_dir)
    assert time.perf_counter() - t0 < 5
    json.dumps(d)  # JSON-able
    assert d["source"] == "rank files" and d["state"] == "unmerged"
    assert d["job"]["ranks"] == 4 and d["job"]["attempts"] == [0]
    groups = d["ranks"]["attempts"]["0"]
    assert groups["completed"]["count"] == 3 and groups["failed"]["ranks"] == [2]
    assert "ValueError: boom" in next(iter(groups["failed"]["reasons"]))
    loss = _series(d, "training", "loss")
    assert loss["count"] == 200 and loss["ranks"] == 4 and loss["best_rule"] == "min"
    assert loss["best"] == pytest.approx(1 / 50 + 0.1) and loss["last_step"] == 49
    assert loss["last"] == pytest.approx(1 / 50 + 0.1 + 0.015)
    assert _series(d, "training", "accuracy")["best_rule"] == "max"
    assert d["params"] == {"batch_size": 32, "lr": 0.1, "rank_seed": 7}
    kinds = {(a["kind"], a["name"], a["role"]): a["ranks"] for a in d["artifacts"]}
    assert kinds == {("dataset", "train-data", "input"): 4, ("model", "weights", "output"): 4}
    assert d["files"]["ranks"]["files"] == 4
    text = format_summary(d)
    assert "1 failed" in text and "training/loss" in text and "lr = 0.1" in text


def test_merged_run_reads_run_file_and_agrees(tmp_path):
    from prov4ml_hpc.merge import merge_run

    run_dir = make_run(str(tmp_path), "r1")
    before = summarize(run_dir)
    merge_run(run_dir, query_slurm=False)
    after = summarize(run_dir)
    assert after["source"] == "run.h5" and after["state"] == "merged"
    assert after["series"] == before["series"]
    assert after["params"] == before["params"] and after["artifacts"] == before["artifacts"]
    assert after["ranks"]["attempts"]["0"]["completed"]["count"] == 4
    os.unlink(os.path.join(run_dir, "provenance.json"))  # stats then come from run.h5 itself
    assert summarize(run_dir)["series"] == before["series"]


def test_partial_run_after_sigkill(tmp_path):
    code = (
        "import os, sys, time\nimport prov4ml_hpc as p4\n"
        "p4.start_run('exp', sys.argv[1], run_id='k', system_metrics=False, flush_interval=0.1,"
        " environ={'PMI_RANK': '1', 'PMI_SIZE': '2'})\n"
        "for i in range(100): p4.log_metric('loss', 1.0 / (i + 1), step=i)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    make_run(str(tmp_path), "k", ranks=1)  # rank 0 completed, world size 1 -> the killed rank says 2
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], env=clean_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    d = summarize(os.path.join(tmp_path, "exp", "k"))
    groups = d["ranks"]["attempts"]["0"]
    assert groups["partial"]["ranks"] == [1], groups
    assert "without closing" in next(iter(groups["partial"]["reasons"]))
    assert _series(d, "training", "loss")["count"] == 50 + 100


def test_running_run(tmp_path):
    code = (
        "import sys, time\nimport prov4ml_hpc as p4\n"
        "p4.start_run('exp', sys.argv[1], run_id='live', system_metrics=False, flush_interval=0.1)\n"
        "i = 0\nprint('ready', flush=True)\n"
        "while True:\n    p4.log_metric('loss', 1.0 / (i + 1), step=i); i += 1; time.sleep(0.001)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], env=clean_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        run_dir = os.path.join(tmp_path, "exp", "live")
        counts = []
        for _ in range(3):
            time.sleep(0.4)
            d = summarize(run_dir)
            assert d["state"] == "running" and d["ranks"]["attempts"]["0"]["running"]["count"] == 1
            assert d["job"]["end"] is None and "RUNNING" in d["job"]["state"]
            counts.append(_series(d, "training", "loss")["count"])
            assert "running" in format_summary(d)
        assert counts[0] < counts[-1], counts  # it keeps growing while we watch
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_requeued_run_has_attempts(tmp_path):
    from prov4ml_hpc.merge import merge_run

    run_dir = make_run(str(tmp_path), "rq", ranks=2)
    merge_run(run_dir, query_slurm=False)
    time.sleep(0.05)
    make_run(str(tmp_path), "rq", ranks=2, attempt=1)  # the requeue, after the first merge
    d = summarize(run_dir)
    assert d["state"] == "stale-merge" and d["source"] == "rank files"  # run.h5 predates attempt 1
    assert d["job"]["attempts"] == [0, 1]
    assert set(d["ranks"]["attempts"]) == {"0", "1"}
    assert _series(d, "training", "loss")["last_step"] == 99  # latest attempt continues the steps
    assert "requeued" in format_summary(d)
    merge_run(run_dir, query_slurm=False)
    d2 = summarize(run_dir)
    assert d2["source"] == "run.h5" and d2["job"]["attempts"] == [0, 1]
    assert d2["series"] == d["series"]


def test_many_ranks_are_grouped(tmp_path):
    run_dir = make_run(str(tmp_path), "big", ranks=3, steps=2, world=40)  # ranks 3..39 never started
    d = summarize(run_dir)
    missing = d["ranks"]["attempts"]["0"]["missing"]
    assert missing["count"] == 37 and len(missing["ranks"]) == 5
    text = format_summary(d)
    assert "(+32)" in text and len(text.splitlines()) < 60


def test_not_a_run_dir(tmp_path):
    from prov4ml_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="no rank files"):
        summarize(tmp_path)
