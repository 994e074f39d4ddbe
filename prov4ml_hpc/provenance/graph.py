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
from prov4ml_hpc.errors import ExportError
from prov4ml_hpc.merge.model import ArtifactRecord, ParamRecord, RankSummary, RunSummary, SeriesSummary
from prov4ml_hpc.provenance import vocab as v

Attrs = list[tuple[QualifiedName, Any]]
_LABEL_VALUE_MAX = 60
# the spelling of a non-finite float parameter in the rank files (rank/api.py json_value writes repr(value))
_NONFINITE_TEXT = {"nan": "nan", "inf": "inf", "-inf": "-inf"}


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
        from prov4ml_hpc.provenance.grouped import GroupBuilder

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


def nonfinite_word(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def scalar(value: Any) -> Any:
    """A value as a PROV literal: bool/int/float/str/datetime kept; numpy scalars unwrapped; a non-finite float
    as "nan"/"inf"/"-inf"; containers as compact sorted JSON text; None stays None (the attribute is omitted)."""
    if value is None or isinstance(value, bool | int | str | dt.datetime):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else nonfinite_word(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, list | tuple | dict | set):
        try:
            return scalar(item())
        except (TypeError, ValueError):
            pass
    return json_text(value)


def param_value(value: Any) -> tuple[Any, str | None]:
    """(prov:value, value_nonfinite) of a parameter: a NaN/inf (a float, or the rank files' "nan"/"inf"/"-inf"
    text for one) has no prov:value, only the word; anything else is ``scalar(value)``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, nonfinite_word(value)
    if isinstance(value, str) and value in _NONFINITE_TEXT:
        return None, _NONFINITE_TEXT[value]
    return scalar(value), None


def attrs(pairs: Iterable[tuple[str, Any]]) -> Attrs:
    """prov4ml attributes from (word, value) pairs, omitting None values."""
    out: Attrs = []
    for word, value in pairs:
        value = scalar(value)
        if value is not None:
            out.append((v.PROV4ML[word], value))
    return out


def flat(mapping: Mapping[str, Any], taken: set[str], prefix: str = "") -> list[tuple[str, Any]]:
    """User-keyed attributes (hardware, totals, artifact attrs) as (word, value); a word already taken is skipped."""
    out = []
    for key in sorted(mapping, key=str):
        word = prefix + v.attribute_word(str(key))
        if word not in taken:
            taken.add(word)
            out.append((word, mapping[key]))
    return out


def meta_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json_text(value)


def shown(name: str | None) -> str:
    """A user name as shown in a label: the empty name as "" so that a label never starts blank."""
    return '""' if name == "" else str(name)


def short_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _LABEL_VALUE_MAX else text[: _LABEL_VALUE_MAX - 3] + "..."


def sort_key(*parts: Any) -> tuple:
    """A total order over values that may be None or of mixed types."""
    return tuple(
        (p is None, str(type(p).__name__), p if isinstance(p, int | float) else str(p)) for p in parts
    )


# ---- what every level has -------------------------------------------------------------------------------
class BaseBuilder:
    """The parts every level shares: namespaces, identifiers, labels, agents, the job, its trigger, run.h5."""

    level = v.LEVEL_RANK

    def __init__(self, summary: RunSummary, members: bool) -> None:
        self.s = summary
        self.members = members
        self.doc = ProvDocument()
        self.doc.add_namespace(v.PROV4ML)
        self.ns = v.run_namespace(summary.run_id)
        self.doc.add_namespace(self.ns)
        self.used_ids: set[QualifiedName] = set()
        self.labels: set[str] = set()
        self.user: QualifiedName | None = None
        self.submitter: QualifiedName | None = None
        self.trigger: QualifiedName | None = None
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

    def label(self, head: str, tail: str = "") -> str:
        """A prov:label of at most 18 UTF-16 units that no other node of the document has."""
        text, n = v.fit_label(head, tail), 1
        while text in self.labels:
            n += 1
            text = v.fit_label(head, f"~{n}{tail}")
        self.labels.add(text)
        return text

    def node(
        self,
        kind: str,
        qn: QualifiedName,
        prov_type: QualifiedName,
        label: tuple[str, str],
        full: str,
        pairs: Attrs,
        times: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
    ) -> None:
        """Add an agent, activity or entity with its one prov:type, a short prov:label (``label`` is its head
        and tail, see :func:`vocab.fit_label`), the long ``full`` label when it differs, and attributes."""
        short = self.label(*label)
        other: Attrs = [(PROV_TYPE, prov_type), (PROV_LABEL, short)]
        if full != short:
            other.append((v.PROV4ML[v.FULL_LABEL], full))
        other += pairs
        self.used_ids.add(qn)
        if kind == "agent":
            self.doc.agent(qn, other)
        elif kind == "activity":
            self.doc.activity(qn, times[0], times[1], other)
        else:
            self.doc.entity(qn, other)

    # -- agents and the job -----------------------------------------------------------------------------
    def agents(self) -> None:
        job = self.s.job
        primary = self.s.user or job.user
        submitter = job.user if job.job_id is not None else None
        roles: dict[str, list[str]] = {}
        if primary is not None:
            roles.setdefault(primary, []).append("user")
        if submitter is not None:
            roles.setdefault(submitter, []).append("submitter")
        for name in sorted(roles):
            qn = self.ident("user", v.escape_component(name))
            pairs = attrs([(v.USER_NAME, name), (v.ROLES, ",".join(roles[name]))])
            self.node("agent", qn, PROV["Person"], (name, ""), name, pairs)
            if name == primary:
                self.user = qn
            if name == submitter:
                self.submitter = qn
        version = self.s.software_version
        name = f"prov4ml-hpc {version}"
        pairs = attrs([(v.NAME, "prov4ml-hpc"), (v.VERSION, version)])
        self.node("agent", self.software, PROV["SoftwareAgent"], (name, ""), name, pairs)

    def job_activity(self, extra: list[tuple[str, Any]] = ()) -> None:
        s, job = self.s, self.s.job
        if job.job_id:
            full = f"job {job.job_id}" + (f" {job.name}" if job.name else "")
            head = f"job {job.job_id}"
        else:
            full = head = f"run {s.run_id}"
        pairs = [
            (v.RUN_ID, s.run_id),
            (v.EXPERIMENT, s.experiment),
            (v.RUN_DIR, s.run_dir),
            (v.WORLD_SIZE, s.world_size),
            (v.GRAPH_LEVEL, self.level),
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
            *extra,
        ]
        taken = {word for word, _ in pairs}
        pairs += flat(s.totals, taken)
        starts = [r.start_time for r in s.ranks if utc(r.start_time) is not None]
        ends = [r.end_time for r in s.ranks if utc(r.end_time) is not None]
        times = (utc(min(starts)) if starts else None, utc(max(ends)) if ends else None)
        self.node("activity", self.job, v.JOB, (head, ""), full, attrs(pairs), times)
        who = self.submitter or self.user
        if who is not None:
            self.doc.wasAssociatedWith(self.job, who)

    def job_trigger(self) -> None:
        """The entity that started the ranks: the SLURM job script when known, else the command line of the
        ranks (``prov:trigger`` of every wasStartedBy: yProv, yProv Explorer and HPCI's validator need one)."""
        job = self.s.job
        digest = job.script_sha256
        if digest is None and job.script is not None:
            digest = hashlib.sha256(job.script.encode("utf-8", "surrogatepass")).hexdigest()
        if digest is not None:
            size = len(job.script.encode("utf-8", "surrogatepass")) if job.script is not None else None
            qn = self.ident("jobscript")
            pairs = attrs([(v.SHA256, digest), (v.SIZE, size)])
            self.node("entity", qn, v.JOB_SCRIPT, ("job script", ""), "job script", pairs)
            self.doc.used(self.job, qn)
            self.trigger = qn
            return
        main = next(
            (r for r in sorted(self.s.ranks, key=lambda r: (-r.attempt, r.global_rank)) if r.meta), None
        )
        argv = main.meta.get(schema.A_ARGV) if main is not None else None
        line = " ".join(map(str, argv)) if isinstance(argv, list) else meta_text(argv)
        cwd = main.meta.get(schema.A_CWD) if main is not None else None
        qn = self.ident("command")
        full = f"command line: {line}" if line else "command line (not recorded)"
        pairs = attrs([(v.ARGV, meta_text(argv)), (v.COMMAND_LINE, line), (v.CWD, meta_text(cwd))])
        self.node("entity", qn, v.COMMAND, ("command line", ""), full, pairs)
        self.trigger = qn

    def started(
        self, activity: QualifiedName, time: dt.datetime | None, starter: QualifiedName | None
    ) -> None:
        self.doc.wasStartedBy(activity, trigger=self.trigger, starter=starter, time=time)

    def files(self) -> None:
        pairs = attrs(
            [
                (v.PATH, schema.RUN_FILE),
                (v.FORMAT, schema.RUN_FORMAT),
                (v.SCHEMA_VERSION, schema.SCHEMA_VERSION),
            ]
        )
        self.node("entity", self.run_file, v.RUN_FILE, (schema.RUN_FILE, ""), schema.RUN_FILE, pairs)
        self.doc.wasGeneratedBy(self.run_file, self.job)
        if self.user is not None:
            self.doc.wasAttributedTo(self.run_file, self.user)

    def node_entity(self, host: str, hardware: Any, extra: list[tuple[str, Any]] = ()) -> QualifiedName:
        """The one entity of a host (shared by its ranks); its hardware from the first rank that reports it."""
        qn = self.ns[f"node.{v.escape_component(host)}"]
        if qn not in self.used_ids:
            pairs: list[tuple[str, Any]] = [(v.NODE_NAME, host), *extra]
            if isinstance(hardware, Mapping):
                pairs += flat(hardware, {word for word, _ in pairs})
            elif hardware is not None:
                pairs.append((schema.A_HARDWARE, meta_text(hardware)))
            self.node("entity", qn, v.NODE, (host, ""), host, attrs(pairs))
        return qn

    def environment_entity(self, meta: Mapping[str, Any], parts: tuple[str, ...], where: str, tail: str):
        pairs = [(key, meta_text(meta.get(key))) for key in v.ENVIRONMENT_KEYS]
        if all(value is None for _, value in pairs):
            return None
        qn = self.ident(*parts, "env")
        self.node("entity", qn, v.ENVIRONMENT, ("env", tail), f"environment @ {where}", attrs(pairs))
        return qn

    def start(self, extra: list[tuple[str, Any]] = ()) -> None:
        """Agents, the job activity (with ``extra`` attributes), its trigger and run.h5, in this order."""
        self.agents()
        self.job_activity(extra)
        self.job_trigger()
        self.files()


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
            self.param(param, r, base, tail, act_id)
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
        out: dict[str, QualifiedName] = {}
        for span in sorted(r.contexts, key=lambda c: sort_key(c.start, c.name)):
            if span.name in out:
                continue
            qn = self.ident(*base, "ctx", v.escape_component(span.name))
            pairs = attrs(
                [(v.CONTEXT_NAME, span.name), (v.GLOBAL_RANK, r.global_rank), (v.ATTEMPT, r.attempt)]
            )
            times = (utc(span.start), utc(span.end))
            full = f"{shown(span.name)} @ {where}"
            self.node("activity", qn, v.CONTEXT, (shown(span.name), tail), full, pairs, times)
            self.doc.wasInformedBy(qn, act_id)
            out[span.name] = qn
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
            ]
        )
        if value is not None:
            pairs.insert(0, (PROV_VALUE, value))
        shown_value = short_value(word if word is not None else value)
        full = f"{shown(p.name)} = {shown_value}"
        self.node("entity", qn, v.PARAMETER, (f"{shown(p.name)}={shown_value}", tail), full, pairs)
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


