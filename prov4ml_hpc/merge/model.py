"""The read model: one run as every reader sees it (the merge, inspect, report, compare, the crate, the graph).

It holds everything the PROV graph and the views need and nothing that grows with the number of logged values:
per series only counts, first/last steps and value statistics; the values themselves stay in the HDF5 files.
Plain dataclasses and pure helpers, no I/O: ``merge.load`` fills them from run.h5 or the rank files, the merge
from the rank files it streams; ``provenance.graph`` turns them into a ProvDocument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from ..job.jobinfo import JobInfo

# where a loaded run was read from, and in what state it is (docs/report.md)
SOURCE_RUN_FILE = schema.RUN_FILE
SOURCE_RANK_FILES = "rank files"
STATE_RUNNING = "running"  # a rank's writer is still alive
STATE_UNMERGED = "unmerged"  # rank files only
STATE_MERGED = "merged"  # run.h5 describes the rank files on disk
STATE_STALE = "stale-merge"  # run.h5 exists but the rank files changed after it was written
# verdicts that make a merge's exit code 1 (and --strict refuse)
BAD_STATUSES = (schema.STATUS_PARTIAL, schema.STATUS_MISSING, schema.STATUS_CORRUPT)
# does provenance.json belong to run.h5 (the same merge)?
GRAPH_CURRENT = "current"
GRAPH_ABSENT = "absent"
GRAPH_OTHER = "other merge"  # an interrupted merge or a copied file: merge again
GRAPH_UNKNOWN = "unknown"  # run.h5 written by a version that did not record it


@dataclass
class SeriesSummary:
    """One time series of one rank (a metric the user logged, or a system sample)."""

    name: str
    context: str
    kind: str  # schema.KIND_METRIC or schema.KIND_SYSTEM
    global_rank: int
    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    min: float | None = None  # over finite values; None when there are none
    max: float | None = None
    last: float | None = None  # the value with the latest time
    first_time: float | None = None  # Unix seconds UTC
    last_time: float | None = None
    nonfinite: int = 0  # NaN/inf values stored
    unit: str | None = None
    dataset: str | None = None  # HDF5 path of its values in run.h5 (set by the merge)


@dataclass
class ContextSpan:
    """A context (training, validation, ...) seen on one rank, with the time span of its records."""

    name: str
    start: float  # Unix seconds UTC
    end: float


@dataclass
class ParamRecord:
    name: str
    value: Any  # JSON scalar (int, float, bool, str) or a JSON string for anything else
    context: str | None
    global_rank: int
    time: float
    role: str | None = None  # "input" (used; None too) or "output" (wasGeneratedBy): yProv4ML's is_input
    attrs: dict[str, Any] = field(default_factory=dict)  # free attributes (yProv4ML's source, ...)


@dataclass
class ArtifactRecord:
    """A file the run used or produced: an artifact, a model checkpoint or a dataset."""

    name: str
    kind: str  # schema.REC_ARTIFACT, REC_MODEL or REC_DATASET
    role: str  # "input" (used) or "output" (wasGeneratedBy)
    context: str | None
    global_rank: int
    time: float
    path: str | None = None  # the original path as given (absolute), None for in-memory objects
    copy: str | None = None  # path relative to the run directory of the copy, when one was made
    sha256: str | None = None
    size: int | None = None
    step: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankSummary:
    """One rank's part of the run (one attempt of it), with its verdict."""

    global_rank: int
    attempt: int = 0
    status: str = (
        "missing"  # the verdict: schema.STATUS_* (running only when a loader was asked about writers)
    )
    reason: str | None = None
    file: str | None = None  # path relative to the run directory
    local_rank: int | None = None
    node: str | None = None
    pid: int | None = None
    start_time: float | None = None
    end_time: float | None = None  # for a partial rank: the time of its last flush
    rows: int = 0
    meta: dict[str, Any] = field(
        default_factory=dict
    )  # the rank file's own attributes, decoded ({}: no file)
    series: list[SeriesSummary] = field(default_factory=list)
    contexts: list[ContextSpan] = field(default_factory=list)
    params: list[ParamRecord] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)  # energy and the like, from the samplers
    records: list[dict[str, Any]] = field(default_factory=list)  # the rank's JSON records as written
    read_problems: list[str] = field(default_factory=list)  # what reading the file had to work around
    file_size: int | None = None  # the rank file's size and mtime when it was read (run.h5 staleness)
    file_mtime_ns: int | None = None

    @property
    def stem(self) -> str:
        """``rank-00007`` or ``rank-00007.attempt-2``: the rank file's name without ``.h5``."""
        return schema.rank_file_name(self.global_rank, self.attempt)[: -len(".h5")]

    @property
    def readable(self) -> bool:
        """True when the rank has a file that could be read (its attributes are known)."""
        return bool(self.meta)


@dataclass
class RunSummary:
    """A whole run: what the provenance graph is built from and what every view shows."""

    run_id: str
    experiment: str
    run_dir: str  # absolute, symlinks resolved
    job: JobInfo
    ranks: list[RankSummary]  # every attempt of every rank, sorted by (attempt, global_rank)
    world_size: int  # expected number of ranks (from the rank files' world_size)
    software_version: str
    user: str | None = None
    problems: list[str] = field(default_factory=list)  # run-level findings (missing / corrupt ranks, ...)
    totals: dict[str, Any] = field(default_factory=dict)  # job-level totals (merge.totals: energy, emissions)
    source: str = SOURCE_RANK_FILES  # SOURCE_RUN_FILE or SOURCE_RANK_FILES
    state: str = STATE_UNMERGED  # STATE_*
    merged_at: float | None = None  # Unix time of the merge that wrote run.h5 (merged state)
    graph: str = GRAPH_ABSENT  # GRAPH_*: whether provenance.json is the graph of this run.h5

    @property
    def attempts(self) -> list[int]:
        return sorted({r.attempt for r in self.ranks})

    def main_rank(self) -> RankSummary | None:
        """The rank that describes the job (see :func:`main_rank`)."""
        return main_rank(self.ranks)

    def latest(self) -> list[RankSummary]:
        """The ranks of the latest attempt."""
        last = max(self.attempts, default=0)
        return [r for r in self.ranks if r.attempt == last]

    def time_span(self) -> tuple[float | None, float | None]:
        """(first rank start, last rank end or last flush) over every attempt, Unix seconds."""
        return time_span(self.ranks)

    def script(self) -> str | None:
        """The training script: argv[0] of the main rank, or None."""
        main = self.main_rank()
        argv = main.meta.get(schema.A_ARGV) if main is not None else None
        return str(argv[0]) if isinstance(argv, list) and argv and argv[0] else None

    def path(self, rank: RankSummary) -> str | None:
        """The absolute path of a rank's file, or None."""
        return os.path.join(self.run_dir, rank.file) if rank.file else None


def main_rank(ranks: list[RankSummary]) -> RankSummary | None:
    """The rank whose attributes describe the job: the lowest readable rank of the latest attempt that has one."""
    readable = [r for r in ranks if r.readable]
    if not readable:
        return None
    last = max(r.attempt for r in readable)
    return min((r for r in readable if r.attempt == last), key=lambda r: r.global_rank)


def time_span(ranks: list[RankSummary]) -> tuple[float | None, float | None]:
    """(min start_time, max end_time) of the given ranks; None where no rank has one."""
    starts = [r.start_time for r in ranks if r.start_time is not None]
    ends = [r.end_time for r in ranks if r.end_time is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)
