"""The in-memory summary of a whole run that the merge produces and the provenance builder and reports consume.

It holds everything the PROV graph needs and nothing that grows with the number of logged values: per series
only counts, first/last steps and value statistics; the values themselves stay in the HDF5 files.
Plain dataclasses, no I/O: the merge fills them, `provenance.graph` turns them into a ProvDocument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..job.jobinfo import JobInfo


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
    """One rank's part of the run (one attempt of it)."""

    global_rank: int
    attempt: int = 0
    status: str = "missing"  # schema.STATUS_*
    reason: str | None = None
    file: str | None = None  # path relative to the run directory
    local_rank: int | None = None
    node: str | None = None
    pid: int | None = None
    start_time: float | None = None
    end_time: float | None = None  # for a partial rank: the time of its last flush
    rows: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # the rank file's other attributes, decoded
    series: list[SeriesSummary] = field(default_factory=list)
    contexts: list[ContextSpan] = field(default_factory=list)
    params: list[ParamRecord] = field(default_factory=list)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)  # energy and the like, from the samplers


@dataclass
class RunSummary:
    """Everything the provenance graph is built from."""

    run_id: str
    experiment: str
    run_dir: str  # absolute path
    job: JobInfo
    ranks: list[RankSummary]  # every attempt of every rank, sorted by (attempt, global_rank)
    world_size: int  # expected number of ranks (from the rank files' world_size)
    software_version: str
    user: str | None = None
    problems: list[str] = field(default_factory=list)  # merge-level findings (missing / corrupt ranks, ...)
    totals: dict[str, Any] = field(default_factory=dict)  # job-level totals (energy, emissions)

    @property
    def attempts(self) -> list[int]:
        return sorted({r.attempt for r in self.ranks})
