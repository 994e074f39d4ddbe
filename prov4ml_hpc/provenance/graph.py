"""Build the ONE flat W3C PROV document of a job from its merged RunSummary (pure: no I/O, no clock, no randomness).

Three detail levels (docs/provenance.md, "Detail levels"): ``rank`` (one activity per rank-attempt, one entity
per series of each rank: built here), ``node`` and ``job`` (ranks grouped by node or all together, one entity
per series across the group: :mod:`prov4ml_hpc.provenance.grouped`); ``auto`` picks the most detailed level
whose graph stays within ``vocab.AUTO_RECORDS`` records.  Every node has one ``prov:type`` and a short
``prov:label`` (at most 18 UTF-16 units, distinct in the document); relations are only wasGeneratedBy, used,
wasInformedBy, wasAssociatedWith, wasAttributedTo, wasDerivedFrom, wasStartedBy (always with a trigger) and
hadMember.  The size grows with ranks x series, never with the number of logged values.
"""

from __future__ import annotations

from typing import Any

from prov.constants import PROV_ROLE, PROV_VALUE
from prov.identifier import QualifiedName
from prov.model import ProvDocument

from prov4ml_hpc import schema
from prov4ml_hpc.errors import ExportError
from prov4ml_hpc.merge.model import (
    ArtifactRecord,
    ContextSpan,
    ParamRecord,
    RankSummary,
    RunSummary,
    SeriesSummary,
)
from prov4ml_hpc.provenance import vocab as v
from prov4ml_hpc.provenance.base import (
    BaseBuilder,
    artifact_pairs,
    attrs,
    context_parents,
    flat,
    gc_paused,
    meta_text,
    param_value,
    series_pairs,
    short_value,
    shown,
    sort_key,
    utc,
)
from prov4ml_hpc.provenance.grouped import GroupBuilder


def build_document(summary: RunSummary, *, members: bool = False, level: str = v.LEVEL_AUTO) -> ProvDocument:
    """Return the PROV document of a run.

    Args:
        summary: The merged run, as the merge produces it.
        members: Also state ``hadMember(run.h5, series)`` for every series entity: one more relation per series,
            all on one hub node; off by default (each series already names its file and dataset).
        level: ``rank``, ``node``, ``job`` or ``auto`` (see :func:`choose_level`).

    Returns:
        A flat ProvDocument (no bundles); the same summary and level always give the same document and the same
        serialization, byte for byte.

    Raises:
        ExportError: ``level`` is not one of ``vocab.LEVELS``.
    """
    chosen = choose_level(summary, members=members) if level == v.LEVEL_AUTO else level
    if chosen not in v.LEVELS:
        raise ExportError(f"unknown graph level {level!r}; expected one of: {', '.join(v.LEVELS)}")
    with gc_paused():
        if chosen == v.LEVEL_RANK:
            return RankBuilder(summary, members).build()
        return GroupBuilder(summary, members, chosen).build()


def estimate_records(summary: RunSummary, level: str, *, members: bool = False) -> int:
    """About how many records (nodes + relations) ``build_document`` gives at ``level`` (an upper bound).

    Counted from the summary without building anything, so that ``auto`` costs nothing for a big job.
    """
    base = 12  # agents, job, trigger, run.h5 and their relations
    if level == v.LEVEL_RANK:
        total = base
        for r in summary.ranks:
            total += 12 + 2 * len(r.contexts) + len(r.series) * (2 + members) + 2 * len(r.params)
            total += 3 * len(r.artifacts)
        return total
    groups: dict[Any, RankSummary] = {}
    keys: dict[Any, set] = {}
    for r in summary.ranks:
        g = (r.attempt, r.node) if level == v.LEVEL_NODE else r.attempt
        groups.setdefault(g, r)
        k = keys.setdefault(g, set())
        k.update(("s", x.kind, x.context, x.name) for x in r.series)
        k.update(("p", p.context, p.name) for p in r.params)
        k.update(("a", a.kind, a.role, a.name) for a in r.artifacts)
        k.update(("c", c.name) for c in r.contexts)
    nodes = {r.node for r in summary.ranks}
    total = base + 2 * len(nodes) + 8 * len(groups)
    return total + sum(len(k) * (2 + members) for k in keys.values())


