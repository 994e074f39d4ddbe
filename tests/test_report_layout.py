"""The pure-Python drawing of the provenance graph (no graphviz): real DOT from real runs, parsed back exactly,
laid out without overlaps, every string escaped, valid SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("networkx")

from prov4ml_hpc.provenance.export import load_prov_json, to_dot  # noqa: E402
from prov4ml_hpc.view.report.graph import summary_dot  # noqa: E402
from prov4ml_hpc.view.report.layout import layout, parse_dot, to_svg  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def _quote(text: str) -> str:  # as provenance.export writes labels
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_parse_reads_back_labels_styles_and_edges():
    hostile = 'a "quoted" \\ back\\slash\nsecond line ]; x -> y'
    dot = "\n".join(
        [
            "digraph g {",
            "  rankdir=BT;",
            '  node [fontname="Helvetica", fontsize=10];',
            f'  n0 [label={_quote(hostile)}, tooltip="ex:n0", shape=box, style=filled, fillcolor="#9FB1FC", color="#0000FF"];',
            '  n1 [label="agent", shape=house, style=filled, fillcolor="#FED37F"];',
            '  n0 -> n1 [label="wasAssociatedWith"];',
            "  n0 -> n2;",
            "}",
        ]
    )
    nodes, edges = parse_dot(dot)
    assert set(nodes) == {"n0", "n1", "n2"}
    assert nodes["n0"].label == hostile and nodes["n0"].shape == "box" and nodes["n0"].fill == "#9FB1FC"
    assert nodes["n0"].tooltip == "ex:n0" and nodes["n1"].shape == "house"
    assert nodes["n2"].shape == "plaintext"  # referred to, not described
    assert [(e.tail, e.head, e.label) for e in edges] == [("n0", "n1", "wasAssociatedWith"), ("n0", "n2", "")]


def _boxes_overlap(a, b) -> bool:
    return abs(a.x - b.x) * 2 < a.w + b.w and abs(a.y - b.y) * 2 < a.h + b.h


def test_layout_ranks_edges_upward_splits_long_edges_and_never_overlaps():
    # a chain a->b->c->d plus a long edge a->d and a cycle c->e->c
    dot = "\n".join(
        f"  {t} -> {h};" for t, h in [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("c", "e"), ("e", "c")]
    )
    nodes, edges = parse_dot(dot)
    width, height = layout(nodes, edges)
    real = {k: n for k, n in nodes.items() if not n.virtual}
    assert set(real) == set("abcde")
    assert real["a"].y > real["b"].y > real["c"].y > real["d"].y  # rankdir=BT: heads above tails
    long = next(e for e in edges if (e.tail, e.head) == ("a", "d"))
    assert len(long.points) == 4  # through two virtual points, one per layer it crosses
    ys = [p[1] for p in long.points]
    assert ys == sorted(ys, reverse=True)
    for e in edges:
        assert e.points[0] == (real[e.tail].x, real[e.tail].y) and e.points[-1] == (
            real[e.head].x,
            real[e.head].y,
        )
    items = list(real.values())
    assert not [(p.key, q.key) for i, p in enumerate(items) for q in items[i + 1 :] if _boxes_overlap(p, q)]
    assert all(n.x - n.w / 2 >= 0 and n.x + n.w / 2 <= width and n.y + n.h / 2 <= height for n in items)


def test_svg_escapes_every_string_and_parses():
    evil = "</text><script>alert(1)</script>&amp;\"'"
    dot = f"  n0 [label={_quote(evil)}, tooltip={_quote(evil)}, shape=ellipse];\n  n0 -> n1 [label={_quote(evil)}];\n"
    svg = to_svg(dot)
    root = ET.fromstring(svg.split("\n", 1)[1])  # well-formed XML: nothing broke out of its element
    assert root.tag == f"{SVG}svg"
    assert not list(root.iter(f"{SVG}script")) and "<script>" not in svg
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count(evil) == 2  # the node's label and the edge's
    assert [t.text for t in root.iter(f"{SVG}title")].count(evil) == 1


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    import prov4ml_hpc as p4
    from prov4ml_hpc.merge import merge_run

    root = str(tmp_path_factory.mktemp("runs"))
    for r in range(3):
        env = {"PMI_RANK": str(r), "PMI_SIZE": "3", "PROV4ML_HPC_RUN_ID": "lay"}
        run = p4.start_run("exp", root, system_metrics=False, gather=False, environ=env)
        p4.log_metric("loss", 1.0, step=0)
        p4.log_param("lr", 0.1)
        p4.end_run()
    merge_run(run.run_dir, query_slurm=False)
    return run.run_dir


def test_real_provenance_graph_and_summary_drawn(merged):
    from prov4ml_hpc.view.inspect import summarize

    for dot in (
        to_dot(load_prov_json(f"{merged}/provenance.json")),
        summary_dot(summarize(merged)),
    ):
        nodes, edges = parse_dot(dot)
        assert len(nodes) >= 5 and edges
        root = ET.fromstring(to_svg(dot).split("\n", 1)[1])
        labels = {t.text for t in root.iter(f"{SVG}text")}
        assert {n.label.split("\n")[0] for n in nodes.values()} <= labels
        drawn = [p for p in root.iter(f"{SVG}path") if p.get("marker-end")]  # not the arrowhead's own path
        assert len(drawn) == len([e for e in edges if e.tail != e.head])
