"""The PROV graph against what its consumers accept, at every detail level.

Real tools where they install here: prov (round trips), rdflib (Turtle, TriG, JSON-LD offline), lxml with the W3C
PROV-XML schema that ships in prov's wheel, jsonschema with prov's PROV-JSON schema.  Where a consumer cannot run
here (yProv needs Neo4j, yProv Explorer is a browser app, HPCI-Lab's PROV-JSONValidator is a script in a repository,
not a package), a test encodes the behaviour read in its source, and says where: file, commit and line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import warnings
from pathlib import Path

import pytest
from prov.constants import PROV_TYPE
from prov.model import ProvDocument, ProvElement, ProvRelation
from test_provenance import full_summary, rank, series

import prov4ml_hpc as p4
from prov4ml_hpc import schema
from prov4ml_hpc.errors import ConfigError, ExportError
from prov4ml_hpc.merge.model import ArtifactRecord, JobInfo, ParamRecord, RunSummary
from prov4ml_hpc.provenance import build_document, serialize
from prov4ml_hpc.provenance import vocab as v
from prov4ml_hpc.provenance.export import graph_level, load_export, load_prov_json
from prov4ml_hpc.provenance.graph import choose_level, estimate_records

LEVELS = ("rank", "node", "job")
HOSTILE = [
    "nul\x00here",
    "bell\x07",
    "esc\x1b[31m",
    "back\\slash \\u0000",
    'quo"te',
    "bom\ufeff\ufffe",
    "tab\tnl\n",
]


def hostile_summary() -> RunSummary:
    s = full_summary()
    r0 = s.ranks[0]
    r0.series += [series(name, 0) for name in HOSTILE]
    r0.params += [ParamRecord(name, name, None, 0, 1.7e9) for name in HOSTILE]
    r0.artifacts.append(
        ArtifactRecord("ckpt\x00", schema.REC_MODEL, "output", None, 0, 1.7e9, path="/x/\x01")
    )
    return s


@pytest.fixture(scope="module", params=LEVELS)
def level_doc(request):
    return request.param, build_document(full_summary(), level=request.param)


def _json(doc) -> dict:
    return json.loads(serialize(doc, "json"))


def _nodes(data: dict) -> dict[str, tuple[str, dict]]:
    return {
        i: (kind, rec) for kind in ("entity", "activity", "agent") for i, rec in data.get(kind, {}).items()
    }


# ---- yProv (HPCI-Lab/yProv at 15303d1) ---------------------------------------------------------------------
def test_yprov_converter_keeps_every_relation_and_the_one_type(level_doc):
    """yProv's PUT /api/v0/documents/<id> parses with prov's ProvDocument.deserialize (routes/documents.py:244),
    then prov_to_graph keeps a relation only when its first two formal attributes are both set
    (routes/documents.py:83-87: wasStartedBy's second is prov:trigger), and stores one Neo4j property per
    attribute name (routes/utils/prov_to_neo.py:12-14: a second prov:type value replaces the first)."""
    _, doc = level_doc
    back = ProvDocument.deserialize(content=serialize(doc, "json"))
    relations = [r for r in back.get_records() if isinstance(r, ProvRelation)]
    assert relations
    for rel in relations:
        (_, first), (_, second) = rel.formal_attributes[:2]
        assert first is not None and second is not None, rel
    for element in back.get_records(ProvElement):
        assert len(element.get_attribute(PROV_TYPE)) == 1, element.identifier


# ---- yProv Explorer v2 (HPCI-Lab/yprov-explorer-v2) and v1 (HPCI-Lab/yprov-explorer at a844653) -------------
# parseProvenance.js (v2, commit 494f7a7): the links it draws, as (relation, source key, target key)
EXPLORER_LINKS = {
    "wasDerivedFrom": ("prov:generatedEntity", "prov:usedEntity"),
    "wasGeneratedBy": ("prov:entity", "prov:activity"),
    "used": ("prov:activity", "prov:entity"),
    "wasInformedBy": ("prov:informed", "prov:informant"),
    "hadMember": ("prov:collection", "prov:entity"),
    "wasStartedBy": ("prov:activity", "prov:trigger"),
    "wasAssociatedWith": ("prov:activity", "prov:agent"),
    "wasAttributedTo": ("prov:entity", "prov:agent"),
}


def test_explorer_draws_every_relation(level_doc):
    """Explorer v2's parseProvenance.js (commit 494f7a7) and v1's src/main/Main.js:164-213 make a link from
    rel[source key] to rel[target key] and drop it when either is not a node id (`.filter(link => link.source &&
    link.target)`); wasStartedBy is read from rel["prov:trigger"] (Main.js:201)."""
    _, doc = level_doc
    data = _json(doc)
    nodes = _nodes(data)
    drawn = 0
    for name, (src, dst) in EXPLORER_LINKS.items():
        for rel in data.get(name, {}).values():
            assert rel.get(src) in nodes and rel.get(dst) in nodes, (name, rel)
            drawn += 1
    assert drawn == sum(
        len(data.get(name, {})) for name in data if name not in ("prefix",) and name in EXPLORER_LINKS
    )
    assert set(data) - {"prefix", "entity", "activity", "agent"} <= set(EXPLORER_LINKS)
    assert data["wasStartedBy"]


def test_explorer_v2_labels_are_short_distinct_text_and_type_is_text(level_doc):
    """Explorer v2: a node's text is raw["prov:label"]?.trim() (parseProvenance.js, commit 494f7a7), drawn cut to
    slice(0, 10) + "..." + slice(-3) when longer than 18 (components/graph/Graph.js, commit 190e164, the nodeLabel
    .text() call); the side panel renders d.attributes["prov:type"] as a React child (Graph.js node click,
    `typeInfo`; SideInfo.js `{item.value}`): a string renders, an object {"$", "type"} or a list does not."""
    _, doc = level_doc
    shown = []
    for ident, (_, rec) in _nodes(_json(doc)).items():
        label = rec["prov:label"]
        assert isinstance(label, str) and label == label.strip() and label, ident
        assert v.js_length(label) <= 18, label
        shown.append(label if v.js_length(label) <= 18 else label[:10] + "..." + label[-3:])
        assert isinstance(rec["prov:type"], str), (ident, rec["prov:type"])
    assert len(set(shown)) == len(shown)  # every node tells itself apart on screen


def test_long_labels_stay_in_full_label_and_names_stay_whole():
    data = _json(build_document(full_summary(), level="rank"))
    metric = next(rec for rec in data["entity"].values() if rec.get("prov4ml:name") == "x" * 1000)
    assert metric["prov4ml:full_label"] == "x" * 1000 + " (training) @ rank 0"
    assert v.js_length(metric["prov:label"]) <= 18 and metric["prov:label"].endswith("\u2026@r0")


def test_fit_label_counts_utf16_units():
    assert v.fit_label("ab", "@r1") == "ab@r1"
    cut = v.fit_label("\U0001f600" * 20, "@r1")  # each emoji is 2 UTF-16 units in JavaScript
    assert v.js_length(cut) <= 18 and cut.endswith("\u2026@r1")
    assert v.fit_label("a\x00b") == "a\ufffdb"


# ---- HPCI-Lab/PROV-JSONValidator (provjson_validator.py at 076c809) -----------------------------------------
# its RELATIONS table: relation -> (subject key, kind), {required key: kind}, {optional key: kind}
HPCI_RELATIONS = {
    "used": (("prov:activity", "activity"), {"prov:entity": "entity"}, {"prov:time": "datetime"}),
    "wasGeneratedBy": (("prov:entity", "entity"), {"prov:activity": "activity"}, {"prov:time": "datetime"}),
    "wasDerivedFrom": (("prov:generatedEntity", "entity"), {"prov:usedEntity": "entity"}, {}),
    "wasAttributedTo": (("prov:entity", "entity"), {"prov:agent": "agent"}, {}),
    "wasAssociatedWith": (("prov:activity", "activity"), {}, {"prov:agent": "agent", "prov:plan": "entity"}),
    "wasInformedBy": (("prov:informed", "activity"), {"prov:informant": "activity"}, {}),
    "wasStartedBy": (
        ("prov:activity", "activity"),
        {"prov:trigger": "entity"},
        {"prov:starter": "activity", "prov:time": "datetime"},
    ),
}
HPCI_DATETIMES = {"prov:startTime", "prov:endTime", "prov:time"}


def hpci_errors(data: dict) -> list[str]:
    """The checks of provjson_validator.py's Validator that our documents meet: check_attr_value (prov:label a
    string, prov:type a QName string or {"$": ...}, datetimes that datetime.fromisoformat reads) and
    validate_relation_record (required keys present, every reference a node of the right kind)."""
    errors = []
    kinds = {i: kind for i, (kind, _) in _nodes(data).items()}
    for ident, (_, rec) in _nodes(data).items():
        if not isinstance(rec.get("prov:label"), str):
            errors.append(f"{ident}: prov:label must be a string")
        t = rec.get("prov:type")
        if t is not None and not (isinstance(t, str) or (isinstance(t, dict) and "$" in t)):
            errors.append(f"{ident}: bad prov:type {t!r}")
        for key in HPCI_DATETIMES & set(rec):
            dt.datetime.fromisoformat(rec[key].replace("Z", "+00:00"))
    for name in set(data) - {"prefix", "entity", "activity", "agent"}:
        (subject, subject_kind), required, optional = HPCI_RELATIONS[name]
        for rid, rec in data[name].items():
            if kinds.get(rec.get(subject)) != subject_kind:
                errors.append(f"{name} {rid}: {subject} must be a {subject_kind}")
            for key, kind in {**required, **optional}.items():
                if key not in rec:
                    if key in required:
                        errors.append(f"missing required attribute '{key}' for relation '{name}'")
                    continue
                if kind == "datetime":
                    dt.datetime.fromisoformat(rec[key].replace("Z", "+00:00"))
                elif kinds.get(rec[key]) != kind:
                    errors.append(f"{name} {rid}: {key} {rec[key]!r} is not a {kind}")
    return errors


def test_hpci_validator_rules(level_doc):
    _, doc = level_doc
    assert hpci_errors(_json(doc)) == []


def test_hpci_rules_catch_a_started_by_without_trigger():
    data = _json(build_document(full_summary(), level="rank"))
    rel = next(iter(data["wasStartedBy"].values()))
    del rel["prov:trigger"]
    assert "missing required attribute 'prov:trigger' for relation 'wasStartedBy'" in hpci_errors(data)


# ---- W3C schemas and RDF --------------------------------------------------------------------------------------
def _prov_schema(name: str) -> Path:
    import prov

    path = Path(prov.__file__).parent / "tests" / "schemas" / name
    if not path.exists():
        pytest.skip(f"this prov wheel ships no {name}")
    return path


def test_prov_json_schema(level_doc):
    jsonschema = pytest.importorskip("jsonschema")
    _, doc = level_doc
    jsonschema.validate(_json(doc), json.loads(_prov_schema("prov-json.schema.json").read_text()))


@pytest.mark.parametrize("make", [full_summary, hostile_summary], ids=["plain", "hostile names"])
def test_prov_xml_validates_against_the_w3c_schema(make):
    etree = pytest.importorskip("lxml.etree")
    xsd = etree.XMLSchema(etree.parse(str(_prov_schema("prov.xsd"))))
    for level in LEVELS:
        doc = build_document(make(), level=level)
        xml = etree.fromstring(serialize(doc, "xml").encode("utf-8"))
        assert xsd.validate(xml), xsd.error_log


@pytest.mark.parametrize("fmt", ["ttl", "trig"])
def test_rdf_says_one_type_with_rdf_type(fmt):
    rdflib = pytest.importorskip("rdflib")
    doc = build_document(full_summary(), level="rank")
    with warnings.catch_warnings():  # rdflib 7's Dataset deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = rdflib.Dataset()
        dataset.parse(data=serialize(doc, fmt), format=fmt)
        graph = rdflib.Graph()
        for triple in dataset.triples((None, None, None)):
            graph.add(triple)
    run = rdflib.Namespace("https://w3id.org/prov4ml-hpc/run/4242/")
    ours = rdflib.Namespace(v.VOCAB_URI)
    prov = rdflib.Namespace("http://www.w3.org/ns/prov#")
    types = set(graph.objects(run["job"], rdflib.RDF.type))
    assert types == {ours["Job"], prov["Activity"]}
    series_types = set(graph.objects(run["r00000.a0.metric.training.metric0"], rdflib.RDF.type))
    assert series_types == {ours["MetricSeries"], prov["Entity"]}
    assert set(graph.objects(run["user.alice"], rdflib.RDF.type)) == {prov["Person"], prov["Agent"]}
    assert all(isinstance(o, rdflib.URIRef) for o in graph.objects(None, rdflib.RDF.type))
    (start,) = graph.objects(run["r00000.a0"], prov["qualifiedStart"])
    assert set(graph.objects(start, prov["entity"])) == {run["jobscript"]}  # PROV-O: the trigger
    assert set(graph.objects(start, prov["hadActivity"])) == {run["job"]}  # and the starter


def test_jsonld_parses_offline(monkeypatch):
    """prov's PROV-JSONLD points @context at openprovenance.org; ours embeds prov's copy of it, so a compute node
    without internet parses it: here every remote context fetch raises."""
    rdflib = pytest.importorskip("rdflib")
    from rdflib.plugins.shared.jsonld import context, util

    def no_network(source, *args, **kwargs):
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            raise AssertionError(f"fetched {source}")
        return original(source, *args, **kwargs)

    original = util.source_to_json
    monkeypatch.setattr(util, "source_to_json", no_network)
    monkeypatch.setattr(context, "source_to_json", no_network)
    text = serialize(build_document(full_summary(), level="job"), "jsonld")
    with warnings.catch_warnings():  # rdflib 7's JSON-LD parser deprecations, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = rdflib.Graph().parse(data=text, format="json-ld")
    assert (None, rdflib.RDF.type, rdflib.URIRef(v.VOCAB_URI + "Job")) in graph


# ---- every format carries hostile strings -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "provn", "xml", "jsonld", "ttl", "trig"])
def test_hostile_names_round_trip_in_every_format(fmt):
    for level in LEVELS:
        doc = build_document(hostile_summary(), level=level)
        text = serialize(doc, fmt)
        text.encode("utf-8")  # writable as UTF-8
        assert load_export(text, fmt) == doc, (fmt, level)
    if fmt == "xml":
        assert ">nul\\u0000here<" in text and "prov4ml:escaped_attributes" in text
        assert "\x00" not in text


def test_labels_never_carry_control_characters():
    for level in LEVELS:
        for _, (_, rec) in _nodes(_json(build_document(hostile_summary(), level=level))).items():
            assert v.shown_text(rec["prov:label"]) == rec["prov:label"]


def test_dot_survives_hostile_names():
    dot = serialize(build_document(hostile_summary(), level="rank"), "dot")
    assert "\x00" not in dot and "\x1b" not in dot


# ---- parameters ---------------------------------------------------------------------------------------------
def test_nan_param_is_value_nonfinite_in_a_real_run(tmp_path):
    from prov4ml_hpc.merge import merge_run

    run = p4.start_run("e", str(tmp_path), run_id="nan", system_metrics=False, gather=False)
    p4.log_params({"bad": float("nan"), "big": math.inf, "neg": -math.inf, "ok": 0.5})
    p4.log_metric("loss", 1.0, step=0)
    p4.end_run()
    merge_run(run.run_dir, query_slurm=False)
    data = json.loads(Path(run.run_dir, schema.PROV_FILE).read_text())
    params = {
        rec["prov4ml:name"]: rec for rec in data["entity"].values() if rec["prov:type"] == "prov4ml:Parameter"
    }
    for name, word in (("bad", "nan"), ("big", "inf"), ("neg", "-inf")):
        assert params[name]["prov4ml:value_nonfinite"] == word and "prov:value" not in params[name]
    assert params["ok"]["prov:value"] == {"$": "0.5", "type": "xsd:double"}


# ---- detail levels ----------------------------------------------------------------------------------------
def big_summary(n_ranks: int, n_series: int = 20, per_node: int = 4) -> RunSummary:
    r = rank(0, n_series=n_series)
    r.params = [ParamRecord("lr", 0.01, None, 0, 1.7e9), ParamRecord("seed", 0, None, 0, 1.7e9)]
    ranks = []
    for g in range(n_ranks):
        rg = dataclasses.replace(r, global_rank=g, node=f"node{g // per_node:04d}", local_rank=g % per_node)
        rg.series = [dataclasses.replace(x, global_rank=g, last=0.25 + g) for x in r.series]
        rg.params = [dataclasses.replace(p, global_rank=g) for p in r.params]
        rg.params[1] = dataclasses.replace(rg.params[1], value=g)  # a per-rank seed: every rank differs
        ranks.append(rg)
    return RunSummary("big", "exp", "/tmp/big", JobInfo(job_id="1"), ranks, n_ranks, "0.1.0", user="bob")


def test_auto_keeps_small_jobs_at_rank_level_and_big_jobs_small():
    assert choose_level(full_summary()) == "rank"
    assert choose_level(big_summary(64)) == "rank"
    big = big_summary(1024)
    assert choose_level(big) == "job"
    doc = build_document(big)
    assert graph_level(doc) == "job" and len(doc.get_records()) < 5000
    assert (
        len([e for e in doc.get_records(ProvElement) if v.METRIC_SERIES in e.get_attribute(PROV_TYPE)]) == 20
    )


@pytest.mark.parametrize("level", LEVELS)
def test_estimate_is_an_upper_bound(level):
    for s in (full_summary(), big_summary(32)):
        assert estimate_records(s, level) >= len(build_document(s, level=level).get_records())


def test_job_level_series_parameters_and_nodes():
    s = big_summary(8, n_series=2)
    data = _json(build_document(s, level="job"))
    ents = data["entity"]
    metric = ents["run:a0.metric.training.metric0"]
    assert metric["prov4ml:ranks"] == "0-7" and metric["prov4ml:nranks"]["$"] == "8"
    assert metric["prov4ml:count"]["$"] == str(8 * 100)
    assert float(metric["prov4ml:last_min"]["$"]) == 0.25 and float(metric["prov4ml:last_max"]["$"]) == 7.25
    assert metric["prov4ml:series_group"] == "/ranks/00000/series/training"
    lr = ents["run:a0.param.--.lr"]
    assert lr["prov:value"] == {"$": "0.01", "type": "xsd:double"} and lr["prov4ml:nranks"]["$"] == "8"
    seed = ents["run:a0.param.--.seed"]
    assert "prov:value" not in seed and seed["prov4ml:distinct_values"]["$"] == "8"
    assert json.loads(seed["prov4ml:values"]) == list(range(8))
    assert {i for i, rec in ents.items() if rec["prov:type"] == "prov4ml:Node"} == {
        "run:node.node0000",
        "run:node.node0001",
    }
    assert not [a for a in data["activity"].values() if a["prov:type"] == "prov4ml:RankProcess"]
    job = data["activity"]["run:job"]
    assert json.loads(job["prov4ml:status_counts"]) == {"completed": 8}
    started = list(data["wasStartedBy"].values())
    assert [(r["prov:activity"], r["prov:trigger"]) for r in started] == [("run:job", "run:command")]


def test_node_level_groups_ranks_by_node_and_attempt():
    s = full_summary()  # ranks 0-2 on node000; attempts 0 and 1
    data = _json(build_document(s, level="node"))
    groups = {i: a for i, a in data["activity"].items() if a["prov:type"] == "prov4ml:NodeProcess"}
    # rank 2 (missing, attempt 1) left no file, so no node: it is a group of its own, never started
    assert set(groups) == {"run:node.node000.a0", "run:node.node000.a1", "run:node.--.a1"}
    assert json.loads(groups["run:node.node000.a1"]["prov4ml:status_counts"]) == {
        "completed": 1,
        "partial": 1,
    }
    assert json.loads(groups["run:node.--.a1"]["prov4ml:status_counts"]) == {"missing": 1}
    informed = {(r["prov:informed"], r["prov:informant"]) for r in data["wasInformedBy"].values()}
    assert ("run:node.node000.a1", "run:node.node000.a0") in informed  # the requeue chain
    starts = {r["prov:activity"]: r for r in data["wasStartedBy"].values()}
    assert set(starts) == set(groups) - {"run:node.--.a1"}
    assert all(r["prov:trigger"] == "run:jobscript" for r in starts.values())


def test_unknown_level_is_refused():
    with pytest.raises(ExportError, match="expected one of"):
        build_document(full_summary(), level="cluster")


# ---- the level through merge, settings and the CLI ---------------------------------------------------------
def test_merge_graph_option_setting_and_export(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from test_inspect import make_run

    from prov4ml_hpc.cli import main
    from prov4ml_hpc.merge import merge_run

    run_dir = make_run(str(tmp_path), "g1", ranks=2)
    prov_path = os.path.join(run_dir, schema.PROV_FILE)
    merge_run(run_dir, query_slurm=False)
    assert graph_level(load_prov_json(prov_path)) == "rank"  # auto: a small job keeps every rank
    merge_run(run_dir, query_slurm=False, graph="job")
    assert graph_level(load_prov_json(prov_path)) == "job"
    monkeypatch.setenv("PROV4ML_HPC_GRAPH", "node")
    merge_run(run_dir, query_slurm=False)
    assert graph_level(load_prov_json(prov_path)) == "node"
    monkeypatch.setenv("PROV4ML_HPC_GRAPH", "everything")
    with pytest.raises(ConfigError, match="PROV4ML_HPC_GRAPH"):
        merge_run(run_dir, query_slurm=False)
    monkeypatch.delenv("PROV4ML_HPC_GRAPH")
    runner = CliRunner()
    r = runner.invoke(main, ["merge", "--no-slurm", "--graph", "job", run_dir])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", run_dir, "--format", "ttl", "--graph", "rank"])
    assert r.exit_code == 1 and "merge --graph rank" in r.output
    r = runner.invoke(main, ["export", run_dir, "--format", "trig", "--graph", "job"])
    assert r.exit_code == 0, r.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert load_export(Path(r.output.strip()).read_text(), "trig") == load_prov_json(prov_path)


def test_start_run_checks_the_graph_level_at_once(tmp_path):
    with pytest.raises(ConfigError, match="graph"):
        p4.start_run("e", str(tmp_path), run_id="bad-graph", graph="all", system_metrics=False)
    assert not os.path.exists(os.path.join(tmp_path, "e", "bad-graph", "ranks"))
