"""The one read model: merge and inspect agree (verdicts, missing ranks, totals, statistics) on real runs.

Rank files are written through the API (in this process with PMI environments, or in killed subprocesses);
the same facts are then read three ways: by the merge (its RunSummary), by ``load_run`` from the rank files
before the merge, and by ``load_run`` from run.h5 after it.  They must be equal, and the graph rebuilt from
run.h5 alone must be provenance.json, byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import h5py
import pytest
from conftest import clean_env
from helpers_mpi import make_energy_run, make_rank, run_dir

from prov4ml_hpc import schema
from prov4ml_hpc.merge import merge_run
from prov4ml_hpc.merge.load import load_run
from prov4ml_hpc.merge.model import STATE_MERGED, STATE_UNMERGED
from prov4ml_hpc.provenance.export import serialize
from prov4ml_hpc.provenance.graph import build_document
from prov4ml_hpc.view.inspect import summarize

NAN = float("nan")


def _logs(p4, rank):
    p4.log_params({"lr": 0.01, "rank_seed": rank})
    for step in range(40):
        p4.log_metric("loss", 1.0 / (step + 1) + rank, step=step)
    p4.log_metric("loss", NAN, step=40)  # a non-finite last value
    p4.log_metric("acc", 0.5 + rank, step=1, context=p4.VALIDATION)
    p4.log_metric("node.cpu_percent", 10.0 * rank, step=0, context="system")


_KILLED = """
import sys, time
import prov4ml_hpc as p4
rank, world = sys.argv[2], sys.argv[3]
p4.start_run("exp", sys.argv[1], run_id="m1", system_metrics=False, gather=False, flush_interval=0.05,
             environ={"PMI_RANK": rank, "PMI_SIZE": world})
for i in range(3000):
    p4.log_metric("loss", float(i), step=i)
