"""Read one yProv4ML PROV-JSON (3.x or 2.x) into prov4ml-hpc rank records: parameters, files, contexts, times.

3.x (``yprov`` prefix): parameters are ``provml:HyperParameter`` entities ``[source//]label//context``, files
are entities with ``dcterms:identifier``, a copied file is a pair ``Original_<name>`` + ``<name>``, the same file
logged again makes the entity a list of attribute sets (one record each), metric entities name their file with
its context and source; times are local without an offset (``yprov:time_zone`` gives it).  2.x (``yProv4ML``
prefix): parameters are attributes of the context activities ``context:<name>``, files are ``yProv4ML:<label>``
entities with ``yProv4ML:path``, start and end come from the ``execution_start_time`` / ``execution_end_time``
parameters (Unix seconds).  Only the ``json`` module reads the file: nothing in it is evaluated.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..errors import ConfigError

CONTEXTS = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "testing": "testing",
    "test": "testing",
    "evaluation": "evaluation",
    "datasets": "datasets",
    "models": "models",
}
_FACT = re.compile(r"^(?:.+_)?(stat_[a-z_]+|total_params|memory_of_model|total_memory_load_of_model)$")
_ROOT_KEYS_V2 = {
    "level",
    "provenance_path",
    "artifact_uri",
    "experiment_dir",
    "experiment_name",
    "run_id",
    "python_version",
    "global_rank",
    "local_rank",
    "node_rank",
}


@dataclass
class ProvFacts:
    """What one rank's PROV-JSON says, in prov4ml-hpc terms."""

    version: str  # "3" or "2"
    root: str  # yProv4ML's root context name (<exp>_GR<rank>_<N>): metrics in it go to context ""
    records: list[dict[str, Any]] = field(default_factory=list)
    metric_files: dict[str, tuple[str, str, str | None]] = field(
        default_factory=dict
    )  # basename -> name, ctx, src
    contexts: set[str] = field(default_factory=set)  # every yProv4ML context name seen
    user: str | None = None
    host: str | None = None
    python_version: str | None = None
    start: float | None = None
    end: float | None = None


def context_of(raw: Any, root: str | None) -> str:
    """A yProv4ML context name as ours: its root context is "", ``Context.TRAINING``/``Training`` is
    ``training``, other names are kept."""
    text = str(raw).strip()
    if root is not None and text == root:
        return ""
    low = text.lower()
    low = low[len("context.") :] if low.startswith("context.") else low
    if low in CONTEXTS:
        return CONTEXTS[low]
    return text[len("Context.") :] if text.startswith("Context.") else text


def _val(x: Any) -> Any:
    if isinstance(x, list):  # an attribute given several values: the first
        x = x[0] if x else None
    if isinstance(x, dict) and "$" in x:
        return x["$"]
    return x


def _local(key: str) -> str:
    return key.split(":", 1)[-1]


def value_of(x: Any) -> Any:
    """A literal as a typed value: ``"0.01"`` -> 0.01, ``"[4, 2]"`` -> [4, 2] (JSON only), ``"True"`` -> True."""
    x = _val(x)
    if not isinstance(x, str):
        return x
    for conv in (int, float):
        try:
            return conv(x)
        except ValueError:
            pass
    if x in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[x]
    if x[:1] in "[{":
        try:
            return json.loads(x)
        except ValueError:
            return x
    return x


def _offset(time_zone: Any) -> dt.timezone | None:
    m = re.search(r"([+-])(\d{2}):?(\d{2})$", str(time_zone or ""))
    if not m:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return dt.timezone(dt.timedelta(minutes=minutes if m.group(1) == "+" else -minutes))


def parse_time(x: Any, tz: dt.timezone | None) -> float | None:
    """An ISO time as Unix seconds; without an offset it is in ``tz`` (yProv4ML's time_zone), else local time."""
    x = _val(x)
    if not isinstance(x, str) or not x:
        return None
    try:
        t = dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None and tz is not None:
        t = t.replace(tzinfo=tz)
    return t.timestamp()


def _versions(attrs: Any) -> list[dict[str, Any]]:
    """An entity's attribute sets: a list when the same identifier was recorded several times."""
    items = attrs if isinstance(attrs, list) else [attrs]
    return [a for a in items if isinstance(a, dict)]


