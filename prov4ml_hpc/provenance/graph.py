"""Build the ONE flat W3C PROV document of a job from its merged RunSummary (pure: no I/O, no clock, no randomness).

Nodes: agents (the user, the SLURM submitter, the prov4ml-hpc software), activities (the job, one per
rank-attempt, one per context of each rank-attempt) and entities (one per series, parameter, artifact/model/
dataset, the job script, each rank's environment, each node, run.h5 and the rank files).  Relations are only
wasGeneratedBy, used, wasInformedBy, wasAssociatedWith, wasAttributedTo, wasDerivedFrom, wasStartedBy and
hadMember.  The size grows with ranks x series, never with the number of logged values.  See docs/provenance.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prov.constants import PROV, PROV_LABEL, PROV_ROLE, PROV_TYPE, PROV_VALUE
from prov.identifier import QualifiedName
from prov.model import ProvDocument

from prov4ml_hpc import schema
from prov4ml_hpc.merge.model import (
    ArtifactRecord,
    ContextSpan,
    ParamRecord,
    RankSummary,
    RunSummary,
    SeriesSummary,
)
from prov4ml_hpc.provenance import vocab as v

Attrs = list[tuple[QualifiedName, Any]]
_LABEL_VALUE_MAX = 60


def build_document(summary: RunSummary, *, members: bool = False) -> ProvDocument:
    """Return the PROV document of a run.

    Args:
        summary: The merged run, as the merge produces it.
        members: Also state ``hadMember(run.h5, series)`` for every series entity: one more relation per series,
            all on one hub node; off by default (each series already names its file and dataset).

    Returns:
        A flat ProvDocument (no bundles); the same summary always gives the same document and the same
        serialization, byte for byte.
    """
    with gc_paused():
        return _Builder(summary, members).build()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large graph is built or serialized.

    A 1,024-rank graph allocates millions of small acyclic objects; the collector's repeated full scans of
    them roughly double the time.  Nothing here creates garbage cycles, and the previous state is restored.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---- values ---------------------------------------------------------------------------------------------
def utc(seconds: float | None) -> dt.datetime | None:
    """Unix seconds as an aware UTC datetime (None for None or a non-finite number)."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _nonfinite_word(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def scalar(value: Any) -> Any:
    """A value as a PROV literal: bool/int/float/str/datetime kept; numpy scalars unwrapped; a non-finite float
    as "nan"/"inf"/"-inf"; containers as compact sorted JSON text; None stays None (the attribute is omitted)."""
    if value is None or isinstance(value, bool | int | str | dt.datetime):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else _nonfinite_word(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, list | tuple | dict | set):
        try:
            return scalar(item())
        except (TypeError, ValueError):
            pass
    return _json_text(value)


def _attrs(pairs: Iterable[tuple[str, Any]]) -> Attrs:
    """prov4ml attributes from (word, value) pairs, omitting None values."""
    out: Attrs = []
    for word, value in pairs:
        value = scalar(value)
        if value is not None:
            out.append((v.PROV4ML[word], value))
    return out


def _flat(mapping: Mapping[str, Any], taken: set[str], prefix: str = "") -> list[tuple[str, Any]]:
    """User-keyed attributes (hardware, totals, artifact attrs) as (word, value); a word already taken is skipped."""
    out = []
    for key in sorted(mapping, key=str):
        word = prefix + v.attribute_word(str(key))
        if word not in taken:
            taken.add(word)
            out.append((word, mapping[key]))
    return out


def _meta_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else _json_text(value)


def _shown(name: str | None) -> str:
    """A user name as shown in a label: the empty name as "" so that a label never starts blank."""
    return '""' if name == "" else str(name)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _LABEL_VALUE_MAX else text[: _LABEL_VALUE_MAX - 3] + "..."


def _sort_key(*parts: Any) -> tuple:
    """A total order over values that may be None or of mixed types."""
    return tuple(
        (p is None, str(type(p).__name__), p if isinstance(p, int | float) else str(p)) for p in parts
    )


