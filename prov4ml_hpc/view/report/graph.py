"""A picture of the provenance graph for the report: the whole graph when small, else a job-level summary.

The full drawing comes from provenance.json (``provenance.export.to_dot``), laid out by graphviz ``dot`` when
it is installed, else by the pure-Python layered layout of :mod:`.layout` (networkx, in the ``plot`` extra).
Past :data:`FULL_GRAPH_NODES` nodes (or before a merge) a summary is drawn instead: the user, the job, one box
per group of ranks with the same status and attempt, the inputs and outputs, in the same colours as the full
graph.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ... import schema

FULL_GRAPH_NODES = 30  # drawn whole up to this many nodes (larger drawings are unreadable)
LINKED_GRAPH_NODES = 2000  # up to this many, the whole graph is also written as a linked SVG file
LINKED_GRAPH_NODES_PY = 400  # the same for the pure-Python layout (slower; wide drawings past that)
_ENTITY = 'shape=ellipse, style=filled, fillcolor="#FFFC87", color="#808080"'
_ACTIVITY = 'shape=box, style=filled, fillcolor="#9FB1FC", color="#0000FF"'
_AGENT = 'shape=house, style=filled, fillcolor="#FED37F"'


def graph_nodes(prov_path: str) -> int | None:
    """Number of agents, activities and entities in a PROV-JSON file (None when it cannot be read)."""
    try:
        with open(prov_path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return sum(len(doc.get(k) or {}) for k in ("agent", "activity", "entity"))


def render_graph(run_dir: str, summary: dict[str, Any], out_svg: str) -> tuple[str | None, str]:
    """Write an SVG of the run's provenance to out_svg.  Returns (path or None, a sentence saying what it is)."""
    import shutil

    from ...errors import ExportError
    from ...provenance.export import dot_to_svg, load_prov_json, to_dot

    if shutil.which("dot") is not None:
        draw, by, linked_max = (lambda text: dot_to_svg(text, timeout=120)), "", LINKED_GRAPH_NODES
    else:
        try:
            from .layout import to_svg
        except ImportError as exc:  # networkx missing
            return (
                None,
                "no picture of the provenance graph: graphviz 'dot' is not installed and the pure-Python layout "
                f"needs networkx ({exc}); pip install 'prov4ml-hpc[plot]' (or apt-get install graphviz)",
            )
        draw, by, linked_max = to_svg, ", drawn without graphviz", LINKED_GRAPH_NODES_PY
    prov_path = os.path.join(run_dir, schema.PROV_FILE)
    n = graph_nodes(prov_path) if os.path.exists(prov_path) else None
    try:
        if n is not None and n <= FULL_GRAPH_NODES:
            svg = draw(to_dot(load_prov_json(prov_path)))
            what = f"the whole provenance graph ({n} nodes, from {schema.PROV_FILE}{by})"
        else:
            svg = draw(summary_dot(summary))
            what = "a job-level summary of the provenance graph" + (
                f" (the full graph has {n} nodes: see {schema.PROV_FILE}{by})"
                if n
                else f" (the run is not merged{by})"
            )
            if n is not None and n <= linked_max:
                full = os.path.join(os.path.dirname(out_svg), "provenance-full.svg")
                with open(full, "w", encoding="utf-8") as fh:
                    fh.write(draw(to_dot(load_prov_json(prov_path))))
                what += "; the whole graph: provenance-full.svg"
    except ExportError as exc:
        return None, f"no picture of the provenance graph: {exc}"
    with open(out_svg, "w", encoding="utf-8") as fh:
        fh.write(svg)
    return out_svg, what


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def summary_dot(summary: dict[str, Any]) -> str:
    """DOT text of the job-level summary graph (PROV direction: edges from the later thing to the earlier)."""
    j = summary["job"]
    lines = [
        "digraph summary {",
        "  rankdir=BT;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=8, color="#404040"];',
    ]
    label = (
        f"job {j['job_id']}" if j.get("job_id") else f"run {summary['run_id']}"
    ) + f"\n{j.get('ranks')} ranks"
    lines.append(f"  job [label={_q(label)}, {_ACTIVITY}];")
    if j.get("user"):
        lines.append(f"  user [label={_q(j['user'])}, {_AGENT}];")
        lines.append('  job -> user [label="wasAssociatedWith"];')
    lines.append(
        f"  sw [label={_q('prov4ml-hpc ' + str(summary['software'].get('prov4ml_hpc') or ''))}, {_AGENT}];"
    )
    for attempt, groups in summary["ranks"]["attempts"].items():
        for status, g in groups.items():
            key = f"r_{attempt}_{status}"
            text = f"{g['count']} rank(s) {status}" + (
                f"\nattempt {attempt}" if len(summary["ranks"]["attempts"]) > 1 else ""
            )
            lines.append(f"  {key} [label={_q(text)}, {_ACTIVITY}];")
            lines.append(f'  {key} -> job [label="wasInformedBy"];')
            if status != schema.STATUS_MISSING:
                lines.append(f'  {key} -> sw [label="wasAssociatedWith"];')
    for i, a in enumerate(summary["artifacts"][:20]):
        key = f"a{i}"
        lines.append(f"  {key} [label={_q(a['kind'] + ': ' + str(a['name']))}, {_ENTITY}];")
        if a["role"] == "input":
            lines.append(f'  job -> {key} [label="used"];')
        else:
            lines.append(f'  {key} -> job [label="wasGeneratedBy"];')
    metrics = [s for s in summary["series"] if s["kind"] == schema.KIND_METRIC]
    if metrics:
        text = f"{len(metrics)} metric series\n" + "\n".join(
            f"{s['context']}/{s['name']}" for s in metrics[:6]
        )
        lines.append(f"  m [label={_q(text)}, {_ENTITY}];")
        lines.append('  m -> job [label="wasGeneratedBy"];')
    for name in (schema.RUN_FILE, schema.PROV_FILE):
        if name in summary["files"]:
            key = "f_" + name.replace(".", "_")
            lines.append(f"  {key} [label={_q(name)}, {_ENTITY}];")
            lines.append(f'  {key} -> job [label="wasGeneratedBy"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