def series_pairs(x: SeriesSummary, attempt: int) -> list[tuple[str, Any]]:
    last = x.last
    nonfinite_last = last is not None and not math.isfinite(last)
    return [
        (v.NAME, x.name),
        (v.CONTEXT_NAME, x.context),
        (v.KIND, x.kind),
        (v.GLOBAL_RANK, x.global_rank),
        (v.ATTEMPT, attempt),
        (v.COUNT, x.count),
        (v.FIRST_STEP, x.first_step),
        (v.LAST_STEP, x.last_step),
        (v.MIN, x.min),
        (v.MAX, x.max),
        (v.LAST, None if nonfinite_last else last),
        (v.LAST_NONFINITE, nonfinite_word(last) if nonfinite_last else None),
        (v.NONFINITE, x.nonfinite),
        (v.FIRST_TIME, utc(x.first_time)),
        (v.LAST_TIME, utc(x.last_time)),
        (v.UNIT, x.unit),
        (v.FILE, schema.RUN_FILE if x.dataset is not None else None),
        (v.DATASET_PATH, x.dataset),
    ]


def artifact_pairs(a: ArtifactRecord, attempt: int) -> list[tuple[str, Any]]:
    return [
        (v.NAME, a.name),
        (v.KIND, a.kind),
        (v.ROLE, a.role),
        (v.CONTEXT_NAME, a.context),
        (v.GLOBAL_RANK, a.global_rank),
        (v.ATTEMPT, attempt),
        (v.STEP, a.step),
        (v.TIME, utc(a.time)),
        (v.PATH, a.path),
        (v.COPY, a.copy),
        (v.SHA256, a.sha256),
        (v.SIZE, a.size),
    ]