time.sleep(0.5)  # flushed by now
print("flushed", flush=True)
time.sleep(60)
"""


def _killed_rank(root: str, rank: int, world: int) -> None:
    """A rank that is killed with SIGKILL after its rows were flushed (the file stays "running")."""
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED, root, str(rank), str(world)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "flushed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def _complete(root):
    for rank in range(3):
        make_rank(root, rank, 3, logs=_logs)


def _partial(root):
    make_rank(root, 0, 2, logs=_logs)
    _killed_rank(root, 1, 2)


def _missing(root):
    for rank in (0, 2):
        make_rank(root, rank, 4, logs=_logs)  # ranks 1 and 3 of 4 never wrote a file


def _corrupt(root):
    make_rank(root, 0, 3, logs=_logs)
    make_rank(root, 1, 3, logs=_logs)
    with open(os.path.join(run_dir(root), "ranks", "rank-00002.h5"), "wb") as f:
        f.write(b"not an HDF5 file" * 64)


def _requeued(root):
    for rank in range(2):
        make_rank(root, rank, 2, logs=_logs)
    make_rank(root, 0, 2, attempt=1, logs=_logs)  # attempt 1: rank 1 never restarted
    _killed_rank_attempt(root)


def _killed_rank_attempt(root):
    code = _KILLED.replace('"PMI_SIZE": world}', '"PMI_SIZE": world, "PROV4ML_HPC_ATTEMPT": "2"}')
    with subprocess.Popen(
        [sys.executable, "-c", code, root, "1", "2"], env=clean_env(), stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "flushed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


SCENARIOS = {
    "complete": (_complete, {"completed": 3}),
    "partial": (_partial, {"completed": 1, "partial": 1}),
    "missing": (_missing, {"completed": 2, "missing": 2}),
    "corrupt": (_corrupt, {"completed": 2, "corrupt": 1}),
    "requeued": (_requeued, {"completed": 3, "missing": 2, "partial": 1}),
}


def _num(v):
    return repr(v) if isinstance(v, float) else v  # NaN == NaN, bit for bit


def facts(run) -> dict:
    """What every reader must agree on."""
    return {
        "run_id": run.run_id,
        "world_size": run.world_size,
        "verdicts": {r.stem: (r.status, r.reason, r.file, r.rows) for r in run.ranks},
        "totals": run.totals,
        "problems": [p for p in run.problems if not p.startswith("run.h5 is out of date")],
        "series": {
            (r.stem, x.context, x.name): tuple(
                _num(getattr(x, f))
                for f in (
                    "kind",
                    "count",
                    "nonfinite",
                    "first_step",
                    "last_step",
                    "min",
                    "max",
                    "last",
                    "first_time",
                    "last_time",
                )
            )
            for r in run.ranks
            for x in r.series
        },
        "params": {r.stem: sorted((p.name, _num(p.value)) for p in r.params) for r in run.ranks},
        "contexts": {r.stem: [(c.name, c.start, c.end) for c in r.contexts] for r in run.ranks},
        "times": {r.stem: (r.start_time, r.end_time, r.node, r.local_rank) for r in run.ranks},
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_merge_and_inspect_agree(run_root, name):
    make, statuses = SCENARIOS[name]
    make(run_root)
    d = run_dir(run_root)
    before = load_run(d)
    inspect_before = summarize(d)
    assert before.state == STATE_UNMERGED
    result = merge_run(d, query_slurm=False)
    after = load_run(d)
    assert after.state == STATE_MERGED and after.source == schema.RUN_FILE and after.graph == "current"
    counts: dict[str, int] = {}
    for r in after.ranks:
        counts[r.status] = counts.get(r.status, 0) + 1
    assert counts == statuses
    assert facts(before) == facts(result.summary) == facts(after)
    inspect_after = summarize(d)
    for key in ("ranks", "series", "params", "artifacts", "energy", "run_id", "experiment"):
        assert inspect_after[key] == inspect_before[key], key
    # the graph rebuilt from run.h5 alone is the one the merge wrote
    with open(os.path.join(d, schema.PROV_FILE), "rb") as f:
        assert serialize(build_document(after), "json").encode() == f.read()


def test_a_gpu_reported_by_two_ranks_counts_once(run_root):
    d = make_energy_run(run_root)
    want = {
        "energy_kwh": 0.75,
        "emissions_kg_co2eq": pytest.approx(0.15),
        "gpu_energy_j": 650.0,  # GPU-a 300 + GPU-b 250 (largest of 250 and 200) + GPU-c 100; never 850
        "gpus_measured": 3,
    }
    unmerged = summarize(d)["energy"]
    result = merge_run(d, query_slurm=False)
    merged = summarize(d)["energy"]
    assert unmerged == want and result.summary.totals == want and merged == want
    with h5py.File(os.path.join(d, schema.RUN_FILE), "r") as f:
        import json

        assert json.loads(f.attrs[schema.A_TOTALS])["gpu_energy_j"] == 650.0
    from prov4ml_hpc.provenance import vocab as v
    from prov4ml_hpc.provenance.export import load_prov_json

    job = load_prov_json(os.path.join(d, schema.PROV_FILE)).get_record(
        f"{v.run_namespace('energy').prefix}:job"
    )
    assert job[0].get_attribute(v.PROV4ML["gpu_energy_j"]) == {650.0}
    from prov4ml_hpc.provenance.crate import crate_metadata

    ents = {e["@id"]: e for e in crate_metadata(load_run(d, values=False))[0]["@graph"]}
    assert ents["#usage-gpu_energy_j"]["value"] == 650.0 and ents["#usage-energy_kwh"]["value"] == 0.75


def test_statistics_never_come_from_the_graph(run_root):
    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    before = facts(load_run(d))
    with open(os.path.join(d, schema.PROV_FILE), "w") as f:
        f.write('{"prefix": {}, "entity": {}}')  # an unrelated (or hostile) graph
    after = load_run(d)
    assert {**facts(after), "problems": before["problems"]} == before and after.graph == "other merge"
    assert "provenance.json is not the graph" in after.problems[0]


def test_reading_run_h5_reads_no_values(run_root, monkeypatch):
    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        read.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    run = load_run(d)
    assert run.state == STATE_MERGED and not [n for n in read if n.startswith("/series")], read
    assert {x.count for r in run.ranks for x in r.series if x.name == "loss"} == {41}


def test_a_copied_run_is_still_merged(run_root, tmp_path):
    import shutil

    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    copy = str(tmp_path / "copy")
    shutil.copytree(d, copy, copy_function=shutil.copyfile)  # new mtimes, same contents
    run = load_run(copy)
    assert run.state == STATE_MERGED, run.problems
    with open(os.path.join(copy, "ranks", "rank-00001.h5"), "r+b") as f:
        f.seek(0, 2)
        f.write(b"\0" * 16)  # the file grew after the merge
    run = load_run(copy)
    assert run.state == "stale-merge" and "rank-00001.h5 changed after the merge" in run.problems[0]


def test_a_requeue_after_the_merge_makes_it_stale(run_root):
    for rank in range(2):
        make_rank(run_root, rank, 2, logs=_logs)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    make_rank(run_root, 0, 2, attempt=1, logs=_logs)
    run = load_run(d)
    assert run.state == "stale-merge" and run.source == "rank files" and run.attempts == [0, 1]
    assert "appeared after the merge" in run.problems[0]


_LIVE = """
import sys, time
import prov4ml_hpc as p4
p4.start_run("exp", sys.argv[1], run_id="m1", system_metrics=False, gather=False, flush_interval=0.05,
             environ={"PMI_RANK": "1", "PMI_SIZE": "2"})
