"""The one contract between the rank-file writer, the readers and the merged run file: names, versions, escaping.

Everything that appears on disk (file names, HDF5 dataset and attribute names, status words) is defined here
and nowhere else.  Bump SCHEMA_VERSION whenever the layout changes in a way an older reader would misread.
"""

from __future__ import annotations

import re
from functools import cache

SCHEMA_VERSION = 1
RANK_FORMAT = "prov4ml-hpc-rank"
RUN_FORMAT = "prov4ml-hpc-run"

# ---- files of a run directory -------------------------------------------------------------------------
RANKS_DIR = "ranks"
ARTIFACTS_DIR = "artifacts"
RUN_FILE = "run.h5"
PROV_FILE = "provenance.json"
REPORT_DIR = "report"
RANK_FILE_RE = re.compile(r"^rank-(\d{5,})(?:\.attempt-(\d+))?\.h5$")


def rank_file_name(global_rank: int, attempt: int = 0) -> str:
    """File name of a rank buffer: ``rank-00007.h5`` (attempt 0) or ``rank-00007.attempt-2.h5``."""
    if attempt:
        return f"rank-{global_rank:05d}.attempt-{attempt}.h5"
    return f"rank-{global_rank:05d}.h5"


def parse_rank_file_name(name: str) -> tuple[int, int] | None:
    """Return (global_rank, attempt) for a rank file name, or None when the name is not one."""
    m = RANK_FILE_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


# ---- rank file layout ---------------------------------------------------------------------------------
DS_ROWS = "rows"  # 1-D compound, one row per logged value (all series of the rank)
DS_SERIES = "series"  # 1-D vlen UTF-8 JSON: one definition per series, index == series id
DS_RECORDS = "records"  # 1-D vlen UTF-8 JSON: params, artifacts, models, datasets, events, problems

ROW_FIELDS = (("series", "<i4"), ("step", "<i8"), ("value", "<f8"), ("time", "<f8"))


@cache
def row_dtype():  # -> numpy.dtype; numpy is imported lazily so that `import prov4ml_hpc` stays cheap
    """The numpy dtype of DS_ROWS: series id, step, value, wall time (Unix seconds, UTC)."""
    import numpy as np

    return np.dtype(list(ROW_FIELDS))


ROW_CHUNK = 16384  # rows per HDF5 chunk of DS_ROWS

# ---- metadata attribute names (same words as the PROV vocabulary) --------------------------------------
A_SCHEMA_VERSION = "schema_version"
A_FORMAT = "format"
A_RUN_ID = "run_id"
A_EXPERIMENT = "experiment"
A_JOB_ID = "job_id"
A_GLOBAL_RANK = "global_rank"
A_LOCAL_RANK = "local_rank"
A_WORLD_SIZE = "world_size"
A_NODE = "node"
A_PID = "pid"
A_ATTEMPT = "attempt"
A_IDENTITY_SOURCE = "identity_source"
A_START_TIME = "start_time"  # ISO 8601 UTC string
A_START_UNIX = "start_time_unix"
A_START_MONOTONIC = "start_monotonic"
A_END_TIME = "end_time"
A_END_UNIX = "end_time_unix"
A_STATUS = "status"
A_STATUS_REASON = "status_reason"
A_PYTHON_VERSION = "python_version"
A_PACKAGE_VERSION = "package_version"
A_PACKAGES = "packages"  # JSON {name: version} of the relevant packages
A_ARGV = "argv"  # JSON list
A_CWD = "cwd"
A_ENV = "environment"  # JSON {name: value}: SLURM_*, CUDA_*, ... (no secrets)
A_HARDWARE = "hardware"  # JSON, filled by the samplers (CPU, memory, GPUs)
A_FLUSHED_ROWS = "flushed_rows"
A_LAST_FLUSH_UNIX = "last_flush_unix"
A_LAST_FLUSH_MONOTONIC = "last_flush_monotonic"
A_PROBLEMS = "problems"  # JSON {reason: count}
A_TOTALS = "totals"  # JSON, e.g. energy totals written at close by the samplers
A_RUN_ID_SOURCE = "run_id_source"  # how the run id was found: explicit, env, slurm, torchrun, mpi, local
A_SLURM = "slurm"  # JSON: the SLURM job facts of the rank's environment
A_USER = "user"
A_HOSTNAME = "hostname"  # the process's host (gethostname), beside node (SLURMD_NODENAME or the short host)
A_SOURCE = "source"  # JSON: the script's sha256 and git state
A_DISTRIBUTIONS = "distributions"  # JSON: installed distributions (local rank 0 of each node)
A_DROPPED_ROWS = "dropped_rows"  # rows the rank logged that its file does not hold (present only then)
# attributes whose value is JSON text, in rank files and in run.h5 (/ranks/<stem> and the root)
JSON_ATTRS = frozenset(
    {A_ARGV, A_ENV, A_PACKAGES, A_PROBLEMS, A_HARDWARE, A_TOTALS, A_SLURM, A_SOURCE, A_DISTRIBUTIONS}
)

