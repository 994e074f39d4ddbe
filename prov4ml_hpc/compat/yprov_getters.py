"""yProv4ML's ``getters`` (its ``utils.getters``) for the drop-in, reading a prov4ml-hpc provenance.json and run.h5.

The same functions and arguments: ``source`` is a provenance.json path (or its loaded dict).  yProv4ML's
entity types are understood (``provml:Metric`` -> ``prov4ml:MetricSeries``, ``provml:HyperParameter`` ->
``prov4ml:Parameter``, ``provml:Model``, ``provml:Dataset``); names are our identifiers, or the ``name``
(yProv4ML's label) of a node.  ``get_metric`` reads the values from run.h5 (one rank: ``global_rank``) and
returns yProv4ML's columns ``epoch, value, timestep`` (milliseconds) as a pandas DataFrame when pandas is
installed, else a numpy structured array.  A project is an experiment folder (RUN_ROOT/EXPERIMENT).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import schema

TYPES = {
    "provml:Metric": ("prov4ml:MetricSeries", "prov4ml:SystemSeries"),
    "provml:HyperParameter": ("prov4ml:Parameter",),
    "provml:Model": ("prov4ml:Model",),
    "provml:Dataset": ("prov4ml:Dataset",),
}
_SERIES = TYPES["provml:Metric"]


_NUMBERS = {"xsd:int": int, "xsd:long": int, "xsd:integer": int, "xsd:double": float, "xsd:float": float}


def _unwrap(value: Any) -> Any:
    """A PROV-JSON literal as a Python value: ``{"$": "32", "type": "xsd:int"}`` -> 32."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict) and "$" in value:
        conv = _NUMBERS.get(str(value.get("type")))
        try:
            return conv(value["$"]) if conv is not None else value["$"]
        except (TypeError, ValueError):
            return value["$"]
    return value


def _get_source(source: dict | str | os.PathLike) -> dict:
    if isinstance(source, dict):
        return source
    with open(source, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc.setdefault("_path", os.fspath(source))
    return doc


def _types(attrs: dict) -> set[str]:
    value = attrs.get("prov:type")
    values = value if isinstance(value, list) else [value]
    return {str(_unwrap(v)) for v in values if v is not None}


def _record(doc: dict, name: str) -> dict | None:
    for kind in ("activity", "entity"):
        rec = doc.get(kind, {}).get(name)
        if rec is not None:
            return rec[0] if isinstance(rec, list) else rec
    for kind in ("activity", "entity"):
        for rec in doc.get(kind, {}).values():
            rec = rec[0] if isinstance(rec, list) else rec
            if name in (_unwrap(rec.get("prov4ml:name")), _unwrap(rec.get("prov:label"))):
                return rec
    return None


def list_activities(source: dict | str) -> list[str]:
    """Identifiers of the graph's activities (job, ranks, contexts)."""
    return list(_get_source(source).get("activity", {}).keys())


def list_entities(source: dict | str, entity_type: str | None = None) -> list[str]:
    """Identifiers of the entities, of one type when ``entity_type`` is given (yProv4ML's or ours)."""
    doc = _get_source(source)
    entities = doc.get("entity", {})
    if entity_type is None:
        return list(entities)
    wanted = set(TYPES.get(entity_type, (entity_type,)))
    return [name for name, attrs in entities.items() if _types(attrs) & wanted]


def get_parameter(source: dict | str, name: str, param: str, unwrap: bool = True) -> Any:
    """Attribute ``param`` (with or without its ``prov4ml:``/``prov:`` prefix) of the node ``name``.

    Raises:
        KeyError: no activity or entity has that identifier or name.
    """
    record = _record(_get_source(source), name)
    if record is None:
        raise KeyError(f"No activity or entity named {name!r}. Use list_activities() / list_entities().")
    for key in (param, f"prov4ml:{param}", f"prov:{param}"):
        if key in record:
            return _unwrap(record[key]) if unwrap else record[key]
    return None


def list_parameters(data: dict | str, name: str | None = None, unwrap: bool = True) -> dict[str, Any]:
    """Every attribute of node ``name``; without a name the prov4ml:Parameter entities as {name: value}."""
    doc = _get_source(data)
    if name is not None:
        record = _record(doc, name)
        if record is None:
            raise KeyError(f"No activity or entity named {name!r}.")
        return {k: _unwrap(v) if unwrap else v for k, v in record.items()}
    out: dict[str, Any] = {}
    for ident in list_entities(doc, "provml:HyperParameter"):
        rec = doc["entity"][ident]
        rec = rec[0] if isinstance(rec, list) else rec
        out[str(_unwrap(rec.get("prov4ml:name")))] = _unwrap(rec.get("prov:value"))
    return out


def _series(doc: dict, context: str | None) -> dict[str, dict]:
    out = {}
    for ident in list_entities(doc, "provml:Metric"):
        attrs = {k: _unwrap(v) for k, v in doc["entity"][ident].items()}
        if context is None or attrs.get("prov4ml:context") == context:
            out[ident] = attrs
    return out


def list_metrics(data: dict | str, context: str | None = None, source: str | None = None) -> Any:
    """One row per series entity (label, context, global_rank, path in run.h5): a DataFrame with pandas, else a
    list of dicts.  ``source`` is accepted (the series' source is an event here, not a graph attribute)."""
    rows = [
        {
            "metric_entity": ident,
            "label": a.get("prov4ml:name"),
            "context": a.get("prov4ml:context"),
            "global_rank": a.get("prov4ml:global_rank"),
            "csv_path": a.get("prov4ml:dataset"),
            "count": a.get("prov4ml:count"),
        }
        for ident, a in _series(_get_source(data), context).items()
    ]
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows).set_index("metric_entity") if rows else pd.DataFrame()


