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
A_DROPPED_ROWS = "dropped_rows"  # rows the rank logged that its file does not hold (present only then)

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
