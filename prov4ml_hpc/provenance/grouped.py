"""The node- and job-level PROV graphs: ranks grouped (by node and attempt, or by attempt), one entity per series
of each group with statistics over its ranks (the per-rank values stay in run.h5).

Built for jobs too big for a rank-level graph (yProv's converter is superlinear in records).  The size grows with
nodes x series (node level) or series alone (job level, plus one entity per node), never with the number of
ranks.  See docs/provenance.md, "Detail levels".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from prov.constants import PROV_ROLE, PROV_VALUE
from prov.identifier import QualifiedName
from prov.model import ProvDocument

from prov4ml_hpc import schema
from prov4ml_hpc.merge import runfile
from prov4ml_hpc.merge.model import ArtifactRecord, ParamRecord, RankSummary, SeriesSummary
from prov4ml_hpc.provenance import vocab as v
from prov4ml_hpc.provenance.base import (
    BaseBuilder,
    artifact_pairs,
    attrs,
    context_parents,
    flat,
    json_text,
    nonfinite_word,
    param_value,
    short_value,
    shown,
    sort_key,
    utc,
)


def status_summary(ranks: Iterable[RankSummary]) -> tuple[dict[str, int], dict[str, str]]:
    """({status: count}, {status: rank ranges}) over rank-attempts; the second only for statuses not completed."""
    counts: dict[str, int] = {}
    bad: dict[str, list[int]] = {}
    for r in ranks:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status != schema.STATUS_COMPLETED:
            bad.setdefault(r.status, []).append(r.global_rank)
    return dict(sorted(counts.items())), {k: v.rank_ranges(g) for k, g in sorted(bad.items())}


class GroupBuilder(BaseBuilder):
    """``level`` "node": one activity per node and attempt; "job": the job itself, per attempt."""

    def __init__(self, summary, members: bool, level: str) -> None:
        super().__init__(summary, members)
        self.level = level

    def build(self) -> ProvDocument:
        ranks = sorted(self.s.ranks, key=lambda r: (r.attempt, r.global_rank))
        counts, bad = status_summary(ranks)
        extra = [
            (v.NRANKS, len({r.global_rank for r in ranks})),
            (v.STATUS_COUNTS, json_text(counts)),
            (v.RANKS_NOT_COMPLETED, json_text(bad) if bad else None),
        ]
        self.start(extra)
        if any(r.status != schema.STATUS_MISSING for r in ranks):
            start = [r.start_time for r in ranks if utc(r.start_time) is not None]
            if self.level == v.LEVEL_JOB:
                self.started(self.job, utc(min(start)) if start else None, None)
        self.nodes(ranks)
        groups: dict[tuple, list[RankSummary]] = {}
        for r in ranks:
            key = (r.attempt, r.node) if self.level == v.LEVEL_NODE else (r.attempt,)
            groups.setdefault(key, []).append(r)
        previous: dict[Any, QualifiedName] = {}
        for key in sorted(groups, key=lambda k: sort_key(*k)):
            act = self.group(key, groups[key])
            later = key[1:]
            if self.level == v.LEVEL_NODE and later in previous:
                self.doc.wasInformedBy(act, previous[later])  # requeue: attempt k follows attempt k-1
            previous[later] = act
        return self.doc

    def nodes(self, ranks: list[RankSummary]) -> None:
        by_host: dict[str, list[RankSummary]] = {}
        for r in ranks:
            if r.node is not None:
                by_host.setdefault(r.node, []).append(r)
        self.node_ids: dict[str, QualifiedName] = {}
        for host in sorted(by_host):
            rs = by_host[host]
            hardware = next(
                (r.meta.get(schema.A_HARDWARE) for r in rs if r.meta.get(schema.A_HARDWARE)), None
            )
            ids = [r.global_rank for r in rs]
            extra = [(v.RANKS, v.rank_ranges(ids)), (v.NRANKS, len(set(ids)))]
            qn = self.node_entity(host, hardware, extra)
            self.node_ids[host] = qn
            if self.level == v.LEVEL_JOB:
                self.doc.used(self.job, qn)

    # -- one group ----------------------------------------------------------------------------------------
    def group(self, key: tuple, ranks: list[RankSummary]) -> QualifiedName:
        attempt = key[0]
        alive = [r for r in ranks if r.status != schema.STATUS_MISSING]
        if self.level == v.LEVEL_NODE:
            host = key[1]
            name = host if host is not None else "unknown node"
            parts: tuple[str, ...] = ("node", v.escape_component(host), f"a{attempt}")
            where = name + (f" attempt {attempt}" if attempt else "")
            tail = "@" + v.fit_label(name, "", 9) + (f"a{attempt}" if attempt else "")
            act = self.ident(*parts)
            counts, bad = status_summary(ranks)
            pairs = [
                (v.NODE_NAME, host),
                (v.ATTEMPT, attempt),
                (v.RANKS, v.rank_ranges([r.global_rank for r in ranks])),
                (v.NRANKS, len(ranks)),
                (v.STATUS_COUNTS, json_text(counts)),
                (v.RANKS_NOT_COMPLETED, json_text(bad) if bad else None),
            ]
            starts = [r.start_time for r in ranks if utc(r.start_time) is not None]
            ends = [r.end_time for r in ranks if utc(r.end_time) is not None]
            times = (utc(min(starts)) if starts else None, utc(max(ends)) if ends else None)
            full = f"{len(ranks)} ranks on {where}"
            head = name + (f" a{attempt}" if attempt else "")
            self.node("activity", act, v.NODE_PROCESS, (head, ""), full, attrs(pairs), times)
            self.doc.wasInformedBy(act, self.job)
            if alive:
                self.started(act, times[0], self.job)
                self.doc.wasAssociatedWith(act, self.software)
                if self.user is not None:
                    self.doc.wasAssociatedWith(act, self.user)
            if host in self.node_ids:
                self.doc.used(act, self.node_ids[host])
        else:
            act = self.job
            parts = (f"a{attempt}",)
            where = f"attempt {attempt}" if len(self.s.attempts) > 1 else "the job"
            tail = f" a{attempt}" if attempt else ""
            if attempt == min(self.s.attempts):
                self.doc.wasAssociatedWith(act, self.software)
        main = next((r for r in ranks if r.meta), None)
        if main is not None:
            env = self.environment_entity(main.meta, parts, f"rank {main.global_rank}, {where}", tail)
            if env is not None:
                self.doc.used(act, env)
        contexts = self.contexts(ranks, parts, where, tail, act, attempt)
        series: dict[tuple, list[SeriesSummary]] = {}
        params: dict[tuple, list[ParamRecord]] = {}
        arts: dict[tuple, list[ArtifactRecord]] = {}
        for r in ranks:
            for x in r.series:
                series.setdefault((x.kind, x.context, x.name), []).append(x)
            for p in r.params:
                params.setdefault((p.context, p.name), []).append(p)
            for a in r.artifacts:
                arts.setdefault((a.kind, a.role, a.name, a.context), []).append(a)
        for k in sorted(series, key=lambda k: sort_key(*k)):
            self.series(series[k], parts, where, tail, contexts.get(k[1], act), attempt)
        for k in sorted(params, key=lambda k: sort_key(*k)):
            self.param(params[k], parts, tail, contexts.get(k[0], act), attempt)
        models, datasets = [], []
        for k in sorted(arts, key=lambda k: sort_key(*k)):
            qn = self.artifact(arts[k], parts, where, tail, contexts.get(k[3], act), attempt)
            if k[0] == schema.REC_MODEL and k[1] == v.ROLE_OUTPUT:
                models.append(qn)
            elif k[0] == schema.REC_DATASET and k[1] == v.ROLE_INPUT:
                datasets.append(qn)
        for model in models:
            for data in datasets:
                self.doc.wasDerivedFrom(model, data)
        return act

    def contexts(self, ranks, parts, where, tail, act, attempt) -> dict[str, QualifiedName]:
        spans: dict[str, list[float]] = {}
        parents: dict[str, str] = {}
        for r in ranks:
            for c in r.contexts:
                got = spans.setdefault(c.name, [c.start, c.end])
                got[0], got[1] = min(got[0], c.start), max(got[1], c.end)
            for child, parent in context_parents(r.events).items():
                parents.setdefault(child, parent)
        for child in sorted(parents, key=str):  # a parent nothing was logged in still gets its activity
            if parents[child] not in spans and child in spans:
                spans[parents[child]] = [spans[child][0], spans[child][0]]
        spans.pop("", None)  # the root context is the group's activity itself
        out: dict[str, QualifiedName] = {"": act}
        for name in sorted(spans, key=lambda n: sort_key(spans[n][0], n)):
            qn = self.ident(*parts, "ctx", v.escape_component(name))
            ids = [r.global_rank for r in ranks if any(c.name == name for c in r.contexts)]
            pairs = attrs(
                [
                    (v.CONTEXT_NAME, name),
                    (v.ATTEMPT, attempt),
                    (v.RANKS, v.rank_ranges(ids)),
                    (v.NRANKS, len(ids)),
                ]
            )
            times = (utc(spans[name][0]), utc(spans[name][1]))
            self.node(
                "activity", qn, v.CONTEXT, (shown(name), tail), f"{shown(name)} @ {where}", pairs, times
            )
            out[name] = qn
        for name, qn in out.items():
            if name != "":
                parent = out.get(parents.get(name, ""), act)
                self.doc.wasInformedBy(qn, act if parent == qn else parent)
        return out

    def series(self, xs: list[SeriesSummary], parts, where, tail, gen, attempt) -> None:
        x0 = xs[0]
        qn = self.ident(
            *parts, v.escape_component(x0.kind), v.escape_component(x0.context), v.escape_component(x0.name)
        )
        finite = [x.min for x in xs if x.min is not None], [x.max for x in xs if x.max is not None]
        lasts = [x.last for x in xs if x.last is not None and math.isfinite(x.last)]
        latest = max(
            xs, key=lambda x: (x.last_time if x.last_time is not None else -math.inf, -x.global_rank)
        )
        last = latest.last
        nonfinite_last = last is not None and not math.isfinite(last)
        first_times = [x.first_time for x in xs if x.first_time is not None]
        last_times = [x.last_time for x in xs if x.last_time is not None]
        steps0 = [x.first_step for x in xs if x.first_step is not None]
        steps1 = [x.last_step for x in xs if x.last_step is not None]
        dataset = next((x.dataset for x in xs if x.dataset), None)
        pairs = [
            (v.NAME, x0.name),
            (v.CONTEXT_NAME, x0.context),
            (v.KIND, x0.kind),
            (v.ATTEMPT, attempt),
            (v.RANKS, v.rank_ranges([x.global_rank for x in xs])),
            (v.NRANKS, len(xs)),
            (v.COUNT, sum(x.count for x in xs)),
            (v.COUNT_MIN, min(x.count for x in xs)),
            (v.COUNT_MAX, max(x.count for x in xs)),
            (v.FIRST_STEP, min(steps0) if steps0 else None),
            (v.LAST_STEP, max(steps1) if steps1 else None),
            (v.MIN, min(finite[0]) if finite[0] else None),
            (v.MAX, max(finite[1]) if finite[1] else None),
            (v.LAST, None if nonfinite_last else last),
            (v.LAST_NONFINITE, nonfinite_word(last) if nonfinite_last else None),
            (v.LAST_MIN, min(lasts) if lasts else None),
            (v.LAST_MAX, max(lasts) if lasts else None),
            (v.LAST_MEAN, math.fsum(lasts) / len(lasts) if lasts else None),
            (v.NONFINITE, sum(x.nonfinite for x in xs)),
            (v.FIRST_TIME, utc(min(first_times)) if first_times else None),
            (v.LAST_TIME, utc(max(last_times)) if last_times else None),
            (v.UNIT, next((x.unit for x in xs if x.unit), None)),
            (v.FILE, schema.RUN_FILE if dataset is not None else None),
            (v.SERIES_GROUP, dataset.rsplit("/", 1)[0] if dataset else None),
            (
                v.AGGREGATES,
                runfile.aggregate_path(x0.context, x0.name, attempt)
                if dataset and x0.kind == schema.KIND_METRIC
                else None,
            ),
        ]
        full = f"{shown(x0.name)} ({shown(x0.context)}) over {len(xs)} ranks, {where}"
        kind = v.SERIES_TYPES.get(x0.kind, v.METRIC_SERIES)
        self.node("entity", qn, kind, (shown(x0.name), tail), full, attrs(pairs))
        self.doc.wasGeneratedBy(qn, gen, utc(max(last_times)) if last_times else None)
        if self.members:
            self.doc.hadMember(self.run_file, qn)

    def param(self, ps: list[ParamRecord], parts, tail, act, attempt) -> None:
        p0 = ps[0]
        qn = self.ident(*parts, "param", v.escape_component(p0.context), v.escape_component(p0.name))
        distinct: list[tuple[Any, str | None]] = []
        for p in sorted(ps, key=lambda p: (p.global_rank, p.time)):
            got = param_value(p.value)
            if got not in distinct:
                distinct.append(got)
        times = [p.time for p in ps if p.time is not None]
        pairs = [
            (v.NAME, p0.name),
            (v.CONTEXT_NAME, p0.context),
            (v.ATTEMPT, attempt),
            (v.RANKS, v.rank_ranges([p.global_rank for p in ps])),
            (v.NRANKS, len({p.global_rank for p in ps})),
            (v.TIME, utc(min(times)) if times else None),
        ]
        out = attrs(pairs)
        if len(distinct) == 1:
            value, word = distinct[0]
            if word is not None:
                out.append((v.PROV4ML[v.VALUE_NONFINITE], word))
            elif value is not None:
                out.insert(0, (PROV_VALUE, value))
            text = short_value(word if word is not None else value)
        else:
            listed = [w if w is not None else val for val, w in distinct[: v.MAX_LISTED]]
            out += attrs([(v.DISTINCT_VALUES, len(distinct)), (v.VALUES, json.dumps(listed, default=str))])
            text = f"({len(distinct)} values)"
        full = f"{shown(p0.name)} = {text}"
        self.node("entity", qn, v.PARAMETER, (f"{shown(p0.name)}={text}", tail), full, out)
        when = utc(min(times)) if times else None
        if all(p.role == v.ROLE_OUTPUT for p in ps):  # yProv4ML's log_param(is_input=False)
            self.doc.wasGeneratedBy(qn, act, when, other_attributes={PROV_ROLE: v.ROLE_OUTPUT})
        else:
            self.doc.used(act, qn, when)

    def artifact(self, arts: list[ArtifactRecord], parts, where, tail, act, attempt):
        a0 = arts[0]
        qn = self.ident(*parts, v.escape_component(a0.kind), v.escape_component(a0.name))
        files = {(a.path, a.copy, a.sha256) for a in arts}
        ids = [a.global_rank for a in arts]
        if len(files) == 1:
            pairs = [(k, val) for k, val in artifact_pairs(a0, attempt) if k != v.GLOBAL_RANK]
            pairs += flat(a0.attrs, set(), prefix=v.ATTR_PREFIX)
        else:
            times = [a.time for a in arts if a.time is not None]
            pairs = [
                (v.NAME, a0.name),
                (v.KIND, a0.kind),
                (v.ROLE, a0.role),
                (v.CONTEXT_NAME, a0.context),
                (v.ATTEMPT, attempt),
                (v.TIME, utc(max(times)) if times else None),
                (v.DISTINCT_VALUES, len(files)),
            ]
        pairs += [(v.RANKS, v.rank_ranges(ids)), (v.NRANKS, len(set(ids)))]
        kind = v.ARTIFACT_TYPES.get(a0.kind, v.ARTIFACT)
        full = f"{shown(a0.name)} ({len(files)} file{'s' if len(files) > 1 else ''}), {where}"
        self.node("entity", qn, kind, (shown(a0.name), tail), full, attrs(pairs))
        when = utc(max(a.time for a in arts)) if all(a.time is not None for a in arts) else None
        if a0.role == v.ROLE_INPUT:
            self.doc.used(act, qn, when)
        else:
            self.doc.wasGeneratedBy(qn, act, when, other_attributes={PROV_ROLE: a0.role})
            if self.user is not None:
                self.doc.wasAttributedTo(qn, self.user)
        return qn


__all__ = ["GroupBuilder", "status_summary"]
