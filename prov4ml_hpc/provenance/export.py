"""Serialize, write and load the PROV document of a run: PROV-JSON, PROV-N, PROV-XML, PROV-JSONLD, Turtle, DOT, SVG.

PROV-JSON, PROV-N, PROV-JSONLD and DOT need nothing beyond ``prov``; PROV-XML needs lxml, Turtle needs rdflib and
SVG the ``dot`` binary of graphviz: a missing one raises ExportError naming what to install.  DOT is written here
(prov's own DOT export needs pydot) and gives the same drawing conventions as prov: yellow ellipses for
entities, blue boxes for activities, orange houses for agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

from prov.constants import PROV_LABEL
from prov.identifier import QualifiedName
from prov.model import ProvActivity, ProvAgent, ProvDocument, ProvElement, ProvEntity, ProvRelation
from prov.serializers.provjson import encode_json_document

from prov4ml_hpc.errors import ExportError
from prov4ml_hpc.provenance.graph import gc_paused

FORMATS = ("json", "provn", "xml", "jsonld", "ttl", "dot", "svg")
SUFFIXES = {fmt: "." + fmt for fmt in FORMATS}

RDF_HINT = 'pip install "prov4ml-hpc[rdf]" (or: pip install rdflib)'
XML_HINT = 'pip install "prov[xml]" (or: pip install lxml)'
GRAPHVIZ_HINT = "install graphviz (apt-get install graphviz, or conda install graphviz)"


def serialize(
    doc: ProvDocument, fmt: str = "json", *, indent: int | None = None, timeout: float = 300.0
) -> str:
    """Return ``doc`` as text in one of FORMATS.

    Args:
        doc: The document, usually from :func:`prov4ml_hpc.provenance.build_document`.
        fmt: ``json`` (PROV-JSON), ``provn`` (PROV-N), ``xml`` (PROV-XML), ``jsonld`` (PROV-JSONLD), ``ttl``
            (PROV-O Turtle), ``dot`` (graphviz source) or ``svg`` (the DOT drawn by graphviz).
        indent: JSON indentation (json/jsonld only); None writes compact JSON.
        timeout: Seconds given to graphviz for ``svg`` (large graphs take long to lay out).

    Raises:
        ExportError: For an unknown format, or when the package or binary a format needs is missing (the
            message says what to install), or when graphviz fails.
    """
    if fmt == "json":
        # prov's own serializer streams through json.dump, whose pure-Python encoder makes the whole export
        # ~1.5x slower than json.dumps of the same container; the text is the same, byte for byte.
        with gc_paused():
            return json.dumps(encode_json_document(doc), indent=indent)
    if fmt == "jsonld":
        return doc.serialize(format="jsonld", indent=indent)
    if fmt == "provn":
        return doc.get_provn()
    if fmt == "xml":
        _require("lxml", f"PROV-XML export needs lxml, which is not installed: {XML_HINT}")
        return doc.serialize(format="xml")
    if fmt in ("ttl", "turtle"):
        _require("rdflib", f"Turtle (PROV-O) export needs rdflib, which is not installed: {RDF_HINT}")
        with warnings.catch_warnings():  # prov 3.2's RDF writer uses APIs that rdflib 7.x deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            return doc.serialize(format="rdf", rdf_format="turtle")
    if fmt == "dot":
        return to_dot(doc)
    if fmt == "svg":
        return dot_to_svg(to_dot(doc), timeout=timeout)
    raise ExportError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def _require(module: str, message: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise ExportError(message) from exc


def write_prov_json(doc: ProvDocument, path: str | os.PathLike[str], *, indent: int | None = None) -> Path:
    """Write ``doc`` as PROV-JSON to ``path`` atomically (temp file in the same folder, then os.replace)."""
    return write_export(doc, path, "json", indent=indent)


def write_export(doc: ProvDocument, path: str | os.PathLike[str], fmt: str, **options) -> Path:
    """Serialize ``doc`` to ``fmt`` and write it to ``path`` atomically; readers never see a half-written file.

    Raises:
        ExportError: As :func:`serialize`, or when the file cannot be written.
    """
    text = serialize(doc, fmt, **options)
    target = Path(path)
    # a name of our own (not mkstemp, which makes 0600 files): the result gets the umask's usual permissions
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportError(f"cannot write the {fmt} export to {target}: {exc}") from exc
    return target


def load_prov_json(path: str | os.PathLike[str]) -> ProvDocument:
    """Load a PROV-JSON file (such as a run's provenance.json) into a ProvDocument.

    Raises:
        ExportError: When the file cannot be read or is not PROV-JSON.
    """
    try:
        with open(path, "rb") as f, gc_paused():
            return ProvDocument.deserialize(f, format="json")
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and prov's parse errors are ValueErrors
        raise ExportError(f"cannot load PROV-JSON from {path}: {exc}") from exc


# ---- DOT and SVG ----------------------------------------------------------------------------------------
_STYLE = {
    ProvEntity: 'shape=ellipse, style=filled, fillcolor="#FFFC87", color="#808080"',
    ProvActivity: 'shape=box, style=filled, fillcolor="#9FB1FC", color="#0000FF"',
    ProvAgent: 'shape=house, style=filled, fillcolor="#FED37F"',
}
_OTHER = 'shape=plaintext, fontcolor="#808080"'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(element: ProvElement) -> str:
    labels = sorted(str(x) for x in element.get_attribute(PROV_LABEL))
    return labels[0] if labels else str(element.identifier)


def _ends(rel: ProvRelation) -> tuple[QualifiedName, QualifiedName] | None:
    """(from, to) of a relation: its first formal argument and the next one that names a node."""
    values = [value for _, value in rel.formal_attributes]
    if not values or not isinstance(values[0], QualifiedName):
        return None
    for value in values[1:]:
        if isinstance(value, QualifiedName):
            return values[0], value
    return None


def to_dot(doc: ProvDocument, name: str = "provenance") -> str:
    """The document as graphviz DOT text: one node per element (labelled with prov:label), one edge per relation.

    Edges point the PROV way (from the later thing to the earlier one), labelled with the relation's name.
    Bundles, if any, are drawn flattened.
    """
    doc = doc.flattened() if doc.has_bundles() else doc
    ids: dict[QualifiedName, str] = {}
    lines = [f"digraph {_quote(name)} {{", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    lines.append('  edge [fontname="Helvetica", fontsize=8, color="#404040"];')
    elements = [r for r in doc.get_records() if isinstance(r, ProvElement)]
    relations = [r for r in doc.get_records() if isinstance(r, ProvRelation)]
    for element in elements:
        if element.identifier in ids:
            continue
        ids[element.identifier] = key = f"n{len(ids)}"
        style = next((s for cls, s in _STYLE.items() if isinstance(element, cls)), _OTHER)
        lines.append(
            f"  {key} [label={_quote(_label(element))}, tooltip={_quote(str(element.identifier))}, {style}];"
        )
    for rel in relations:
        ends = _ends(rel)
        if ends is None:
            continue
        for end in ends:
            if end not in ids:  # a node referred to but not described: draw its identifier
                ids[end] = key = f"n{len(ids)}"
                lines.append(f"  {key} [label={_quote(str(end))}, {_OTHER}];")
        verb = rel.get_type().localpart
        lines.append(f"  {ids[ends[0]]} -> {ids[ends[1]]} [label={_quote(_short_verb(verb))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


_VERBS = {
    "Generation": "wasGeneratedBy",
    "Usage": "used",
    "Communication": "wasInformedBy",
    "Start": "wasStartedBy",
    "End": "wasEndedBy",
    "Association": "wasAssociatedWith",
    "Attribution": "wasAttributedTo",
    "Derivation": "wasDerivedFrom",
    "Membership": "hadMember",
    "Delegation": "actedOnBehalfOf",
    "Influence": "wasInfluencedBy",
    "Invalidation": "wasInvalidatedBy",
    "Specialization": "specializationOf",
    "Alternate": "alternateOf",
    "Mention": "mentionOf",
}


def _short_verb(record_type: str) -> str:
    return _VERBS.get(record_type, record_type)


def dot_to_svg(dot_text: str, *, timeout: float = 300.0) -> str:
    """Lay out DOT text with graphviz's ``dot`` and return the SVG.

    Raises:
        ExportError: When ``dot`` is not on PATH, fails, or takes longer than ``timeout`` seconds.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise ExportError(
            f"SVG export needs the 'dot' program of graphviz, which is not on PATH: {GRAPHVIZ_HINT}"
        )
    try:
        done = subprocess.run(
            [exe, "-Tsvg"], input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ExportError(
            f"graphviz 'dot' took more than {timeout:g} s to lay out the graph; export 'dot' and render a part of it"
        ) from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise ExportError(f"graphviz 'dot -Tsvg' failed with exit code {done.returncode}: {message}")
    return done.stdout.decode("utf-8")


__all__ = [
    "FORMATS",
    "SUFFIXES",
    "dot_to_svg",
    "load_prov_json",
    "serialize",
    "to_dot",
    "write_export",
    "write_prov_json",
]
