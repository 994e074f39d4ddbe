"""The PROV vocabulary of prov4ml-hpc: namespaces, node types, attribute names and identifier escaping.

Attribute names are the same words as the code and the HDF5 files (``job_id``, ``global_rank``, ``local_rank``,
``world_size``, ``node``, ``context``, ``step``, ``status``); where :mod:`prov4ml_hpc.schema` already defines a
word it is reused from there, so the two can never drift apart.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from prov.identifier import Namespace

from prov4ml_hpc import schema

# ---- namespaces -----------------------------------------------------------------------------------------
VOCAB_URI = "https://w3id.org/prov4ml-hpc/ns#"
RUN_URI_BASE = "https://w3id.org/prov4ml-hpc/run/"
PROV4ML = Namespace("prov4ml", VOCAB_URI)
RUN_PREFIX = "run"


def run_namespace(run_id: str) -> Namespace:
    """The namespace of the identifiers of one run: ``https://w3id.org/prov4ml-hpc/run/<run_id>/``.

    The run id is percent-encoded, so any run id gives a valid URI and two run ids never share a namespace.
    """
    return Namespace(RUN_PREFIX, RUN_URI_BASE + quote(run_id, safe="") + "/")


# ---- node types (values of prov:type) -------------------------------------------------------------------
JOB = PROV4ML["Job"]
RANK_PROCESS = PROV4ML["RankProcess"]
CONTEXT = PROV4ML["Context"]
METRIC_SERIES = PROV4ML["MetricSeries"]
SYSTEM_SERIES = PROV4ML["SystemSeries"]
PARAMETER = PROV4ML["Parameter"]
ARTIFACT = PROV4ML["Artifact"]
MODEL = PROV4ML["Model"]
DATASET = PROV4ML["Dataset"]
JOB_SCRIPT = PROV4ML["JobScript"]
ENVIRONMENT = PROV4ML["Environment"]
NODE = PROV4ML["Node"]
RUN_FILE = PROV4ML["RunFile"]
RANK_FILE = PROV4ML["RankFile"]
USER = PROV4ML["User"]
SUBMITTER = PROV4ML["Submitter"]
SOFTWARE = PROV4ML["Software"]
COMMAND = PROV4ML["Command"]  # the command line that started the ranks (when SLURM gave no job script)
NODE_PROCESS = PROV4ML["NodeProcess"]  # the ranks of one node, one attempt (node-level graphs)

SERIES_TYPES = {schema.KIND_METRIC: METRIC_SERIES, schema.KIND_SYSTEM: SYSTEM_SERIES}
ARTIFACT_TYPES = {schema.REC_ARTIFACT: ARTIFACT, schema.REC_MODEL: MODEL, schema.REC_DATASET: DATASET}

ROLE_INPUT = "input"
ROLE_OUTPUT = "output"

# ---- graph detail levels -------------------------------------------------------------------------------
LEVEL_AUTO, LEVEL_JOB, LEVEL_NODE, LEVEL_RANK = "auto", "job", "node", "rank"
LEVELS = (LEVEL_AUTO, LEVEL_JOB, LEVEL_NODE, LEVEL_RANK)
AUTO_RECORDS = 5000  # "auto" picks the most detailed level whose graph stays within this many records

# ---- labels (yProv Explorer v2 cuts a label longer than 18 characters to 10 + "..." + 3) -----------------
LABEL_WIDTH = 18

# ---- attribute names (local names in the prov4ml namespace) ---------------------------------------------
# identity and placement (the same words as the rank files)
RUN_ID = schema.A_RUN_ID
EXPERIMENT = schema.A_EXPERIMENT
JOB_ID = schema.A_JOB_ID
GLOBAL_RANK = schema.A_GLOBAL_RANK
LOCAL_RANK = schema.A_LOCAL_RANK
WORLD_SIZE = schema.A_WORLD_SIZE
NODE_NAME = schema.A_NODE
PID = schema.A_PID
ATTEMPT = schema.A_ATTEMPT
STATUS = schema.A_STATUS
REASON = "reason"
IDENTITY_SOURCE = schema.A_IDENTITY_SOURCE
CONTEXT_NAME = "context"
STEP = "step"
NAME = "name"
KIND = "kind"
ROLE = "role"
TIME = "time"
FILE = "file"
ROWS = "rows"
PROBLEMS = schema.A_PROBLEMS
RUN_DIR = "run_dir"
FORMAT = schema.A_FORMAT
SCHEMA_VERSION = schema.A_SCHEMA_VERSION
VERSION = "version"
USER_NAME = "user"
FULL_LABEL = "full_label"  # the long, descriptive label when prov:label had to be shortened
ROLES = "roles"  # of a person agent: "user", "submitter" or "user,submitter"
GRAPH_LEVEL = "graph_level"  # on the job: the detail level of this document (job, node or rank)
COMMAND_LINE = "command_line"
ESCAPED_ATTRIBUTES = "escaped_attributes"  # the attributes of a record escaped for a format (export.py)

# aggregates over ranks (job- and node-level graphs)
RANKS = "ranks"  # the global ranks, as compact ranges ("0-3,8")
NRANKS = "nranks"
STATUS_COUNTS = "status_counts"  # JSON {status: number of rank-attempts}
RANKS_NOT_COMPLETED = "ranks_not_completed"
DISTINCT_VALUES = "distinct_values"  # a parameter or artifact whose ranks disagree: how many values
VALUES = "values"  # JSON list of the first distinct values (at most MAX_LISTED)
LAST_MIN = "last_min"  # min/max/mean over ranks of each rank's last value
LAST_MAX = "last_max"
LAST_MEAN = "last_mean"
COUNT_MIN = "count_min"
COUNT_MAX = "count_max"
AGGREGATES = "aggregates"  # HDF5 path of the per-step statistics across ranks in run.h5
SERIES_GROUP = "series_group"  # HDF5 group in run.h5 holding one dataset per rank-attempt
MAX_LISTED = 8

# SLURM job
JOB_NAME = "job_name"
ARRAY_JOB_ID = "array_job_id"
ARRAY_TASK_ID = "array_task_id"
ACCOUNT = "account"
PARTITION = "partition"
QOS = "qos"
CLUSTER = "cluster"
SUBMIT_DIR = "submit_dir"
SUBMIT_HOST = "submit_host"
NODES = "nodes"  # comma-separated expanded host list, in SLURM order
NNODES = "nnodes"
NTASKS = "ntasks"
CPUS_PER_TASK = "cpus_per_task"
GPUS = "gpus"
TIME_LIMIT = "time_limit"
STATE = "state"
EXIT_CODE = "exit_code"
ELAPSED = "elapsed"
SLURM_START = "slurm_start"  # as sacct printed it (cluster local time, no zone)
SLURM_END = "slurm_end"
RESTART_COUNT = "restart_count"
SOURCES = "sources"
EXTRA = "extra"

# metric series
COUNT = "count"
FIRST_STEP = "first_step"
LAST_STEP = "last_step"
MIN = "min"
MAX = "max"
LAST = "last"
LAST_NONFINITE = "last_nonfinite"  # "nan", "inf" or "-inf" when the last value is not finite
FIRST_TIME = "first_time"
LAST_TIME = "last_time"
NONFINITE = "nonfinite"
UNIT = "unit"
DATASET_PATH = "dataset"  # HDF5 path of the values in FILE

# parameters, artifacts, files
VALUE_NONFINITE = "value_nonfinite"
PATH = "path"
COPY = "copy"
SHA256 = "sha256"
SIZE = "size"
ATTR_PREFIX = "attr_"  # user attributes of an artifact, prefixed

# environment of a rank
ARGV = schema.A_ARGV
CWD = schema.A_CWD
PYTHON_VERSION = schema.A_PYTHON_VERSION
PACKAGE_VERSION = schema.A_PACKAGE_VERSION
PACKAGES = schema.A_PACKAGES
ENV = schema.A_ENV
ENVIRONMENT_KEYS = (ARGV, CWD, PYTHON_VERSION, PACKAGE_VERSION, PACKAGES, ENV)

# ---- identifiers ----------------------------------------------------------------------------------------
MAX_COMPONENT = 64  # longer escaped components are cut and given a hash suffix
_KEEP = re.compile(r"[A-Za-z0-9_]")
_ATTR_BAD = re.compile(r"[^A-Za-z0-9_]")


def escape_component(name: str | None) -> str:
    """Escape a user name into one identifier component made of ``[A-Za-z0-9_-]`` only.

    Letters, digits and ``_`` are kept; every other character becomes ``-XX`` per UTF-8 byte (``-`` itself is
    ``-2D``), so the result never contains ``.``, the component separator, and is a valid part of an XML NCName,
    a PROV-N and a Turtle local name.  ``""`` becomes ``-`` and ``None`` ``--``: a real escape is always ``-``
    and two upper-case hex digits, so no two different names give the same component.  Components longer than
    MAX_COMPONENT keep their first 48 characters plus ``-h`` and 16 hex digits of the name's SHA-256 (``-h``
    never occurs in an uncut component).
    """
    if name is None:
        return "--"
    if name == "":
        return "-"
    out = []
    for ch in name:
        if _KEEP.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"-{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    text = "".join(out)
    if len(text) <= MAX_COMPONENT:
        return text
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:48]}-h{digest}"


def js_length(text: str) -> int:
    """The length of ``text`` as JavaScript counts it (UTF-16 code units): what yProv Explorer cuts."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def shown_text(text: str) -> str:
    """``text`` safe to show in a label: control characters and lone surrogates become U+FFFD."""
    return _UNSHOWN.sub("\ufffd", text)


