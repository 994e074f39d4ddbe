"""Unit tests of the provenance graph builder and its exports (no MPI, no SLURM, no GPU)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest
from prov.constants import PROV, PROV_LABEL, PROV_TYPE, PROV_VALUE
from prov.model import ProvActivity, ProvDocument, ProvElement, ProvRelation

from prov4ml_hpc import schema
from prov4ml_hpc.errors import ExportError
from prov4ml_hpc.merge.model import (
    ArtifactRecord,
    ContextSpan,
    JobInfo,
    ParamRecord,
    RankSummary,
    RunSummary,
    SeriesSummary,
)
from prov4ml_hpc.provenance import build_document, load_prov_json, serialize, write_prov_json
from prov4ml_hpc.provenance import vocab as v
from prov4ml_hpc.provenance.export import load_export, plain_types

T0 = 1_700_000_000.25
ALLOWED = {
    "wasGeneratedBy",
    "used",
    "wasInformedBy",
    "wasAssociatedWith",
    "wasAttributedTo",
    "wasDerivedFrom",
    "wasStartedBy",
    "hadMember",
}
JSON_NODE_KEYS = {"entity", "activity", "agent"}
ODD_NAMES = [
    "loss/train",
    "loss train",
    "loss.train",
    "loss-train",
    "loss_train",
    "",
    "ünïcødé λ",
    "x" * 1000,
]


def series(name, rank, context="training", count=100, kind=schema.KIND_METRIC, **kw):
    return SeriesSummary(
        name=name,
        context=context,
        kind=kind,
        global_rank=rank,
        count=count,
        first_step=0,
        last_step=count - 1,
        min=0.125,
        max=2.5,
        last=0.25,
        first_time=T0,
        last_time=T0 + count,
        unit=None,
        dataset=f"/ranks/{rank:05d}/series/{schema.escape_name(context)}/{schema.escape_name(name)}",
        **kw,
    )


def rank(g, attempt=0, status=schema.STATUS_COMPLETED, n_series=2, count=100, **kw):
    r = RankSummary(
        global_rank=g,
        attempt=attempt,
        status=status,
        file=f"ranks/{schema.rank_file_name(g, attempt)}",
        local_rank=g % 4,
        node=f"node{g // 4:03d}",
        pid=1000 + g,
        start_time=T0 + 10 * attempt,
        end_time=T0 + 10 * attempt + 5,
        rows=n_series * count,
        meta={
            schema.A_ARGV: ["train.py", "--lr", "0.1"],
            schema.A_CWD: "/home/alice/exp",
            schema.A_PYTHON_VERSION: "3.11.7",
            schema.A_PACKAGE_VERSION: "0.1.0",
            schema.A_PACKAGES: {"numpy": "2.0.0", "torch": "2.3.0"},
            schema.A_HARDWARE: {"cpu_model": "EPYC", "memory_total_bytes": 2**38, "gpus": [{"index": 0}]},
        },
        series=[series(f"metric{i}", g, count=count) for i in range(n_series)],
        contexts=[ContextSpan("training", T0 + 10 * attempt, T0 + 10 * attempt + 4)],
        totals={"gpu_energy_j": {"GPU-1": 12.5}, "cpu_energy_kwh": 0.001},
        **kw,
    )
    return r


def full_summary(count=100):
    """2 ranks, requeued (2 attempts), a partial and a missing rank, odd names, every param type, artifacts."""
    r0 = rank(0, count=count)
    r0.series += [series(name, 0, count=count) for name in ODD_NAMES]
    r0.series.append(series("loss", 0, context="val/idation", count=count))
    r0.series.append(series("cpu_percent", 0, context="system", kind=schema.KIND_SYSTEM, count=count))
    nan_last = series("diverged", 0, count=count)
    nan_last.last, nan_last.nonfinite = math.nan, 3
    r0.series.append(nan_last)
    r0.params = [
        ParamRecord("lr", 0.01, None, 0, T0),
        ParamRecord("epochs", 10, None, 0, T0),
        ParamRecord("big", 2**40, None, 0, T0),
        ParamRecord("shuffle", True, None, 0, T0),
        ParamRecord("optimizer", "adam", "training", 0, T0),
        ParamRecord("layers", "[64, 32]", None, 0, T0),
        ParamRecord("eps", math.inf, None, 0, T0),
        ParamRecord("lr", 0.02, None, 0, T0 + 1),  # logged twice: two entities
    ]
    r0.artifacts = [
        ArtifactRecord("mnist", schema.REC_DATASET, "input", None, 0, T0, path="/data/mnist", sha256="a" * 64, size=10),
        ArtifactRecord("config.yaml", schema.REC_ARTIFACT, "input", "training", 0, T0, path="/x/config.yaml",
                       sha256="b" * 64, size=20),
        ArtifactRecord("model", schema.REC_MODEL, "output", "training", 0, T0 + 4, path="/x/model.pt",
                       copy="artifacts/model.pt", sha256="c" * 64, size=30, step=99, attrs={"framework": "torch"}),
    ]  # fmt: skip
    r1 = rank(1, status=schema.STATUS_CANCELLED, reason="SIGTERM")
    r0b = rank(0, attempt=1)
    r1b = rank(1, attempt=1, status=schema.STATUS_PARTIAL, reason="no clean close (killed?)")
    r2 = RankSummary(global_rank=2, attempt=1, status=schema.STATUS_MISSING, reason="no rank file")
    job = JobInfo(
        job_id="4242",
        name="mnist ddp",
        user="alice",
        account="proj",
        partition="gpu",
        nodes=["node000", "node001"],
        nnodes=2,
        ntasks=3,
        cpus_per_task=8,
        gpus="4",
        time_limit="01:00:00",
        state="COMPLETED",
        exit_code="0:0",
        restart_count=1,
        script="#!/bin/bash\nsrun python train.py\n",
        sources=["env", "scontrol", "sacct"],
    )
    return RunSummary(
        run_id="4242",
        experiment="mnist",
        run_dir="/scratch/alice/prov4ml_runs/mnist/4242",
        job=job,
        ranks=[r0, r1, r2, r0b, r1b],
        world_size=3,
        software_version="0.1.0",
        user="alice",
        problems=["rank 2: missing"],
        totals={"gpu_energy_j": 50.0, "energy_kwh": 0.0125},
    )


@pytest.fixture(scope="module")
def doc():
    return build_document(full_summary(), members=True, level="rank")


def elements(d):
    return [r for r in d.get_records() if isinstance(r, ProvElement)]


def relations(d):
    return [r for r in d.get_records() if isinstance(r, ProvRelation)]


def by_type(d, prov_type):
    return [e for e in elements(d) if prov_type in e.get_attribute(PROV_TYPE)]


def one(records, **attrs):
    found = [r for r in records if all(r.get_attribute(v.PROV4ML[k]) == {val} for k, val in attrs.items())]
    assert len(found) == 1, (attrs, found)
    return found[0]


# ---- structure --------------------------------------------------------------------------------------------
def test_round_trip_equal(doc):
    text = serialize(doc, "json")
    back = load_export(text, "json")
    assert back == doc
    assert len(back.get_records()) == len(doc.get_records())
    # prov alone reads the same records, each node's prov:type as the plain "prefix:Name" string it is in the file
    plain = ProvDocument.deserialize(content=text)
    assert len(plain.get_records()) == len(doc.get_records())
    for element in elements(plain):
        (value,) = element.get_attribute(PROV_TYPE)
        assert isinstance(value, str) and ":" in value, (element.identifier, value)


def test_flat_labels_and_relation_types(doc):
    assert not doc.has_bundles()
    assert not list(doc.bundles)
    for element in elements(doc):
        assert element.get_attribute(PROV_LABEL), element.identifier
    data = json.loads(serialize(doc, "json"))
    assert set(data) - {"prefix"} <= JSON_NODE_KEYS | ALLOWED
    assert "bundle" not in data
    for kind in JSON_NODE_KEYS:
        for ident, attrs in data[kind].items():
            assert "prov:label" in attrs, ident


def test_namespaces_are_http_uris(doc):
    namespaces = {ns.prefix: ns.uri for ns in doc.get_registered_namespaces()}
    assert namespaces["prov4ml"] == v.VOCAB_URI
    assert namespaces["run"] == "https://w3id.org/prov4ml-hpc/run/4242/"
    prefixes = json.loads(serialize(doc, "json"))["prefix"]
    assert prefixes and all(uri.startswith(("http://", "https://")) for uri in prefixes.values())
    assert v.run_namespace("a b/c").uri == "https://w3id.org/prov4ml-hpc/run/a%20b%2Fc/"


def test_times_are_aware_datetimes(doc):
    activities = [e for e in elements(doc) if isinstance(e, ProvActivity)]
    timed = [a for a in activities if a.get_startTime() is not None]
    assert len(timed) >= 5
    for a in timed:
        assert a.get_startTime().utcoffset() == dt.timedelta(0)
        assert a.get_endTime().utcoffset() == dt.timedelta(0)
    for record in doc.get_records():
        for _, value in record.attributes:
            if isinstance(value, dt.datetime):
                assert value.tzinfo is not None
    text = serialize(doc, "json")
    assert '"type": "xsd:dateTime"' in text
    assert "+00:00" in text


def test_numbers_are_typed_numbers_in_json(doc):
    data = json.loads(serialize(doc, "json"))
    s = data["entity"]["run:r00000.a0.metric.training.metric0"]
    assert s["prov4ml:count"] == {"$": "100", "type": "xsd:int"}
    assert s["prov4ml:min"] == {"$": "0.125", "type": "xsd:double"}
    assert s["prov4ml:name"] == "metric0"  # strings plain
    lr = data["entity"]["run:r00000.a0.param.--.lr"]
    assert lr["prov:value"] == {"$": "0.01", "type": "xsd:double"}
    assert data["entity"]["run:r00000.a0.param.--.shuffle"]["prov:value"] is True
    assert data["entity"]["run:r00000.a0.param.--.big"]["prov:value"]["type"] == "xsd:long"
    rank0 = data["activity"]["run:r00000.a0"]
    assert rank0["prov4ml:global_rank"] == {"$": "0", "type": "xsd:int"}
    # and they load back as Python numbers
    back = ProvDocument.deserialize(content=json.dumps(data))
    entity = back.get_record("run:r00000.a0.metric.training.metric0")[0]
    assert entity.get_attribute(v.PROV4ML["count"]) == {100}
    assert isinstance(next(iter(entity.get_attribute(v.PROV4ML["max"]))), float)


def test_rank_activities_and_requeue(doc):
    ranks = by_type(doc, v.RANK_PROCESS)
    assert len(ranks) == 5
    r1b = one(ranks, global_rank=1, attempt=1)
    assert r1b.get_attribute(v.PROV4ML["status"]) == {"partial"}
    assert one(ranks, global_rank=2).get_attribute(v.PROV4ML["status"]) == {"missing"}
    rels = relations(doc)
    informed = {
        (str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
        for r in rels
        if _verb(r) == "Communication"
    }
    assert ("run:r00000.a1", "run:r00000.a0") in informed  # requeue chain
    assert ("run:r00001.a1", "run:r00001.a0") in informed
    assert ("run:r00000.a0", "run:job") in informed
    assert ("run:r00000.a0.ctx.training", "run:r00000.a0") in informed
    started = {str(r.formal_attributes[0][1]) for r in rels if _verb(r) == "Start"}
    triggers = {str(dict(r.formal_attributes)[PROV["trigger"]]) for r in rels if _verb(r) == "Start"}
    assert triggers == {"run:jobscript"}  # SLURM gave the script: it started the ranks
    assert {
        "run:r00000.a0",
        "run:r00001.a0",
        "run:r00000.a1",
        "run:r00001.a1",
    } == started  # not the missing one
    assoc = {
        (str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
        for r in rels
        if _verb(r) == "Association"
    }
    assert {
        ("run:r00000.a0", "run:software"),
        ("run:r00000.a0", "run:user.alice"),
        ("run:job", "run:user.alice"),
    } <= assoc


def _verb(rel):
    return rel.get_type().localpart


def test_agents_job_and_totals(doc):
    user = doc.get_record("run:user.alice")[0]
    assert user.get_attribute(PROV_TYPE) == {PROV["Person"]}
    assert user.get_attribute(v.PROV4ML["roles"]) == {"user,submitter"}
    software = doc.get_record("run:software")[0]
    assert software.get_attribute(v.PROV4ML["version"]) == {"0.1.0"}
    job = doc.get_record("run:job")[0]
    assert job.get_attribute(v.PROV4ML["job_id"]) == {"4242"}
    assert job.get_attribute(v.PROV4ML["nodes"]) == {"node000,node001"}
    assert job.get_attribute(v.PROV4ML["energy_kwh"]) == {0.0125}
    assert job.get_attribute(v.PROV4ML["time_limit"]) == {"01:00:00"}
    assert job.get_startTime() == dt.datetime.fromtimestamp(T0, dt.UTC)
    script = by_type(doc, v.JOB_SCRIPT)[0]
    assert len(next(iter(script.get_attribute(v.PROV4ML["sha256"])))) == 64
    rank0 = doc.get_record("run:r00000.a0")[0]
    assert rank0.get_attribute(v.PROV4ML["cpu_energy_kwh"]) == {0.001}
    assert rank0.get_attribute(v.PROV4ML["gpu_energy_j"]) == {'{"GPU-1":12.5}'}


def test_series_entities(doc):
    metrics = by_type(doc, v.METRIC_SERIES)
    # rank 0 attempt 0: 2 + odd names + val/idation + diverged; the 3 other ranks with files: 2 each
    assert len(metrics) == 2 + len(ODD_NAMES) + 2 + 2 * 3
    assert len(by_type(doc, v.SYSTEM_SERIES)) == 1
    ids = [str(m.identifier) for m in metrics]
    assert len(set(ids)) == len(ids)
    for name in ODD_NAMES:
        m = one(metrics, name=name, global_rank=0, attempt=0)
        local = m.identifier.localpart
        assert all(ch.isalnum() and ch.isascii() or ch in "._-" for ch in local), local
        assert len(local) < 100
        assert m.get_attribute(v.PROV4ML["dataset"])
        assert m.get_attribute(v.PROV4ML["file"]) == {"run.h5"}
    diverged = one(metrics, name="diverged")
    assert not diverged.get_attribute(v.PROV4ML["last"])
    assert diverged.get_attribute(v.PROV4ML["last_nonfinite"]) == {"nan"}
    members = [r for r in relations(doc) if _verb(r) == "Membership"]
    assert len(members) == len(metrics) + 1
    assert not [r for r in relations(build_document(full_summary())) if _verb(r) == "Membership"]


def test_escape_component_is_injective():
    names = [*ODD_NAMES, None, "-", "--", "-2D", "a-2Fb", "a/b", "x" * 999, "x" * 1001, "%-", "."]
    escaped = [v.escape_component(n) for n in names]
    assert len(set(escaped)) == len(escaped)
    assert all("." not in e for e in escaped)


def test_params_typed_and_used(doc):
    params = by_type(doc, v.PARAMETER)
    assert len(params) == 8
    values = {
        next(iter(p.get_attribute(v.PROV4ML["name"]))): p.get_attribute(PROV_VALUE)
        for p in params
        if next(iter(p.get_attribute(v.PROV4ML["time"]))) == dt.datetime.fromtimestamp(T0, dt.UTC)
    }
    assert values["lr"] == {0.01}
    assert values["epochs"] == {10} and isinstance(next(iter(values["epochs"])), int)
    assert next(iter(values["shuffle"])) is True
    assert values["optimizer"] == {"adam"}
    assert values["eps"] == set()
    assert one(params, name="eps").get_attribute(v.PROV4ML["value_nonfinite"]) == {"inf"}
    used = {str(r.formal_attributes[1][1]) for r in relations(doc) if _verb(r) == "Usage"}
    assert {str(p.identifier) for p in params} <= used


def test_artifacts_roles_and_derivation(doc):
    rels = relations(doc)
    model = by_type(doc, v.MODEL)[0]
    dataset = by_type(doc, v.DATASET)[0]
    config = by_type(doc, v.ARTIFACT)[0]
    assert model.get_attribute(v.PROV4ML["sha256"]) == {"c" * 64}
    assert model.get_attribute(v.PROV4ML["attr_framework"]) == {"torch"}
    gen = {
        (str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
        for r in rels
        if _verb(r) == "Generation"
    }
    assert (str(model.identifier), "run:r00000.a0.ctx.training") in gen
    used = {
        (str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1])) for r in rels if _verb(r) == "Usage"
    }
    assert ("run:r00000.a0", str(dataset.identifier)) in used
    assert ("run:r00000.a0.ctx.training", str(config.identifier)) in used
    derived = {
        (str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
        for r in rels
        if _verb(r) == "Derivation"
    }
    assert (str(model.identifier), str(dataset.identifier)) in derived
    attributed = {str(r.formal_attributes[0][1]) for r in rels if _verb(r) == "Attribution"}
    assert str(model.identifier) in attributed and "run:runfile" in attributed


def test_environment_and_nodes(doc):
    envs = by_type(doc, v.ENVIRONMENT)
    assert len(envs) == 4  # not for the missing rank
    env = doc.get_record("run:r00000.a0.env")[0]
    assert env.get_attribute(v.PROV4ML["argv"]) == {'["train.py","--lr","0.1"]'}
    nodes = by_type(doc, v.NODE)
    assert len(nodes) == 1  # ranks 0 and 1 share node000
    assert nodes[0].get_attribute(v.PROV4ML["memory_total_bytes"]) == {2**38}


# ---- determinism and size -------------------------------------------------------------------------------
def test_deterministic():
    a = serialize(build_document(full_summary(), level="rank"), "json")
    shuffled = full_summary()
    shuffled.ranks.reverse()
    for r in shuffled.ranks:
        r.series.reverse()
        r.params.reverse()
        r.artifacts.reverse()
    assert serialize(build_document(shuffled, level="rank"), "json") == a
    for level in ("node", "job"):
        shuffled.ranks.reverse()
        assert serialize(build_document(shuffled, level=level), "json") == serialize(
            build_document(full_summary(), level=level), "json"
        )
    assert serialize(build_document(full_summary()), "provn") == serialize(
        build_document(full_summary()), "provn"
    )


def test_size_does_not_grow_with_values():
    small = serialize(build_document(full_summary(count=10)), "json")
    big = serialize(build_document(full_summary(count=10**9)), "json")
    assert abs(len(big) - len(small)) < 0.01 * len(small)


def test_minimal_summary():
    s = RunSummary("plain run", "exp", "/tmp/r", JobInfo(), [RankSummary(0)], 1, "0.1.0")
    d = build_document(s)
    assert load_export(serialize(d, "json"), "json") == d
    assert by_type(d, v.JOB)[0].get_attribute(PROV_LABEL) == {"run plain run"}
    assert not by_type(d, v.JOB_SCRIPT)
    assert by_type(d, v.COMMAND)  # no script: the command line is the trigger
    assert all(e.get_attribute(PROV_LABEL) for e in elements(d))


@pytest.mark.slow
def test_1024_ranks_x_20_series_builds_fast():
    r = rank(0, n_series=20)
    ranks = []
    for g in range(1024):
        rg = dataclasses.replace(r, global_rank=g, node=f"node{g // 4:03d}")
        rg.series = [dataclasses.replace(x, global_rank=g) for x in r.series]
        ranks.append(rg)
    s = RunSummary("big", "exp", "/tmp/big", JobInfo(job_id="1"), ranks, 1024, "0.1.0", user="bob")
    t0 = time.perf_counter()
    d = build_document(s, level="rank")
    t1 = time.perf_counter()
    text = serialize(d, "json")
    t2 = time.perf_counter()
    print(
        f"\n1024 ranks x 20 series: build {t1 - t0:.2f} s, serialize {t2 - t1:.2f} s, "
        f"{len(d.get_records())} records, PROV-JSON {len(text) / 2**20:.1f} MiB"
    )
    assert len(by_type(d, v.METRIC_SERIES)) == 1024 * 20
    assert t2 - t0 < 120  # generous: the figure is printed, not asserted


# ---- exports --------------------------------------------------------------------------------------------
def test_json_is_prov_own_serialization_with_plain_types(doc):
    own = json.loads(doc.serialize(format="json"))
    assert own["activity"]["run:job"]["prov:type"] == {"$": "prov4ml:Job", "type": "xsd:QName"}
    assert serialize(doc, "json") == json.dumps(plain_types(own))  # (plain_types changes its argument)
    assert serialize(doc, "json", indent=1) == json.dumps(own, indent=1)
    assert json.loads(serialize(doc, "json"))["activity"]["run:job"]["prov:type"] == "prov4ml:Job"


def test_write_and_load(tmp_path, doc):
    path = write_prov_json(doc, tmp_path / schema.PROV_FILE)
    assert load_prov_json(path) == doc
    assert [p.name for p in tmp_path.iterdir()] == [schema.PROV_FILE]  # no temp file left
    umask = os.umask(0o22)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExportError, match="bad.json"):
        load_prov_json(tmp_path / "bad.json")


def test_provn_and_dot(doc):
    provn = serialize(doc, "provn")
    assert provn.startswith("document") and "prefix prov4ml <https://w3id.org/prov4ml-hpc/ns#>" in provn
    assert ProvDocument.deserialize(content=provn, format="provn") == doc
    dot = serialize(doc, "dot")
    assert dot.startswith('digraph "provenance"') and "wasStartedBy" in dot and "hadMember" in dot
    assert dot.count(" -> ") == sum(1 for r in relations(doc))
    assert '"loss/train (training) @ rank 0"' in dot


def test_jsonld(doc):
    text = serialize(doc, "jsonld")
    context = json.loads(text)["@context"]
    assert all(isinstance(item, dict) for item in context)  # embedded: nothing to fetch
    assert ProvDocument.deserialize(content=text, format="jsonld") == doc


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_svg(doc):
    svg = serialize(doc, "svg")
    assert "<svg" in svg and "rank 0" in svg


def test_svg_without_graphviz(doc, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ExportError, match=r"apt-get install graphviz"):
        serialize(doc, "svg")


@pytest.mark.parametrize(
    ("fmt", "module", "hint"), [("ttl", "rdflib", "prov4ml-hpc[rdf]"), ("xml", "lxml", "lxml")]
)
def test_optional_formats(doc, fmt, module, hint):
    if importlib.util.find_spec(module) is None:
        with pytest.raises(ExportError, match=hint.replace("[", r"\[").replace("]", r"\]")):
            serialize(doc, fmt)
    else:
        text = serialize(doc, fmt)
        assert "prov4ml-hpc/ns#" in text
        options = {"format": "rdf", "rdf_format": "turtle"} if fmt == "ttl" else {"format": "xml"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # rdflib 7 deprecations inside prov's reader
            assert ProvDocument.deserialize(content=text, **options) == doc
        assert load_export(text, fmt) == doc


def test_unknown_format(doc):
    with pytest.raises(ExportError, match="expected one of"):
        serialize(doc, "pdf")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_render_example_script(tmp_path):
    import runpy

    script = Path(__file__).resolve().parent.parent / "scripts" / "render_provenance_example.py"
    out = tmp_path / "example.svg"
    sys.argv, saved = [str(script), str(out), "--json", str(tmp_path / "example.json")], sys.argv
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
    assert "<svg" in out.read_text()
    assert load_prov_json(tmp_path / "example.json")


def test_deterministic_across_processes():
    """Same bytes whatever the hash seed: nothing depends on set or dict-of-hash order."""
    import subprocess

    code = (
        "import sys, hashlib; sys.path.insert(0, 'tests'); from test_provenance import full_summary;"
        "from prov4ml_hpc.provenance import build_document, serialize;"
        "print(hashlib.sha256(''.join(serialize(build_document(full_summary(), members=True, level=l))"
        " for l in ('rank', 'node', 'job')).encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parent.parent
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1
