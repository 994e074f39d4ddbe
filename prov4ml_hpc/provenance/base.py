"""What every detail level of the PROV graph shares: literal values, identifiers, short labels, the agents, the job,
its trigger and run.h5 (:class:`BaseBuilder`); the rank level is in :mod:`.graph`, node and job in :mod:`.grouped`.
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

from prov.constants import PROV, PROV_LABEL, PROV_TYPE
from prov.identifier import QualifiedName
from prov.model import ProvDocument

from prov4ml_hpc import schema
from prov4ml_hpc.merge.model import ArtifactRecord, RunSummary, SeriesSummary
from prov4ml_hpc.provenance import vocab as v

Attrs = list[tuple[QualifiedName, Any]]
_LABEL_VALUE_MAX = 60
# the spelling of a non-finite float parameter in the rank files (rank/api.py json_value writes repr(value))
_NONFINITE_TEXT = {"nan": "nan", "inf": "inf", "-inf": "-inf"}


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


def context_parents(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """child context -> parent context, from ``context`` events (yProv4ML's log_context(child, parent));
    a link that would close a cycle is left out."""
    parents: dict[str, str] = {}
    for ev in events:
        ev_attrs = ev.get("attrs") if isinstance(ev.get("attrs"), Mapping) else {}
        child, parent = ev.get("context"), ev_attrs.get("parent")
        if ev.get("name") != "context" or not isinstance(child, str) or not isinstance(parent, str):
            continue
        seen, q = {child}, parent
        while q in parents and q not in seen:
            seen.add(q)
            q = parents[q]
        if child and q not in seen and parent != child:
            parents[child] = parent
    return parents