def _context_parents(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """child context -> parent context, from ``context`` events (yProv4ML's log_context(child, parent));
    a link that would close a cycle is left out."""
    parents: dict[str, str] = {}
    for ev in events:
        attrs = ev.get("attrs") if isinstance(ev.get("attrs"), Mapping) else {}
        child, parent = ev.get("context"), attrs.get("parent")
        if ev.get("name") != "context" or not isinstance(child, str) or not isinstance(parent, str):
            continue
        seen, p = {child}, parent
        while p in parents and p not in seen:
            seen.add(p)
            p = parents[p]
        if child and p not in seen and parent != child:
            parents[child] = parent
    return parents


# ---- the builder ----------------------------------------------------------------------------------------
class _Builder:
    def __init__(self, summary: RunSummary, members: bool) -> None:
        self.s = summary
        self.members = members
        self.doc = ProvDocument()
        self.doc.add_namespace(v.PROV4ML)
        self.ns = v.run_namespace(summary.run_id)
        self.doc.add_namespace(self.ns)
        self.used_ids: set[QualifiedName] = set()
        self.user: QualifiedName | None = None
        self.submitter: QualifiedName | None = None
        self.job = self.ns["job"]
        self.software = self.ns["software"]
        self.run_file = self.ns["runfile"]

    def ident(self, *parts: str) -> QualifiedName:
        """A fresh identifier from fixed parts (already escaped); a repeat gets ``.2``, ``.3``, ..."""
        base = ".".join(parts)
        qn, n = self.ns[base], 1
        while qn in self.used_ids:
            n += 1
            qn = self.ns[f"{base}.{n}"]
        self.used_ids.add(qn)
        return qn

    def node(
        self,
        kind: str,
        qn: QualifiedName,
        types: Iterable[QualifiedName],
        label: str,
        attrs: Attrs,
        times: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
    ) -> None:
        """Add an agent, activity or entity with its prov:type values, its prov:label and its attributes."""
        other: Attrs = [(PROV_TYPE, t) for t in types] + [(PROV_LABEL, label)] + attrs
        self.used_ids.add(qn)
        if kind == "agent":
            self.doc.agent(qn, other)
        elif kind == "activity":
            self.doc.activity(qn, times[0], times[1], other)
        else:
            self.doc.entity(qn, other)

    def build(self) -> ProvDocument:
        self.agents()
        self.job_activity()
        self.job_script()
        self.files()
        last_attempt: dict[int, QualifiedName] = {}
        for rank in sorted(self.s.ranks, key=lambda r: (r.attempt, r.global_rank)):
            act = self.rank(rank)
            previous = last_attempt.get(rank.global_rank)
            if previous is not None:
                self.doc.wasInformedBy(act, previous)  # requeue: attempt k follows attempt k-1
            last_attempt[rank.global_rank] = act
        return self.doc

    # -- agents and the job -----------------------------------------------------------------------------
    def agents(self) -> None:
        job = self.s.job
        primary = self.s.user or job.user
        submitter = job.user if job.job_id is not None else None
        roles: dict[str, list[QualifiedName]] = {}
        if primary is not None:
            roles.setdefault(primary, []).append(v.USER)
        if submitter is not None:
            roles.setdefault(submitter, []).append(v.SUBMITTER)
        for name in sorted(roles):
            qn = self.ident("user", v.escape_component(name))
            self.node("agent", qn, [PROV["Person"], *roles[name]], name, _attrs([(v.USER_NAME, name)]))
            if name == primary:
                self.user = qn
            if name == submitter:
                self.submitter = qn
        version = self.s.software_version
        self.node(
            "agent",
            self.software,
            [PROV["SoftwareAgent"], v.SOFTWARE],
            f"prov4ml-hpc {version}",
            _attrs([(v.NAME, "prov4ml-hpc"), (v.VERSION, version)]),
        )

    def job_activity(self) -> None:
        s, job = self.s, self.s.job
        label = (
            f"job {job.job_id}" + (f" {job.name}" if job.name else "") if job.job_id else f"run {s.run_id}"
        )
        pairs = [
            (v.RUN_ID, s.run_id),
            (v.EXPERIMENT, s.experiment),
            (v.RUN_DIR, s.run_dir),
            (v.WORLD_SIZE, s.world_size),
            (v.JOB_ID, job.job_id),
            (v.JOB_NAME, job.name),
            (v.ARRAY_JOB_ID, job.array_job_id),
            (v.ARRAY_TASK_ID, job.array_task_id),
            (v.USER_NAME, job.user),
            (v.ACCOUNT, job.account),
            (v.PARTITION, job.partition),
            (v.QOS, job.qos),
            (v.CLUSTER, job.cluster),
            (v.SUBMIT_DIR, job.submit_dir),
            (v.SUBMIT_HOST, job.submit_host),
            (v.NODES, ",".join(job.nodes) if job.nodes else None),
            (v.NNODES, job.nnodes),
            (v.NTASKS, job.ntasks),
            (v.CPUS_PER_TASK, job.cpus_per_task),
            (v.GPUS, job.gpus),
            (v.TIME_LIMIT, job.time_limit),
            (v.STATE, job.state),
            (v.EXIT_CODE, job.exit_code),
            (v.ELAPSED, job.elapsed),
            (v.SLURM_START, job.start),
            (v.SLURM_END, job.end),
            (v.RESTART_COUNT, job.restart_count),
            (v.SOURCES, ",".join(job.sources) if job.sources else None),
            (v.EXTRA, job.extra or None),
            (v.PROBLEMS, s.problems or None),
        ]
        taken = {word for word, _ in pairs}
        pairs += _flat(s.totals, taken)
        starts = [r.start_time for r in s.ranks if utc(r.start_time) is not None]
        ends = [r.end_time for r in s.ranks if utc(r.end_time) is not None]
        times = (utc(min(starts)) if starts else None, utc(max(ends)) if ends else None)
        self.node("activity", self.job, [v.JOB], label, _attrs(pairs), times)
        who = self.submitter or self.user
        if who is not None:
            self.doc.wasAssociatedWith(self.job, who)

    def job_script(self) -> None:
        job = self.s.job
        digest = job.script_sha256
        if digest is None and job.script is not None:
            digest = hashlib.sha256(job.script.encode("utf-8", "surrogatepass")).hexdigest()
        if digest is None:
            return
        size = len(job.script.encode("utf-8", "surrogatepass")) if job.script is not None else None
        qn = self.ident("jobscript")
        self.node("entity", qn, [v.JOB_SCRIPT], "job script", _attrs([(v.SHA256, digest), (v.SIZE, size)]))
        self.doc.used(self.job, qn)

    def files(self) -> None:
        self.node(
            "entity",
            self.run_file,
            [PROV["Collection"], v.RUN_FILE],
            schema.RUN_FILE,
            _attrs(
                [
                    (v.PATH, schema.RUN_FILE),
                    (v.FORMAT, schema.RUN_FORMAT),
                    (v.SCHEMA_VERSION, schema.SCHEMA_VERSION),
                ]
            ),
        )
        self.doc.wasGeneratedBy(self.run_file, self.job)
        if self.user is not None:
            self.doc.wasAttributedTo(self.run_file, self.user)

    # -- one rank-attempt -------------------------------------------------------------------------------
    def rank(self, r: RankSummary) -> QualifiedName:
        base = (f"r{r.global_rank:05d}", f"a{r.attempt}")
        where = f"rank {r.global_rank}" + (f" attempt {r.attempt}" if r.attempt else "")
        label = where + ("" if r.status == schema.STATUS_COMPLETED else f" ({r.status})")
        pairs = [
            (v.GLOBAL_RANK, r.global_rank),
            (v.LOCAL_RANK, r.local_rank),
            (v.WORLD_SIZE, self.s.world_size),
            (v.NODE_NAME, r.node),
            (v.PID, r.pid),
            (v.ATTEMPT, r.attempt),
            (v.STATUS, r.status),
            (v.REASON, r.reason),
            (v.FILE, r.file),
            (v.ROWS, r.rows),
            (v.IDENTITY_SOURCE, _meta_text(r.meta.get(schema.A_IDENTITY_SOURCE))),
            (v.PROBLEMS, r.problems or None),
        ]
        taken = {word for word, _ in pairs}
        pairs += _flat(r.totals, taken)
        act_id = self.ident(*base)
        self.node(
            "activity", act_id, [v.RANK_PROCESS], label, _attrs(pairs), (utc(r.start_time), utc(r.end_time))
        )
        self.doc.wasInformedBy(act_id, self.job)
        if r.status != schema.STATUS_MISSING:  # a missing rank left no trace that it ever started
            self.doc.wasStartedBy(act_id, starter=self.job, time=utc(r.start_time))
            self.doc.wasAssociatedWith(act_id, self.software)
            if self.user is not None:
                self.doc.wasAssociatedWith(act_id, self.user)
        contexts = self.contexts(r, base, where, act_id)
        self.environment(r, base, where, act_id)
        self.node_entity(r, act_id)
        self.rank_file(r, base, act_id)
        for series in sorted(r.series, key=lambda x: _sort_key(x.kind, x.context, x.name)):
            self.series(series, r, base, where, contexts.get(series.context, act_id))
        for param in sorted(r.params, key=lambda p: _sort_key(p.context, p.name, p.time)):
            self.param(param, r, base, where, contexts.get(param.context, act_id))
        models, datasets = [], []
        for art in sorted(
            r.artifacts, key=lambda a: _sort_key(a.kind, a.name, a.time, a.step, a.role, a.path)
        ):
            qn = self.artifact(art, r, base, where, contexts.get(art.context, act_id))
            if art.kind == schema.REC_MODEL and art.role == v.ROLE_OUTPUT:
                models.append(qn)
            elif art.kind == schema.REC_DATASET and art.role == v.ROLE_INPUT:
                datasets.append(qn)
        for model in models:
            for data in datasets:
                self.doc.wasDerivedFrom(model, data)
        return act_id

    def contexts(self, r: RankSummary, base: tuple[str, ...], where: str, act_id: QualifiedName) -> dict:
        """One activity per context, informed by its parent context (a ``context`` event's ``parent``) or else
        by the rank; the empty context "" is the rank activity itself (yProv4ML's root context)."""
        parents = _context_parents(r.events)
        spans = {s.name: s for s in r.contexts}
        for child in sorted(parents, key=str):  # a parent nothing was logged in still gets its activity
            if parents[child] not in spans and child in spans:
                spans[parents[child]] = ContextSpan(parents[child], spans[child].start, spans[child].start)
        out: dict[str, QualifiedName] = {"": act_id}
        for span in sorted(spans.values(), key=lambda c: _sort_key(c.start, c.name)):
            if span.name in out:
                continue
            qn = self.ident(*base, "ctx", v.escape_component(span.name))
            pairs = [(v.CONTEXT_NAME, span.name), (v.GLOBAL_RANK, r.global_rank), (v.ATTEMPT, r.attempt)]
            times = (utc(span.start), utc(span.end))
            self.node("activity", qn, [v.CONTEXT], f"{_shown(span.name)} @ {where}", _attrs(pairs), times)
            out[span.name] = qn
        for name, qn in out.items():
            if name != "":
                parent = out.get(parents.get(name, ""), act_id)
                self.doc.wasInformedBy(qn, act_id if parent == qn else parent)
        return out

    def environment(self, r: RankSummary, base: tuple[str, ...], where: str, act_id: QualifiedName) -> None:
        pairs = [(key, _meta_text(r.meta.get(key))) for key in v.ENVIRONMENT_KEYS]
        if all(value is None for _, value in pairs):
            return
        qn = self.ident(*base, "env")
        self.node("entity", qn, [v.ENVIRONMENT], f"environment @ {where}", _attrs(pairs))
        self.doc.used(act_id, qn)

    def node_entity(self, r: RankSummary, act_id: QualifiedName) -> None:
        if r.node is None:
            return
        qn = self.ns[f"node.{v.escape_component(r.node)}"]
        if qn not in self.used_ids:  # one entity per node; its hardware from the first rank that reports it
            hardware = r.meta.get(schema.A_HARDWARE)
            pairs: list[tuple[str, Any]] = [(v.NODE_NAME, r.node)]
            if isinstance(hardware, Mapping):
                pairs += _flat(hardware, {v.NODE_NAME})
            elif hardware is not None:
                pairs.append((schema.A_HARDWARE, _meta_text(hardware)))
            self.node("entity", qn, [v.NODE], r.node, _attrs(pairs))
        self.doc.used(act_id, qn)

    def rank_file(self, r: RankSummary, base: tuple[str, ...], act_id: QualifiedName) -> None:
        if r.file is None:
            return
        qn = self.ident(*base, "file")
        self.node(
            "entity", qn, [v.RANK_FILE], r.file, _attrs([(v.PATH, r.file), (v.FORMAT, schema.RANK_FORMAT)])
        )
        self.doc.wasGeneratedBy(qn, act_id)
        self.doc.wasDerivedFrom(self.run_file, qn)

    def series(self, x: SeriesSummary, r: RankSummary, base: tuple, where: str, gen: QualifiedName) -> None:
        qn = self.ident(
            *base, v.escape_component(x.kind), v.escape_component(x.context), v.escape_component(x.name)
        )
        last = x.last
        nonfinite_last = last is not None and not math.isfinite(last)
        pairs = [
            (v.NAME, x.name),
            (v.CONTEXT_NAME, x.context),
            (v.KIND, x.kind),
            (v.GLOBAL_RANK, x.global_rank),
            (v.ATTEMPT, r.attempt),
            (v.COUNT, x.count),
            (v.FIRST_STEP, x.first_step),
            (v.LAST_STEP, x.last_step),
            (v.MIN, x.min),
            (v.MAX, x.max),
            (v.LAST, None if nonfinite_last else last),
            (v.LAST_NONFINITE, _nonfinite_word(last) if nonfinite_last else None),
            (v.NONFINITE, x.nonfinite),
            (v.FIRST_TIME, utc(x.first_time)),
            (v.LAST_TIME, utc(x.last_time)),
            (v.UNIT, x.unit),
            (v.FILE, schema.RUN_FILE if x.dataset is not None else None),
            (v.DATASET_PATH, x.dataset),
        ]
        series_type = v.SERIES_TYPES.get(x.kind, v.METRIC_SERIES)
        self.node(
            "entity", qn, [series_type], f"{_shown(x.name)} ({_shown(x.context)}) @ {where}", _attrs(pairs)
        )
        self.doc.wasGeneratedBy(qn, gen, utc(x.last_time))
        if self.members:
            self.doc.hadMember(self.run_file, qn)

    def param(self, p: ParamRecord, r: RankSummary, base: tuple, where: str, act_id: QualifiedName) -> None:
        qn = self.ident(*base, "param", v.escape_component(p.context), v.escape_component(p.name))
        value = scalar(p.value)
        nonfinite = isinstance(p.value, float) and not math.isfinite(p.value)
        pairs = [
            (v.NAME, p.name),
            (v.CONTEXT_NAME, p.context),
            (v.GLOBAL_RANK, p.global_rank),
            (v.ATTEMPT, r.attempt),
            (v.TIME, utc(p.time)),
            (v.VALUE_NONFINITE, value if nonfinite else None),
            (v.ROLE, p.role),
        ]
        attrs = _attrs(pairs + _flat(p.attrs, set(), prefix=v.ATTR_PREFIX))
        if value is not None and not nonfinite:
            attrs.insert(0, (PROV_VALUE, value))
        label = f"{_shown(p.name)} = {_short(value)}"
        self.node("entity", qn, [v.PARAMETER], label, attrs)
        if p.role == v.ROLE_OUTPUT:  # yProv4ML's log_param(is_input=False): the context generated it
            self.doc.wasGeneratedBy(qn, act_id, utc(p.time), other_attributes={PROV_ROLE: p.role})
        else:
            self.doc.used(act_id, qn, utc(p.time))

    def artifact(self, a: ArtifactRecord, r: RankSummary, base: tuple, where: str, act: QualifiedName):
        qn = self.ident(*base, v.escape_component(a.kind), v.escape_component(a.name))
        pairs = [
            (v.NAME, a.name),
            (v.KIND, a.kind),
            (v.ROLE, a.role),
            (v.CONTEXT_NAME, a.context),
            (v.GLOBAL_RANK, a.global_rank),
            (v.ATTEMPT, r.attempt),
            (v.STEP, a.step),
            (v.TIME, utc(a.time)),
            (v.PATH, a.path),
            (v.COPY, a.copy),
            (v.SHA256, a.sha256),
            (v.SIZE, a.size),
        ]
        pairs += _flat(a.attrs, set(), prefix=v.ATTR_PREFIX)
        self.node(
            "entity",
            qn,
            [v.ARTIFACT_TYPES.get(a.kind, v.ARTIFACT)],
            f"{_shown(a.name)} @ {where}",
            _attrs(pairs),
        )
        if a.role == v.ROLE_INPUT:
            self.doc.used(act, qn, utc(a.time))
        else:
            self.doc.wasGeneratedBy(qn, act, utc(a.time), other_attributes={PROV_ROLE: a.role})
            if self.user is not None:
                self.doc.wasAttributedTo(qn, self.user)
        return qn