def fit_label(head: str, tail: str = "", width: int = LABEL_WIDTH) -> str:
    """``head + tail`` in at most ``width`` UTF-16 code units: a long head is cut and marked with "…".

    The tail (a rank, a suffix that tells nodes apart) is kept whole when it leaves room for a few characters
    of the head, so that labels of the same name on different ranks stay different after shortening.
    """
    head, tail = shown_text(head), shown_text(tail)
    if js_length(head) + js_length(tail) <= width:
        return head + tail
    if js_length(tail) > width - 4:
        head, tail = head + tail, ""
    room = width - js_length(tail) - 1
    out, used = [], 0
    for ch in head:
        n = 2 if ord(ch) > 0xFFFF else 1
        if used + n > room:
            break
        out.append(ch)
        used += n
    return "".join(out) + "\u2026" + tail


def rank_ranges(ranks: list[int]) -> str:
    """Sorted global ranks as compact ranges: [0, 1, 2, 3, 8] -> "0-3,8"."""
    out: list[str] = []
    values = sorted(set(ranks))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def attribute_word(key: str) -> str:
    """A user key (hardware, totals, artifact attributes) as an attribute local name: ``[A-Za-z0-9_]``.

    This is not injective (``a.b`` and ``a-b`` give ``a_b``); the builder keeps the first key of a collision.
    """
    word = _ATTR_BAD.sub("_", key) or "_"
    return "_" + word if word[0].isdigit() else word