for i in range(100):
    p4.log_metric("loss", float(i), step=i)
time.sleep(0.5)
print("flushed", flush=True)
time.sleep(60)
"""


def test_a_merge_while_a_writer_is_alive_is_not_merged(run_root):
    make_rank(run_root, 0, 2, logs=_logs)
    d = run_dir(run_root)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIVE, run_root], env=clean_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "flushed"
        result = merge_run(d, query_slurm=False)
        assert result.ranks["partial"] == ["rank-00001"]  # the merge never says running
        s = summarize(d)  # the writer flushes every 0.05 s: its file changed after the merge
        assert s["state"] == "running" and s["source"] == "rank files"
        assert s["ranks"]["attempts"]["0"]["running"]["ranks"] == [1]
        assert "changed after the merge" in s["problems"][0]
        os.kill(proc.pid, signal.SIGSTOP)  # alive, but its file no longer changes
        merge_run(d, query_slurm=False)
        s = summarize(d)
        assert s["state"] == "running" and f"(pid {proc.pid}) is still running" in s["problems"][0]
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
    assert summarize(d)["state"] == "merged"  # dead now: what the merge read is all there is


def test_paths_do_not_change_the_graph(run_root, tmp_path, monkeypatch):
    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    with open(os.path.join(d, schema.PROV_FILE), "rb") as f:
        first = f.read()
    link = tmp_path / "link"
    link.symlink_to(d)
    merge_run(str(link), query_slurm=False)  # through a symlink
    monkeypatch.chdir(os.path.dirname(d))
    merge_run(os.path.basename(d), query_slurm=False)  # relative, from another directory
    with open(os.path.join(d, schema.PROV_FILE), "rb") as f:
        assert f.read() == first
    real = os.path.realpath(d)
    assert first.count(f'"{real}"'.encode()) == 1  # the job's run_dir, resolved; nothing else names it
    import shutil

    elsewhere = str(tmp_path / "moved" / "exp" / "m1")
    shutil.copytree(os.path.join(d, "ranks"), os.path.join(elsewhere, "ranks"))
    merge_run(elsewhere, query_slurm=False)
    with open(os.path.join(elsewhere, schema.PROV_FILE), "rb") as f:
        moved = f.read()
    assert moved != first and moved == first.replace(f'"{real}"'.encode(), f'"{elsewhere}"'.encode())


def _sha(d, name):
    import hashlib

    with open(os.path.join(d, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_failing_graph_builder_changes_nothing(run_root, monkeypatch):
    from helpers_mpi import dump_h5, sha256_tree

    from prov4ml_hpc.errors import MergeError

    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    make_rank(run_root, 0, 3, attempt=1, logs=_logs)  # new input: a new merge changes both files
    before = sha256_tree(os.path.join(d, "ranks")), _sha(d, schema.RUN_FILE), _sha(d, schema.PROV_FILE)
    h5_before = dump_h5(os.path.join(d, schema.RUN_FILE))

    def broken(summary, **kw):
        raise OverflowError("date value out of range")  # what a flipped bit in a row's time once did

    monkeypatch.setattr("prov4ml_hpc.provenance.graph.build_document", broken)
    with pytest.raises(MergeError, match="before anything was replaced.*as they were"):
        merge_run(d, query_slurm=False)
    after = sha256_tree(os.path.join(d, "ranks")), _sha(d, schema.RUN_FILE), _sha(d, schema.PROV_FILE)
    assert after == before and dump_h5(os.path.join(d, schema.RUN_FILE)) == h5_before
    assert sorted(os.listdir(d)) == ["provenance.json", "ranks", "run.h5"]  # no temporary left


def test_a_failing_rename_of_the_graph_changes_nothing(run_root):
    from helpers_mpi import sha256_tree

    from prov4ml_hpc.errors import MergeError

    _complete(run_root)
    d = run_dir(run_root)
    first = merge_run(d, query_slurm=False)
    os.unlink(first.outputs[schema.PROV_FILE])
    os.mkdir(first.outputs[schema.PROV_FILE])  # provenance.json cannot be replaced: a real OSError
    before = sha256_tree(os.path.join(d, "ranks")), os.stat(first.outputs[schema.RUN_FILE]).st_mtime_ns
    with pytest.raises(MergeError, match="nothing was replaced"):
        merge_run(d, query_slurm=False)
    assert (
        sha256_tree(os.path.join(d, "ranks")),
        os.stat(first.outputs[schema.RUN_FILE]).st_mtime_ns,
    ) == before
    assert sorted(os.listdir(d)) == ["provenance.json", "ranks", "run.h5"]


def test_a_half_committed_pair_is_recognised(run_root):
    _complete(run_root)
    d = run_dir(run_root)
    old = merge_run(d, query_slurm=False)
    with open(old.outputs[schema.PROV_FILE], "rb") as f:
        old_graph = f.read()
    make_rank(run_root, 0, 3, attempt=1, logs=_logs)
    merge_run(d, query_slurm=False)
    with open(os.path.join(d, schema.PROV_FILE), "wb") as f:
        f.write(old_graph)  # as if the merge had stopped between its two renames
    s = summarize(d)
    assert s["state"] == "merged" and s["graph"] == "other merge"
    assert "merge was interrupted" in s["problems"][0]
    merge_run(d, query_slurm=False)
    assert summarize(d)["graph"] == "current"


def test_a_flipped_time_bit_never_leaves_a_half_pair(run_root):
    """One row's time becomes 3.3e28 (a flipped exponent bit): whatever the merge makes of it, run.h5 and
    provenance.json on disk are always the two files of one merge."""
    from prov4ml_hpc.errors import MergeError

    _complete(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    path = os.path.join(d, "ranks", "rank-00001.h5")
    with h5py.File(path, "r+", locking=False) as f:
        rows = f[schema.DS_ROWS]
        row = rows[3]
        row["time"] = 3.3e28
        rows[3] = row
    try:
        merge_run(d, query_slurm=False)
    except MergeError:
        pass
    run = load_run(d)
    assert run.graph == "current", run.problems  # the old pair, or a new one: never one of each


def test_a_run_file_without_its_index_reads_the_same(run_root):
    """run.h5 written before /index existed: the ranks and series come from the attributes instead."""
    _requeued(run_root)
    d = run_dir(run_root)
    merge_run(d, query_slurm=False)
    with_index = facts(load_run(d))
    path = os.path.join(d, schema.RUN_FILE)
    stat = os.stat(path)
    with h5py.File(path, "r+", locking=False) as f:
        del f[schema.DS_RUN_INDEX]
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = load_run(d)
    assert run.state == STATE_MERGED and facts(run) == with_index
