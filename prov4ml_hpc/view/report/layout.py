"""A layered drawing of a small directed graph as SVG in pure Python (networkx), for when graphviz is absent.

It reads the DOT that prov4ml-hpc writes itself (``provenance.export.to_dot`` and the report's summary: one
``key [attr=value, ...];`` line per node, one ``a -> b [label=...];`` line per edge) and draws it the way
``dot`` with ``rankdir=BT`` does: edges point up, from the later thing to the earlier one.  The layout is the
classic layered (Sugiyama) scheme: cycles broken, nodes ranked by their longest path to a sink, long edges
split by virtual points, crossings reduced by barycentre sweeps, nodes placed at the mean of their
neighbours.  Every string that reaches the SVG is XML-escaped.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

FONT = "Helvetica, Arial, sans-serif"
NODE_FONT, EDGE_FONT = 12, 9  # px
CHAR_W = 0.58  # mean glyph width of Helvetica, in ems
LAYER_GAP, NODE_GAP, MARGIN = 56, 22, 12
SWEEPS = 8

_NODE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[(.*)\];\s*$")
_EDGE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*->\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[(.*)\])?;\s*$")
_ATTR = re.compile(r'([A-Za-z_]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s\]]+)')
_KEYWORDS = {"node", "edge", "graph"}


@dataclass
class Node:
    key: str
    label: str
    shape: str = "ellipse"
    fill: str = "#ffffff"
    stroke: str = "#404040"
    text: str = "#000000"
    tooltip: str = ""
    w: float = 0.0
    h: float = 0.0
    x: float = 0.0
    y: float = 0.0
    virtual: bool = False


@dataclass
class Edge:
    tail: str
    head: str
    label: str = ""
    points: list[tuple[float, float]] = field(default_factory=list)


def _unquote(value: str) -> str:
    if not (value.startswith('"') and value.endswith('"')):
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def _attrs(text: str | None) -> dict[str, str]:
    return {k: _unquote(v) for k, v in _ATTR.findall(text or "")}


def parse_dot(text: str) -> tuple[dict[str, Node], list[Edge]]:
    """Nodes and edges of a DOT text written by prov4ml-hpc (lines it does not know are ignored)."""
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    for line in text.split("\n"):  # labels never hold a raw newline; other line breaks stay in them
        m = _EDGE.match(line)
        if m:
            edges.append(Edge(m.group(1), m.group(2), _attrs(m.group(3)).get("label", "")))
            continue
        m = _NODE.match(line)
        if m and m.group(1) not in _KEYWORDS:
            a = _attrs(m.group(2))
            nodes[m.group(1)] = Node(
                m.group(1),
                a.get("label", m.group(1)),
                a.get("shape", "ellipse"),
                a.get("fillcolor", "#ffffff") if "filled" in a.get("style", "") else "#ffffff",
                a.get("color", "#404040"),
                a.get("fontcolor", "#000000"),
                a.get("tooltip", ""),
            )
    for e in edges:
        for key in (e.tail, e.head):
            nodes.setdefault(key, Node(key, key, "plaintext"))
    return nodes, edges


def _size(node: Node) -> None:
    lines = node.label.split("\n")
    tw = max(len(s) for s in lines) * NODE_FONT * CHAR_W
    th = len(lines) * NODE_FONT * 1.25
    if node.shape == "ellipse":
        node.w, node.h = tw * 1.25 + 16, th * 1.3 + 10
    elif node.shape == "house":
        node.w, node.h = tw + 28, th + 22
    else:
        node.w, node.h = tw + 18, th + 12


def _layers(nodes: dict[str, Node], edges: list[Edge]) -> dict[str, int]:
    """Layer of each node: 0 for sinks (drawn on top), else one more than its highest successor."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((e.tail, e.head) for e in edges if e.tail != e.head)
    while True:  # break cycles: drop one edge of each until none is left
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            break
        g.remove_edge(*cycle[-1][:2])
    layer: dict[str, int] = {}
    for key in reversed(list(nx.topological_sort(g))):
        layer[key] = 1 + max((layer[s] for s in g.successors(key)), default=-1)
    for e in edges:  # an edge whose direction was dropped: keep it at least one layer long
        if e.tail != e.head and layer[e.tail] == layer[e.head]:
            layer[e.tail] += 1
    return layer


def _crossings(order: list[list[str]], pos: dict[str, int], below: dict[str, list[str]]) -> int:
    """Edge crossings between adjacent layers (pairs sorted by upper end; inversions of the lower ends)."""
    total = 0
    for upper in order[:-1]:
        seen: list[int] = []
        for _, b in sorted((pos[u], pos[v]) for u in upper for v in below.get(u, [])):
            total += len(seen) - bisect.bisect_right(seen, b)
            bisect.insort(seen, b)
    return total