def list_metric_paths(
    data: dict | str, context: str | None = None, source: str | None = None, file_type: str | None = None
) -> dict[str, str]:
    """{series entity: ``run.h5:<HDF5 path>``} (``file_type`` other than h5 matches nothing)."""
    if file_type not in (None, "h5"):
        return {}
    return {
        ident: f"{a.get('prov4ml:file')}:{a.get('prov4ml:dataset')}"
        for ident, a in _series(_get_source(data), context).items()
        if a.get("prov4ml:dataset")
    }


def _run_dir(doc: dict) -> str:
    if "_path" in doc:
        return os.path.dirname(os.path.abspath(doc["_path"]))
    for attrs in doc.get("activity", {}).values():
        attrs = attrs[0] if isinstance(attrs, list) else attrs
        if "prov4ml:run_dir" in attrs:
            return str(_unwrap(attrs["prov4ml:run_dir"]))
    raise KeyError("the document names no run directory: pass the provenance.json path")


def get_metric(
    data: dict | str,
    name: str | None = None,
    context: str | None = None,
    source: str | None = None,
    global_rank: int = 0,
) -> Any:
    """The values of series ``name`` in ``context`` of one rank, read from run.h5: columns epoch, value,
    timestep (Unix ms).  Returns None when the graph has no such series.

    Raises:
        MergeError: run.h5 is missing or unreadable.
    """
    import numpy as np

    from ..merge.runfile import read_run_file

    doc = _get_source(data)
    found = [
        a
        for a in _series(doc, context).values()
        if a.get("prov4ml:name") == name and int(a.get("prov4ml:global_rank") or 0) == global_rank
    ]
    if not found:
        return None
    rf = read_run_file(os.path.join(_run_dir(doc), schema.RUN_FILE))
    values = rf.values(
        str(name),
        str(found[0].get("prov4ml:context")),
        global_rank,
        int(found[0].get("prov4ml:attempt") or 0),
    )
    table = np.empty(len(values), dtype=[("epoch", "i8"), ("value", "f8"), ("timestep", "i8")])
    table["epoch"], table["value"] = values["step"], values["value"]
    table["timestep"] = np.round(values["time"] * 1000.0)
    try:
        import pandas as pd
    except ImportError:
        return table
    return pd.DataFrame({k: table[k] for k in ("epoch", "value", "timestep")})


def list_runs_in_proj(path: str | Path) -> list[Path]:
    """The run directories of an experiment folder (RUN_ROOT/EXPERIMENT)."""
    proj = Path(path)
    return sorted(p for p in proj.iterdir() if p.is_dir())


def list_provjson_in_proj(path: str | Path) -> list[Path]:
    """The provenance.json of each run of an experiment folder that has one."""
    return [run / schema.PROV_FILE for run in list_runs_in_proj(path) if (run / schema.PROV_FILE).is_file()]