def _relations(doc: dict, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rel in (doc.get(kind) or {}).values():
        out.extend(_versions(rel))
    return out


def read_prov(path: str) -> ProvFacts:
    """Parse one ``prov_<exp>_GR<rank>_<N>.json``.

    Raises:
        ConfigError: the file is not JSON or is neither yProv4ML 3.x nor 2.x output.
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} cannot be read as PROV-JSON ({exc}); is it a yProv4ML provenance file?"
        ) from exc
    prefixes = doc.get("prefix") or {}
    if "yprov" in prefixes:
        return _read_v3(doc)
    if "yProv4ML" in prefixes or any(str(a).startswith("context:") for a in doc.get("activity") or {}):
        return _read_v2(doc)
    raise ConfigError(
        f"{path} is not yProv4ML 3.x output (prefix 'yprov') nor 2.x output (prefix 'yProv4ML', activities "
        f"'context:...'); its prefixes are {sorted(prefixes)}"
    )


def _file_kind(etype: str) -> str:
    if etype.endswith("Model"):
        return schema.REC_MODEL
    if etype.endswith("Dataset"):
        return schema.REC_DATASET
    return schema.REC_ARTIFACT


def _facts(attrs: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """Free attributes, with yProv4ML's ``<label>_stat_*`` / ``<model>_total_params`` names shortened."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        word = _local(key)
        if key in skip or word in skip:
            continue
        m = _FACT.match(word)
        out[m.group(1) if m else word] = value_of(value)
    return out


def _read_v3(doc: dict) -> ProvFacts:
    activities = doc.get("activity") or {}
    root = next((a for a, v in activities.items() if "yprov:experiment_name" in _versions(v)[0]), None)
    if root is None:
        raise ConfigError("yProv4ML 3.x PROV-JSON without a root activity (yprov:experiment_name)")
    ra = _versions(activities[root])[0]
    tz = _offset(ra.get("yprov:time_zone"))
    facts = ProvFacts(
        "3", root, host=_val(ra.get("yprov:host_name")), python_version=_val(ra.get("yprov:python_version"))
    )
    facts.start, facts.end = (
        parse_time(ra.get("prov:startedAtTime"), tz),
        parse_time(ra.get("prov:endedAtTime"), tz),
    )
    facts.user = next(iter(doc.get("agent") or {}), None)
    facts.contexts = {a for a in activities if "//" not in a}
    for rel in _relations(doc, "wasInformedBy"):
        child, parent = str(rel.get("prov:informed")), str(rel.get("prov:informant"))
        if "//" not in child and "//" not in parent and parent != root and child != root:
            facts.records.append(
                {
                    "type": schema.REC_EVENT,
                    "name": "context",
                    "context": context_of(child, root),
                    "attrs": {"parent": context_of(parent, root), "from": "yprov4ml"},
                    "time": parse_time(_versions(activities.get(child, {}))[0].get("prov:startedAtTime"), tz),
                }
            )
    entities = doc.get("entity") or {}
    originals = {eid[len("Original_") :]: eid for eid in entities if eid.startswith("Original_")}
    for eid, raw in entities.items():
        if eid.startswith("Original_") and eid[len("Original_") :] in entities:
            continue  # folded into its copy below
        parts = eid.split("//")
        ctx = context_of(parts[-1], root) if len(parts) > 1 else ""
        source = parts[0] if len(parts) > 2 else None
        for a in _versions(raw):
            facts.records.extend(_v3_entity(facts, a, ctx, source, tz, entities.get(originals.get(eid, ""))))
    return facts


def _v3_entity(facts: ProvFacts, a: dict, ctx: str, source: str | None, tz: Any, original: Any) -> list[dict]:
    etype = str(_val(a.get("prov:type")) or "")
    label = str(_val(a.get("prov:label")) or "")
    when = parse_time(a.get("prov:generatedAtTime"), tz)
    if etype.endswith("HyperParameter"):
        rec = {
            "type": schema.REC_PARAM,
            "name": label,
            "value": value_of(a.get("prov:value")),
            "context": ctx or None,
            "role": "input" if _val(a.get("prov:role")) == "input" else "output",
            "attrs": {"source": source} if source else {},
        }
        return [rec]
    if etype.endswith("Metric"):
        ident = str(_val(a.get("dcterms:identifier")) or "")
        src = _val(a.get("yprov:source"))
        facts.metric_files[ident.replace("\\", "/").rsplit("/", 1)[-1]] = (
            label,
            context_of(_val(a.get("yprov:context")) or ctx, facts.root),
            None if src in (None, "None") else str(src),
        )
        return []
    skip = {
        "prov:label",
        "prov:type",
        "prov:role",
        "dcterms:identifier",
        "prov:generatedAtTime",
        "fullLabel",
        "file_size",
    }
    rec: dict[str, Any] = {
        "type": _file_kind(etype),
        "name": label,
        "role": "input" if _val(a.get("prov:role")) == "input" else "output",
        "context": ctx or None,
        "step": None,
        "attrs": _facts(a, skip),
        "time": when,
    }
    if source:
        rec["attrs"]["source"] = source
    ident = _val(a.get("dcterms:identifier"))
    orig = _versions(original)[0] if original is not None else None
    if orig is not None:  # a copied file: the original's path, the copy kept as an attribute
        rec["attrs"]["yprov4ml_copy"] = ident
        ident = _val(orig.get("dcterms:identifier"))
    if ident:
        rec["path"] = str(ident)
    size = value_of(a.get("yprov:file_size"))
    if isinstance(size, int):
        rec["size"] = size
    return [rec]


def _read_v2(doc: dict) -> ProvFacts:
    activities = doc.get("activity") or {}
    levels = {a: value_of(_versions(v)[0].get("yProv4ML:level")) for a, v in activities.items()}
    root_id = next((a for a, lv in levels.items() if lv == 0), None) or next(iter(activities), None)
    if root_id is None:
        raise ConfigError("yProv4ML 2.x PROV-JSON without activities")
    root = root_id.split(":", 1)[-1]
    facts = ProvFacts("2", root)
    ra = _versions(activities[root_id])[0]
    facts.python_version = _val(ra.get("yProv4ML:python_version"))
    facts.user = next(iter(doc.get("agent") or {}), "").split(":")[-1] or None
    facts.contexts = {a.split(":", 1)[-1] for a in activities}
    facts.start = _float(value_of(ra.get("yProv4ML:execution_start_time")))
    facts.end = _float(value_of(ra.get("yProv4ML:execution_end_time")))
    for aid, raw in activities.items():
        a = _versions(raw)[0]
        ctx = context_of(aid.split(":", 1)[-1], root)
        for key, value in a.items():
            word = _local(key)
            if (aid == root_id and word in _ROOT_KEYS_V2) or word == "level":
                continue
            facts.records.append(
                {"type": schema.REC_PARAM, "name": word, "value": value_of(value), "context": ctx or None}
            )
    for rel in _relations(doc, "wasInformedBy"):
        child, parent = str(rel.get("prov:informed")), str(rel.get("prov:informant"))
        if parent != root_id and child != root_id:
            facts.records.append(
                {
                    "type": schema.REC_EVENT,
                    "name": "context",
                    "context": context_of(child.split(":", 1)[-1], root),
                    "attrs": {"parent": context_of(parent.split(":", 1)[-1], root), "from": "yprov4ml"},
                }
            )
    where = {
        str(r.get("prov:entity")): str(r.get("prov:activity"))
        for k in ("used", "wasGeneratedBy")
        for r in _relations(doc, k)
    }
    entities = doc.get("entity") or {}
    for eid, raw in entities.items():
        prefix, _, label = eid.rpartition(":")
        if label.startswith("original_") and f"{prefix}:{label[len('original_') :]}" in entities:
            continue  # folded into its copy
        original = entities.get(f"{prefix}:original_{label}")
        for a in _versions(raw):
            for rec in _v2_entity(facts, eid, a, where.get(eid, root_id), root):
                if original is not None and "path" in rec:  # a copied file: the original's path
                    rec["attrs"]["yprov4ml_copy"] = rec["path"]
                    rec["path"] = str(_val(_versions(original)[0].get("yProv4ML:path")) or rec["path"])
                facts.records.append(rec)
    return facts


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _v2_entity(facts: ProvFacts, eid: str, a: dict, activity: str, root: str) -> list[dict]:
    label = str(_val(a.get("yProv4ML:label")) or eid.split(":", 1)[-1])
    path = str(_val(a.get("yProv4ML:path")) or "")
    ctx = context_of(activity.split(":", 1)[-1], root)
    if "yProv4ML:context" in a:  # a metric: its file
        src = _val(a.get("yProv4ML:source"))
        facts.metric_files[path.replace("\\", "/").rsplit("/", 1)[-1]] = (
            label,
            context_of(_val(a["yProv4ML:context"]), root),
            None if src in (None, "None") else str(src),
        )
        return []
    attrs = _facts(a, {"label", "path", "role", "model_name"})
    if any(k.startswith("stat_") for k in attrs):
        kind = schema.REC_DATASET
    elif path.endswith((".pt", ".pth")) or "total_params" in attrs or ctx == "models":
        kind = schema.REC_MODEL
    else:
        kind = schema.REC_ARTIFACT
    rec: dict[str, Any] = {
        "type": kind,
        "name": label,
        "role": "input" if _val(a.get("yProv4ML:role")) == "input" else "output",
        "context": ctx or None,
        "step": None,
        "attrs": attrs,
    }
    if path:
        rec["path"] = path
    return [rec]