def layout(nodes: dict[str, Node], edges: list[Edge]) -> tuple[float, float]:
    """Set every node's centre and every edge's points; returns (width, height) of the drawing."""
    for node in nodes.values():
        _size(node)
    layer = _layers(nodes, edges)
    nlayers = 1 + max(layer.values(), default=0)
    up: dict[str, list[str]] = {k: [] for k in nodes}  # neighbours in the layer above (smaller index)
    down: dict[str, list[str]] = {k: [] for k in nodes}
    chains: list[tuple[Edge, list[str]]] = []
    for i, e in enumerate(edges):
        if e.tail == e.head:
            continue
        lo, hi = (e.tail, e.head) if layer[e.tail] > layer[e.head] else (e.head, e.tail)
        chain = [lo]
        for j, depth in enumerate(range(layer[lo] - 1, layer[hi], -1)):  # virtual points of a long edge
            key = f"_v{i}_{j}"
            nodes[key] = Node(key, "", "point", w=2, h=2, virtual=True)
            layer[key] = depth
            up[key], down[key] = [], []
            chain.append(key)
        chain.append(hi)
        for a, b in zip(chain, chain[1:], strict=False):  # a is below b
            up[a].append(b)
            down[b].append(a)
        chains.append((e, chain if chain[0] == e.tail else chain[::-1]))
    order: list[list[str]] = [[] for _ in range(nlayers)]
    for key in nodes:  # first order: as the DOT lists them (PROV documents list the job first)
        order[layer[key]].append(key)
    pos = {k: i for row in order for i, k in enumerate(row)}
    best, best_n = [row[:] for row in order], _crossings(order, pos, down)
    for sweep in range(SWEEPS):
        rows = range(1, nlayers) if sweep % 2 == 0 else range(nlayers - 2, -1, -1)
        ref = up if sweep % 2 == 0 else down
        for r in rows:
            order[r].sort(key=lambda k, ref=ref: _bary(k, ref, pos))
            pos.update({k: i for i, k in enumerate(order[r])})
        n = _crossings(order, pos, down)
        if n < best_n:
            best, best_n = [row[:] for row in order], n
    order = best
    _place(nodes, order, up, down)
    width = max((n.x + n.w / 2 for n in nodes.values()), default=0) + MARGIN
    height = max((n.y + n.h / 2 for n in nodes.values()), default=0) + MARGIN
    for e, chain in chains:
        e.points = [(nodes[k].x, nodes[k].y) for k in chain]
    return width, height


def _bary(key: str, ref: dict[str, list[str]], pos: dict[str, int]) -> float:
    near = ref[key]
    return sum(pos[k] for k in near) / len(near) if near else pos[key]


def _place(
    nodes: dict[str, Node], order: list[list[str]], up: dict[str, list[str]], down: dict[str, list[str]]
) -> None:
    y = MARGIN
    for row in order:  # rows of the layer's tallest node, the gap between layers
        h = max(nodes[k].h for k in row) if row else 0
        for k in row:
            nodes[k].y = y + h / 2
        y += h + LAYER_GAP
    for row in order:
        x = MARGIN
        for k in row:
            nodes[k].x = x + nodes[k].w / 2
            x += nodes[k].w + NODE_GAP
    for sweep in range(6):  # pull each node towards its neighbours, keeping the row's order and gaps
        rows = order if sweep % 2 == 0 else order[::-1]
        for row in rows:
            want = []
            for k in row:
                near = up[k] + down[k]
                want.append(sum(nodes[n].x for n in near) / len(near) if near else nodes[k].x)
            _fit(nodes, row, want)
    left = min((n.x - n.w / 2 for n in nodes.values()), default=MARGIN)
    for n in nodes.values():
        n.x += MARGIN - left


def _fit(nodes: dict[str, Node], row: list[str], want: list[float]) -> None:
    """Move the row's nodes to the wanted x as far as their order and the gaps between them allow."""
    xs = list(want)
    for i in range(1, len(row)):  # left to right: no overlap
        least = xs[i - 1] + (nodes[row[i - 1]].w + nodes[row[i]].w) / 2 + NODE_GAP
        xs[i] = max(xs[i], least)
    shift = sum(w - x for w, x in zip(want, xs, strict=True)) / len(row) if row else 0
    xs = [x + shift for x in xs]  # centre the row on where its nodes want to be
    for i in range(len(row) - 2, -1, -1):  # right to left: still no overlap after the shift
        most = xs[i + 1] - (nodes[row[i + 1]].w + nodes[row[i]].w) / 2 - NODE_GAP
        xs[i] = min(xs[i], most)
    for k, x in zip(row, xs, strict=True):
        nodes[k].x = x