def choose_level(summary: RunSummary, *, members: bool = False, budget: int = v.AUTO_RECORDS) -> str:
    """The level ``auto`` means: ``rank`` if its graph stays within ``budget`` records, else ``node``, else ``job``."""
    for level in (v.LEVEL_RANK, v.LEVEL_NODE):
        if estimate_records(summary, level, members=members) <= budget:
            return level
    return v.LEVEL_JOB


# ---- the rank level -------------------------------------------------------------------------------------
class RankBuilder(BaseBuilder):
    """One activity per rank-attempt and one entity per series, parameter and artifact of each."""

    level = v.LEVEL_RANK

    def build(self) -> ProvDocument:
        self.start()
        last_attempt: dict[int, QualifiedName] = {}
        for rank in sorted(self.s.ranks, key=lambda r: (r.attempt, r.global_rank)):
            act = self.rank(rank)
            previous = last_attempt.get(rank.global_rank)
            if previous is not None:
                self.doc.wasInformedBy(act, previous)  # requeue: attempt k follows attempt k-1
            last_attempt[rank.global_rank] = act
        return self.doc

    def rank(self, r: RankSummary) -> QualifiedName:
        base = (f"r{r.global_rank:05d}", f"a{r.attempt}")
        where = f"rank {r.global_rank}" + (f" attempt {r.attempt}" if r.attempt else "")
        tail = f"@r{r.global_rank}" + (f"a{r.attempt}" if r.attempt else "")
        full = where + ("" if r.status == schema.STATUS_COMPLETED else f" ({r.status})")
        head = f"rank {r.global_rank}" + (f" a{r.attempt}" if r.attempt else "")
        head += "" if r.status == schema.STATUS_COMPLETED else f" {r.status}"
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
            (v.IDENTITY_SOURCE, meta_text(r.meta.get(schema.A_IDENTITY_SOURCE))),
            (v.PROBLEMS, r.problems or None),
        ]
        taken = {word for word, _ in pairs}
        pairs += flat(r.totals, taken)
        act_id = self.ident(*base)
        times = (utc(r.start_time), utc(r.end_time))
        self.node("activity", act_id, v.RANK_PROCESS, (head, ""), full, attrs(pairs), times)
        self.doc.wasInformedBy(act_id, self.job)
        if r.status != schema.STATUS_MISSING:  # a missing rank left no trace that it ever started
            self.started(act_id, utc(r.start_time), self.job)
            self.doc.wasAssociatedWith(act_id, self.software)
            if self.user is not None:
                self.doc.wasAssociatedWith(act_id, self.user)
        contexts = self.contexts(r, base, where, tail, act_id)
        env = self.environment_entity(r.meta, base, where, tail)
        if env is not None:
            self.doc.used(act_id, env)
        if r.node is not None:
            self.doc.used(act_id, self.node_entity(r.node, r.meta.get(schema.A_HARDWARE)))
        self.rank_file(r, base, act_id)
        for series in sorted(r.series, key=lambda x: sort_key(x.kind, x.context, x.name)):
            self.series(series, r, base, where, tail, contexts.get(series.context, act_id))
        for param in sorted(r.params, key=lambda p: sort_key(p.context, p.name, p.time)):
            self.param(param, r, base, tail, contexts.get(param.context, act_id))
        models, datasets = [], []
        for art in sorted(
            r.artifacts, key=lambda a: sort_key(a.kind, a.name, a.time, a.step, a.role, a.path)
        ):
            qn = self.artifact(art, r, base, where, tail, contexts.get(art.context, act_id))
            if art.kind == schema.REC_MODEL and art.role == v.ROLE_OUTPUT:
                models.append(qn)
            elif art.kind == schema.REC_DATASET and art.role == v.ROLE_INPUT:
                datasets.append(qn)
        for model in models:
            for data in datasets:
                self.doc.wasDerivedFrom(model, data)
        return act_id

    def contexts(self, r: RankSummary, base: tuple, where: str, tail: str, act_id: QualifiedName) -> dict:
        """One activity per context, informed by its parent context (a ``context`` event's ``parent``) or else
        by the rank; the empty context "" is the rank activity itself (yProv4ML's root context)."""
        parents = context_parents(r.events)
        spans = {c.name: c for c in r.contexts}
        for child in sorted(parents, key=str):  # a parent nothing was logged in still gets its activity
            if parents[child] not in spans and child in spans:
                spans[parents[child]] = ContextSpan(parents[child], spans[child].start, spans[child].start)
        out: dict[str, QualifiedName] = {"": act_id}
        for span in sorted(spans.values(), key=lambda c: sort_key(c.start, c.name)):
            if span.name in out:
                continue
            qn = self.ident(*base, "ctx", v.escape_component(span.name))
            pairs = attrs(
                [(v.CONTEXT_NAME, span.name), (v.GLOBAL_RANK, r.global_rank), (v.ATTEMPT, r.attempt)]
            )
            times = (utc(span.start), utc(span.end))
            full = f"{shown(span.name)} @ {where}"
            self.node("activity", qn, v.CONTEXT, (shown(span.name), tail), full, pairs, times)
            out[span.name] = qn
        for name, qn in out.items():
            if name != "":
                parent = out.get(parents.get(name, ""), act_id)
                self.doc.wasInformedBy(qn, act_id if parent == qn else parent)
        return out

    def rank_file(self, r: RankSummary, base: tuple[str, ...], act_id: QualifiedName) -> None:
        if r.file is None:
            return
        qn = self.ident(*base, "file")
        name = r.file.rsplit("/", 1)[-1]
        pairs = attrs([(v.PATH, r.file), (v.FORMAT, schema.RANK_FORMAT)])
        self.node("entity", qn, v.RANK_FILE, (name, ""), r.file, pairs)
        self.doc.wasGeneratedBy(qn, act_id)
        self.doc.wasDerivedFrom(self.run_file, qn)

    def series(self, x: SeriesSummary, r: RankSummary, base: tuple, where: str, tail: str, gen) -> None:
        qn = self.ident(
            *base, v.escape_component(x.kind), v.escape_component(x.context), v.escape_component(x.name)
        )
        self.node(
            "entity",
            qn,
            v.SERIES_TYPES.get(x.kind, v.METRIC_SERIES),
            (shown(x.name), tail),
            f"{shown(x.name)} ({shown(x.context)}) @ {where}",
            attrs(series_pairs(x, r.attempt)),
        )
        self.doc.wasGeneratedBy(qn, gen, utc(x.last_time))
        if self.members:
            self.doc.hadMember(self.run_file, qn)

    def param(self, p: ParamRecord, r: RankSummary, base: tuple, tail: str, act_id: QualifiedName) -> None:
        qn = self.ident(*base, "param", v.escape_component(p.context), v.escape_component(p.name))
        value, word = param_value(p.value)
        pairs = attrs(
            [
                (v.NAME, p.name),
                (v.CONTEXT_NAME, p.context),
                (v.GLOBAL_RANK, p.global_rank),
                (v.ATTEMPT, r.attempt),
                (v.TIME, utc(p.time)),
                (v.VALUE_NONFINITE, word),
                (v.ROLE, p.role),
            ]
            + flat(p.attrs, set(), prefix=v.ATTR_PREFIX)
        )
        if value is not None:
            pairs.insert(0, (PROV_VALUE, value))
        shown_value = short_value(word if word is not None else value)
        full = f"{shown(p.name)} = {shown_value}"
        self.node("entity", qn, v.PARAMETER, (f"{shown(p.name)}={shown_value}", tail), full, pairs)
        if p.role == v.ROLE_OUTPUT:  # yProv4ML's log_param(is_input=False): the context generated it
            self.doc.wasGeneratedBy(qn, act_id, utc(p.time), other_attributes={PROV_ROLE: p.role})
        else:
            self.doc.used(act_id, qn, utc(p.time))

    def artifact(self, a: ArtifactRecord, r: RankSummary, base: tuple, where: str, tail: str, act):
        qn = self.ident(*base, v.escape_component(a.kind), v.escape_component(a.name))
        pairs = artifact_pairs(a, r.attempt)
        pairs += flat(a.attrs, set(), prefix=v.ATTR_PREFIX)
        kind = v.ARTIFACT_TYPES.get(a.kind, v.ARTIFACT)
        self.node("entity", qn, kind, (shown(a.name), tail), f"{shown(a.name)} @ {where}", attrs(pairs))
        if a.role == v.ROLE_INPUT:
            self.doc.used(act, qn, utc(a.time))
        else:
            self.doc.wasGeneratedBy(qn, act, utc(a.time), other_attributes={PROV_ROLE: a.role})
            if self.user is not None:
                self.doc.wasAttributedTo(qn, self.user)
        return qn


__all__ = ["BaseBuilder", "RankBuilder", "build_document", "choose_level", "estimate_records", "gc_paused"]