# ---- rank status words ----------------------------------------------------------------------------------
STATUS_RUNNING = "running"  # written at start; still there after a kill -9 -> the merge says "partial"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"  # uncaught exception, write error, deleted file
STATUS_CANCELLED = "cancelled"  # SIGTERM/SIGINT (scancel, time limit)
STATUS_SIGNALLED = "signalled"  # SIGUSR1/SIGUSR2 then closed by the launcher
STATUS_PARTIAL = "partial"  # merge's verdict on a file left "running" by a dead process
STATUS_MISSING = "missing"  # merge: expected rank with no file
STATUS_CORRUPT = "corrupt"  # merge: file that cannot be read
FINAL_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED, STATUS_SIGNALLED)

# ---- run.h5, the merged run file (docs/format-run.md) ----------------------------------------------------
G_JOB = "job"  # attributes: the JobInfo fields
G_RANKS = "ranks"  # /ranks/<stem>: one group per rank file and per missing rank
G_SERIES = "series"  # /series/<ctx>/<name>/<stem>: the rows of one series of one rank
G_AGGREGATES = "aggregates"  # /aggregates/<ctx>/<name>/attempt-K: per-step statistics across ranks
DS_RANK_RECORDS = "records"  # /ranks/<stem>/records: the rank's JSON records
DS_RUN_INDEX = (
    "index"  # /index: one JSON object per rank (attributes, records, series statistics): read at once
)
# root attributes (besides format, schema_version, run_id, experiment, world_size, job_id, package_version, user)
A_STATUSES = "statuses"  # JSON {verdict: number of ranks}
A_RANK_FILES = "rank_files"  # number of rank files merged
# also on the root, with the rank files' names: problems (JSON list of the merge's findings, one line each) and
# totals (JSON: the job's totals, docs/metrics.md "Job totals")
A_PROVENANCE_SHA256 = "provenance_sha256"  # sha256 of the provenance.json written by the same merge
A_MERGE_TIME = "merge_time"
A_MERGE_UNIX = "merge_time_unix"
A_MERGE_PROCESSES = "merge_processes"
A_MERGED_BY = "merged_by"
VOLATILE_ATTRS = frozenset({A_MERGE_TIME, A_MERGE_UNIX, A_MERGE_PROCESSES, A_MERGED_BY})  # differ per merge
RUN_JSON_ATTRS = JSON_ATTRS | {A_STATUSES}
# /ranks/<stem> attributes besides the rank file's own: the merge's verdict and what it saw of the file
A_FILE_STATUS = "file_status"  # the status written in the rank file (status holds the verdict)
A_FILE_STATUS_REASON = (
    "file_status_reason"  # the reason written in the rank file (status_reason: the verdict's)
)
A_FILE = "file"  # ranks/rank-NNNNN.h5, relative to the run directory ("" for a missing rank)
A_ROWS = "rows"  # rows merged
A_FILE_SIZE = "file_size"  # bytes of the rank file when the merge read it
A_FILE_MTIME_NS = "file_mtime_ns"  # its modification time then (ns): a later change makes run.h5 stale
# attributes of /series/<ctx>/<name> and /aggregates/<ctx>/<name> groups, and of the series datasets
A_NAME = "name"
A_CONTEXT = "context"
A_KIND = "kind"
A_UNIT = "unit"
# statistics of one series of one rank, on its dataset (empty series: count 0, steps -1, the rest NaN)
A_COUNT = "count"
A_NONFINITE = "nonfinite"
A_FIRST_STEP = "first_step"
A_LAST_STEP = "last_step"
A_MIN = "min"  # over finite values
A_MAX = "max"
A_LAST = "last"  # the value with the latest time
A_FIRST_TIME = "first_time"
A_LAST_TIME = "last_time"

# ---- record types in DS_RECORDS -------------------------------------------------------------------------
REC_PARAM = "param"
REC_ARTIFACT = "artifact"
REC_MODEL = "model"
REC_DATASET = "dataset"
REC_EVENT = "event"
REC_PROBLEM = "problem"

# ---- series kinds ---------------------------------------------------------------------------------------
KIND_METRIC = "metric"
KIND_SYSTEM = "system"

# ---- names ----------------------------------------------------------------------------------------------
MAX_NAME_LENGTH = 1024
_SAFE = re.compile(r"[A-Za-z0-9_\-]")
_EMPTY = "%-"


def escape_name(name: str) -> str:
    """Escape a user name into a safe, reversible HDF5 link / file name component.

    Letters, digits, ``_`` and ``-`` are kept; every other character (``/``, ``.``, space, ``%``, unicode)
    becomes ``%XX`` for each of its UTF-8 bytes.  The empty name becomes ``%-``.  The result never contains
    ``/`` or ``.``, so it can never be a path, ``.`` or ``..``.
    """
    if name == "":
        return _EMPTY
    out = []
    for ch in name:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def unescape_name(escaped: str) -> str:
    """Inverse of :func:`escape_name`."""
    if escaped == _EMPTY:
        return ""
    raw = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "%":
            raw.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("ascii"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")