def _shape(n: Node) -> str:
    fill, stroke = quoteattr(n.fill), quoteattr(n.stroke)
    if n.shape == "ellipse":
        return f'<ellipse cx="{n.x:.1f}" cy="{n.y:.1f}" rx="{n.w / 2:.1f}" ry="{n.h / 2:.1f}" fill={fill} stroke={stroke}/>'
    if n.shape == "house":
        x0, x1, top, bottom = n.x - n.w / 2, n.x + n.w / 2, n.y - n.h / 2, n.y + n.h / 2
        roof = top + n.h * 0.32
        pts = f"{x0:.1f},{bottom:.1f} {x1:.1f},{bottom:.1f} {x1:.1f},{roof:.1f} {n.x:.1f},{top:.1f} {x0:.1f},{roof:.1f}"
        return f"<polygon points={quoteattr(pts)} fill={fill} stroke={stroke}/>"
    if n.shape == "plaintext":
        return ""
    return (
        f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y - n.h / 2:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" '
        f"fill={fill} stroke={stroke}/>"
    )


def _border(n: Node, toward: tuple[float, float]) -> tuple[float, float]:
    """Where the segment from the node's centre toward a point leaves the node's shape."""
    dx, dy = toward[0] - n.x, toward[1] - n.y
    if n.virtual or (dx == 0 and dy == 0):
        return n.x, n.y
    if n.shape == "ellipse":
        t = 1 / math.sqrt((dx / (n.w / 2)) ** 2 + (dy / (n.h / 2)) ** 2)
    else:
        t = min(n.w / 2 / abs(dx) if dx else math.inf, n.h / 2 / abs(dy) if dy else math.inf)
    t = min(t, 1.0)
    return n.x + dx * t, n.y + dy * t


def _path(nodes: dict[str, Node], e: Edge) -> tuple[str, tuple[float, float]]:
    pts = list(e.points)
    pts[0] = _border(nodes[e.tail], pts[1])
    pts[-1] = _border(nodes[e.head], pts[-2])
    d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
    if len(pts) == 2:
        d += f" L{pts[1][0]:.1f},{pts[1][1]:.1f}"
    else:  # through the virtual points, rounded: quadratic curves between segment midpoints
        for (x0, y0), (x1, y1) in zip(pts[1:-1], pts[2:], strict=False):
            d += f" Q{x0:.1f},{y0:.1f} {(x0 + x1) / 2:.1f},{(y0 + y1) / 2:.1f}"
        d += f" L{pts[-1][0]:.1f},{pts[-1][1]:.1f}"
    return d, (pts[0], pts[1])


Box = tuple[float, float, float, float]


def _overlaps(box: Box, boxes: list[Box]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _label_at(text: str, seg: tuple[tuple[float, float], tuple[float, float]], taken: list[Box]) -> Box:
    """Where on its edge's first segment a label overlaps no node and no other label (the middle if nowhere)."""
    (ax, ay), (bx, by) = seg
    w, h = len(text) * EDGE_FONT * CHAR_W + 2, EDGE_FONT + 2
    first = None
    for t in (0.5, 0.35, 0.65, 0.22, 0.78):
        x, y = ax + (bx - ax) * t + 3, ay + (by - ay) * t
        box = (x, y - h * 0.75, x + w, y + h * 0.25)
        first = first or box
        if not _overlaps(box, taken):
            return box
    return first  # type: ignore[return-value]


def to_svg(text: str) -> str:
    """The SVG drawing of a DOT text written by prov4ml-hpc (see the module's docstring)."""
    nodes, edges = parse_dot(text)
    width, height = layout(nodes, edges)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family={quoteattr(FONT)}>',
        "<!-- drawn by prov4ml-hpc's layered layout (graphviz not installed) -->",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#404040"/></marker></defs>',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    labels = []
    taken: list[Box] = [
        (n.x - n.w / 2, n.y - n.h / 2, n.x + n.w / 2, n.y + n.h / 2) for n in nodes.values() if not n.virtual
    ]
    for e in edges:
        if e.tail == e.head or len(e.points) < 2:
            continue
        d, seg = _path(nodes, e)
        out.append(f'<path d="{d}" fill="none" stroke="#404040" marker-end="url(#arrow)"/>')
        if e.label:
            box = _label_at(e.label, seg, taken)
            taken.append(box)
            labels.append(
                f'<text x="{box[0]:.1f}" y="{box[1] + (box[3] - box[1]) * 0.75:.1f}" font-size="{EDGE_FONT}" '
                f'fill="#303030" paint-order="stroke" stroke="#ffffff" stroke-width="3">{escape(e.label)}</text>'
            )
    out += labels  # above the edges, so that a crossing edge never hides a label
    for n in nodes.values():
        if n.virtual:
            continue
        lines = n.label.split("\n")
        y0 = n.y - (len(lines) - 1) * NODE_FONT * 0.625 + NODE_FONT * 0.35
        texts = "".join(
            f'<text x="{n.x:.1f}" y="{y0 + i * NODE_FONT * 1.25:.1f}" font-size="{NODE_FONT}" '
            f'text-anchor="middle" fill={quoteattr(n.text)}>{escape(line)}</text>'
            for i, line in enumerate(lines)
        )
        title = f"<title>{escape(n.tooltip or n.label)}</title>"
        out.append(f"<g>{title}{_shape(n)}{texts}</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
