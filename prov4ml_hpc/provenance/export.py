"""Serialize, write and load the PROV document of a run: PROV-JSON, PROV-N, PROV-XML, PROV-JSONLD, Turtle, TriG,
DOT, SVG.

PROV-JSON, PROV-N, PROV-JSONLD and DOT need nothing beyond ``prov``; PROV-XML needs lxml, Turtle/TriG need rdflib
and SVG the ``dot`` binary of graphviz: a missing one raises ExportError naming what to install.  In PROV-JSON a
``prov:type`` is a plain QName string (what yProv Explorer shows), read back as a QName by :func:`load_prov_json`.
PROV-JSONLD carries its ``@context`` (prov's copy of the PROV-JSONLD context), so it parses offline.  A string
that a format cannot carry (XML 1.0: most control characters; UTF-8 text: lone surrogates) is escaped reversibly
and its record says so in ``prov4ml:escaped_attributes`` (:func:`unescape_document` undoes it).  DOT is written here (prov's own DOT export
needs pydot): yellow ellipses for entities, blue boxes for activities, orange houses for agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

from prov.constants import PROV_LABEL, PROV_TYPE
from prov.identifier import QualifiedName
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvDocument,
    ProvElement,
    ProvEntity,
    ProvRelation,
)
from prov.serializers.provjson import decode_json_document, encode_json_document

from prov4ml_hpc.errors import ExportError
from prov4ml_hpc.provenance import vocab as v
from prov4ml_hpc.provenance.graph import gc_paused

FORMATS = ("json", "provn", "xml", "jsonld", "ttl", "trig", "dot", "svg")
SUFFIXES = {fmt: "." + fmt for fmt in FORMATS}
JSONLD_CONTEXT_URL = "https://openprovenance.org/prov-jsonld/context.jsonld"
_ELEMENT_KEYS = ("entity", "activity", "agent")
_QNAME_TYPES = ("xsd:QName", "prov:QUALIFIED_NAME")
_QNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*:[^\s]+$")
# what a format cannot carry: XML 1.0's Char production excludes these; lone surrogates are not UTF-8 at all
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NOT_UTF8 = re.compile("[\ud800-\udfff]")
_ESCAPE_NEEDED = {"xml": _NOT_XML, "provn": _NOT_UTF8, "ttl": _NOT_UTF8, "trig": _NOT_UTF8}

RDF_HINT = 'pip install "prov4ml-hpc[rdf]" (or: pip install rdflib)'
XML_HINT = 'pip install "prov[xml]" (or: pip install lxml)'
GRAPHVIZ_HINT = "install graphviz (apt-get install graphviz, or conda install graphviz)"


def serialize(
    doc: ProvDocument, fmt: str = "json", *, indent: int | None = None, timeout: float = 300.0
) -> str:
    """Return ``doc`` as text in one of FORMATS.

    Args:
        doc: The document, usually from :func:`prov4ml_hpc.provenance.build_document`.
        fmt: ``json`` (PROV-JSON), ``provn`` (PROV-N), ``xml`` (PROV-XML), ``jsonld`` (PROV-JSONLD with its
            context embedded), ``ttl`` (PROV-O Turtle), ``trig`` (PROV-O TriG), ``dot`` (graphviz source) or
            ``svg`` (the DOT drawn by graphviz).
        indent: JSON indentation (json/jsonld only); None writes compact JSON.
        timeout: Seconds given to graphviz for ``svg`` (large graphs take long to lay out).

    Raises:
        ExportError: For an unknown format, or when the package or binary a format needs is missing (the
            message says what to install), or when graphviz fails.
    """
    if fmt == "json":
        # prov's own serializer streams through json.dump, whose pure-Python encoder makes the whole export
        # ~1.5x slower than json.dumps of the same container (the same text but for the prov:type strings).
        with gc_paused():
            return json.dumps(plain_types(encode_json_document(doc)), indent=indent)
    if fmt == "jsonld":
        return _embed_context(doc.serialize(format="jsonld"), indent)
    fmt = "ttl" if fmt == "turtle" else fmt
    if fmt in _ESCAPE_NEEDED:
        doc = escape_document(doc, _ESCAPE_NEEDED[fmt])
    if fmt == "provn":
        return doc.get_provn()
    if fmt == "xml":
        _require("lxml", f"PROV-XML export needs lxml, which is not installed: {XML_HINT}")
        return doc.serialize(format="xml")
    if fmt in ("ttl", "trig"):
        _require("rdflib", f"Turtle/TriG (PROV-O) export needs rdflib, which is not installed: {RDF_HINT}")
        with warnings.catch_warnings():  # prov 3.2's RDF writer uses APIs that rdflib 7.x deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            return doc.serialize(format="rdf", rdf_format="turtle" if fmt == "ttl" else "trig")
    if fmt == "dot":
        return to_dot(doc)
    if fmt == "svg":
        return dot_to_svg(to_dot(doc), timeout=timeout)
    raise ExportError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def plain_types(container: dict) -> dict:
    """A PROV-JSON container with each node's ``prov:type`` as a plain QName string, not a typed-value object.

    yProv Explorer v2 renders ``attributes["prov:type"]`` as text: a string shows, ``{"$": ..., "type": ...}``
    is an object React refuses to render.  PROV-JSON allows both; :func:`load_prov_json` reads the string back
    as the QName it was.
    """
    for key in _ELEMENT_KEYS:
        for record in (container.get(key) or {}).values():
            for rec in record if isinstance(record, list) else [record]:
                value = rec.get("prov:type")
                if isinstance(value, dict) and value.get("type") in _QNAME_TYPES and "$" in value:
                    rec["prov:type"] = value["$"]
                elif isinstance(value, list):
                    rec["prov:type"] = [
                        x["$"] if isinstance(x, dict) and x.get("type") in _QNAME_TYPES and "$" in x else x
                        for x in value
                    ]
    return container


def typed_types(container: dict) -> dict:
    """The inverse of :func:`plain_types`: a ``prov:type`` string ``prefix:name`` with a declared (or the prov,
    xsd) prefix becomes a QName again; any other string stays a string."""
    prefixes = set(container.get("prefix") or {}) | {"prov", "xsd"}

    def typed(x: object) -> object:
        if isinstance(x, str) and _QNAME.match(x) and x.split(":", 1)[0] in prefixes:
            return {"$": x, "type": "xsd:QName"}
        return x

    for key in _ELEMENT_KEYS:
        for record in (container.get(key) or {}).values():
            for rec in record if isinstance(record, list) else [record]:
                value = rec.get("prov:type")
                if value is not None:
                    rec["prov:type"] = [typed(x) for x in value] if isinstance(value, list) else typed(value)
    return container


def _embed_context(text: str, indent: int | None) -> str:
    """PROV-JSONLD text with prov's copy of the PROV-JSONLD context in place of its URL (parseable offline)."""
    from importlib.resources import files

    try:
        vendored = json.loads(files("prov.serializers").joinpath("prov-jsonld-context.jsonld").read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"this prov ({_prov_version()}) ships no copy of the PROV-JSONLD context to embed: "
            'pip install --upgrade "prov>=2.0"'
        ) from exc
    data = json.loads(text)
    context = data.get("@context")
    items = context if isinstance(context, list) else [context]
    data["@context"] = [vendored["@context"] if item == JSONLD_CONTEXT_URL else item for item in items]
    return json.dumps(data, indent=indent)


