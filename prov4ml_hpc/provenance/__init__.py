"""The provenance side of prov4ml-hpc: the PROV vocabulary, the graph builder and its exports.

``build_document(summary)`` turns a merged RunSummary into ONE flat PROV document; ``write_prov_json`` writes it
as the run's provenance.json; ``serialize`` gives the other formats.
"""

from __future__ import annotations

from prov4ml_hpc.provenance.export import (
    FORMATS,
    dot_to_svg,
    load_prov_json,
    serialize,
    to_dot,
    write_export,
    write_prov_json,
)
from prov4ml_hpc.provenance.graph import build_document

__all__ = [
    "FORMATS",
    "build_document",
    "dot_to_svg",
    "load_prov_json",
    "serialize",
    "to_dot",
    "write_export",
    "write_prov_json",
]