def _prov_version() -> str:
    import prov

    return f"prov {getattr(prov, '__version__', '?')}"


def escape_text(text: str) -> str:
    """Reversible escape: a backslash is doubled; a control character, a lone surrogate, U+FFFE and U+FFFF
    become a backslash, ``u`` and four upper-case hex digits.  The result is text every format carries."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


_UNESCAPE = re.compile(r"\\(\\|u[0-9A-F]{4})")


def unescape_text(text: str) -> str:
    """The inverse of :func:`escape_text`."""
    return _UNESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), text)


_ESCAPED_ATTR = v.PROV4ML[v.ESCAPED_ATTRIBUTES]


def escape_document(doc: ProvDocument, bad: re.Pattern = _NOT_XML) -> ProvDocument:
    """``doc`` with the string values that hold a character ``bad`` matches escaped (:func:`escape_text`).

    Every value of such an attribute on that record is escaped, and the record names the attribute in
    ``prov4ml:escaped_attributes`` (space-separated QNames), so that the document stays valid for its format's
    schema (no private datatype) and :func:`unescape_document` knows what to undo.  ``doc`` itself is returned
    when nothing needs escaping (the usual case: one pass over the attributes, no copy).
    """

    def escaped(record) -> set:
        return {
            attr for attr, value in record.extra_attributes if isinstance(value, str) and bad.search(value)
        }

    if not any(escaped(r) for r in doc.get_records()):
        return doc
    out = _empty_like(doc)
    for record in doc.get_records():
        names = escaped(record)
        if not names:
            out.add_record(record)
            continue
        other = [
            (attr, escape_text(value) if attr in names and isinstance(value, str) else value)
            for attr, value in record.extra_attributes
        ]
        other.append((_ESCAPED_ATTR, " ".join(sorted(str(n) for n in names))))
        out.new_record(record.get_type(), record.identifier, list(record.formal_attributes), other)
    return out


def unescape_document(doc: ProvDocument) -> ProvDocument:
    """The inverse of :func:`escape_document`."""
    if not any(r.get_attribute(_ESCAPED_ATTR) for r in doc.get_records()):
        return doc
    out = _empty_like(doc)
    for record in doc.get_records():
        marks = record.get_attribute(_ESCAPED_ATTR)
        if not marks:
            out.add_record(record)
            continue
        names = {name for mark in marks for name in str(mark).split()}
        other = [
            (attr, unescape_text(value) if str(attr) in names and isinstance(value, str) else value)
            for attr, value in record.extra_attributes
            if attr != _ESCAPED_ATTR
        ]
        out.new_record(record.get_type(), record.identifier, list(record.formal_attributes), other)
    return out


def _empty_like(doc: ProvDocument) -> ProvDocument:
    out = ProvDocument()
    for ns in doc.get_registered_namespaces():
        out.add_namespace(ns)
    if v.PROV4ML.uri not in {ns.uri for ns in doc.get_registered_namespaces()}:
        out.add_namespace(v.PROV4ML)  # the prefix of prov4ml:escaped_attributes
    return out


def load_export(text: str, fmt: str) -> ProvDocument:
    """Read text written by :func:`serialize` back into the document it came from (escapes undone).

    Raises:
        ExportError: an unknown or drawing-only format, or text that does not parse.
    """
    options = {
        "json": {"format": "json"},
        "provn": {"format": "provn"},
        "xml": {"format": "xml"},
        "jsonld": {"format": "jsonld"},
        "ttl": {"format": "rdf", "rdf_format": "turtle"},
        "trig": {"format": "rdf", "rdf_format": "trig"},
    }.get(fmt)
    if options is None:
        raise ExportError(f"cannot read {fmt!r} back; expected one of json, provn, xml, jsonld, ttl, trig")
    try:
        if fmt == "json":
            doc = ProvDocument()
            decode_json_document(typed_types(json.loads(text)), doc)
            return doc
        with warnings.catch_warnings():  # prov 3.2's RDF reader uses APIs that rdflib 7.x deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            doc = ProvDocument.deserialize(content=text, **options)
    except ValueError as exc:
        raise ExportError(f"cannot read the {fmt} text back: {exc}") from exc
    return unescape_document(doc)


def graph_level(doc: ProvDocument) -> str | None:
    """The detail level a document was built at (``prov4ml:graph_level`` of its job), None if it says none."""
    for record in doc.get_records(ProvActivity):
        if v.JOB in record.get_attribute(PROV_TYPE):
            levels = record.get_attribute(v.PROV4ML[v.GRAPH_LEVEL])
            return str(next(iter(levels))) if levels else None
    return None


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
            container = typed_types(json.load(f))
            doc = ProvDocument()
            decode_json_document(container, doc)
            return doc
    except (
        OSError,
        ValueError,
        AttributeError,
        TypeError,
    ) as exc:  # json.JSONDecodeError and prov's parse errors are ValueErrors
        raise ExportError(f"cannot load PROV-JSON from {path}: {exc}") from exc


# ---- DOT and SVG ----------------------------------------------------------------------------------------
_STYLE = {
    ProvEntity: 'shape=ellipse, style=filled, fillcolor="#FFFC87", color="#808080"',
    ProvActivity: 'shape=box, style=filled, fillcolor="#9FB1FC", color="#0000FF"',
    ProvAgent: 'shape=house, style=filled, fillcolor="#FED37F"',
}
_OTHER = 'shape=plaintext, fontcolor="#808080"'


def _quote(text: str) -> str:
    text = v.shown_text(text.replace("\n", "\u2424"))  # graphviz is C: no NUL, no control characters
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FULL = v.PROV4ML[v.FULL_LABEL]


def _label(element: ProvElement) -> str:
    """The long label (prov4ml:full_label) when there is one, else prov:label, else the identifier."""
    labels = sorted(str(x) for x in element.get_attribute(_FULL)) or sorted(
        str(x) for x in element.get_attribute(PROV_LABEL)
    )
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
    "escape_document",
    "graph_level",
    "load_export",
    "load_prov_json",
    "plain_types",
    "unescape_document",
    "serialize",
    "to_dot",
    "write_export",
    "write_prov_json",
]
