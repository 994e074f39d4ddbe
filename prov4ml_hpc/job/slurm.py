"""SLURM notations and outputs, parsed: hostlists, array task ids, time limits, `scontrol show job`, `sacct -P`.

Every parser raises :class:`~prov4ml_hpc.errors.SlurmError` on malformed input; the queries that use them are in
:mod:`prov4ml_hpc.job.jobinfo`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from ..errors import SlurmError

# Values SLURM prints for "not set".
UNKNOWN_VALUES = frozenset(
    {"", "(null)", "N/A", "n/a", "Unknown", "unknown", "None", "(none)", "NONE", "None assigned"}
)  # "None assigned": sacct's NodeList of a pending job
NO_TIME_LIMIT = frozenset({"UNLIMITED", "INFINITE", "Partition_Limit", "NOT_SET", "N/A", "NONE", ""})
# Job states in which scontrol's EndTime is only the time limit's end (a projection), not when the job ended.
NOT_ENDED_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "CONFIGURING",
        "RESIZING",
        "SIGNALING",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
    }
)

# `sacct -P -n -o` fields that job_info asks for (accepted in plain and `-c` jobcomp mode).
SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "DerivedExitCode",
    "Elapsed",
    "ElapsedRaw",
    "Start",
    "End",
    "Submit",
    "Partition",
    "Account",
    "QOS",
    "User",
    "NNodes",
    "NTasks",
    "AllocCPUS",
    "NodeList",
    "Timelimit",
    "MaxRSS",
    "Cluster",
)
_STEP_FIELDS = ("JobName", "State", "ExitCode", "Elapsed", "Start", "End", "NTasks", "NodeList", "MaxRSS")

# scontrol keys whose values may contain spaces: a following `word=...` token that is not a known key stays in
# the value (e.g. `Command=/x/train.sh --lr=0.1 lr=2`).
_FREE_TEXT_KEYS = frozenset(
    {
        "JobName",
        "Command",
        "WorkDir",
        "StdErr",
        "StdIn",
        "StdOut",
        "Comment",
        "AdminComment",
        "SystemComment",
        "Reason",
        "Name",
        "Features",
        "Reservation",
        "ReservationName",
        "Container",
        "ContainerID",
        "SubmitLine",
    }
)
_SCONTROL_KEY_NAMES = """
JobId JobName UserId GroupId MCS_label Priority Nice Account QOS JobState Reason Dependency Requeue Restarts
BatchFlag Reboot ExitCode DerivedExitCode RunTime TimeLimit TimeMin SubmitTime EligibleTime AccrueTime StartTime
EndTime Deadline SuspendTime SecsPreSuspend LastSchedEval Scheduler Partition AllocNode:Sid ReqNodeList
ExcNodeList NodeList BatchHost NumNodes NumCPUs NumTasks CPUs/Task ReqB:S:C:T TRES Socks/Node NtasksPerN:B:S:C
CoreSpec MinCPUsNode MinMemoryNode MinMemoryCPU MinTmpDiskNode Features DelayBoot OverSubscribe Contiguous
Licenses Network Command WorkDir StdErr StdIn StdOut Power ArrayJobId ArrayTaskId ArrayTaskThrottle
HetJobId HetJobOffset HetJobIdSet Comment AdminComment SystemComment TresPerNode TresPerJob TresPerSocket
TresPerTask TresBind MemPerTres CpusPerTres Mem/Node CPU_IDs Nodes Mem GRES Reservation Account
Container ContainerID MailUser MailType NtasksPerTRES ResvPorts KillOInInvalidDependent OOMKillStep
Prefer ReqFeatures ClusterFeatures SubmitLine CronJob CrontabSpec Licenses_Alloc
"""
_SCONTROL_KEYS = frozenset(_SCONTROL_KEY_NAMES.split())
_KEY_RE = re.compile(r"([A-Za-z][A-Za-z0-9_:/.]*)=(.*)", re.DOTALL)


# -- hostlists -------------------------------------------------------------------------------------------------
def _split_top(text: str, seps: str = ",") -> Iterator[str]:
    """Split at separators outside brackets."""
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch in seps and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _expand_range_list(body: str, whole: str) -> list[str]:
    out: list[str] = []
    for part in body.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise SlurmError(
                f"invalid range {part!r} in hostlist {whole!r}; expected N, N-M or a comma list of them"
            )
        if not dash:
            out.append(lo)
            continue
        first, last = int(lo), int(hi)
        if last < first:
            raise SlurmError(f"invalid range {part!r} in hostlist {whole!r}: the end is below the start")
        if last - first > 1_000_000:
            raise SlurmError(f"range {part!r} in hostlist {whole!r} is too large (over a million hosts)")
        out.extend(str(n).zfill(len(lo)) for n in range(first, last + 1))
    return out


def _expand_item(item: str, whole: str) -> list[str]:
    pieces: list[list[str]] = []
    pos = 0
    while pos < len(item):
        open_at = item.find("[", pos)
        close_at = item.find("]", pos)
        if open_at < 0:
            if close_at >= 0:
                raise SlurmError(f"unbalanced ']' in hostlist {whole!r}")
            pieces.append([item[pos:]])
            break
        if 0 <= close_at < open_at:
            raise SlurmError(f"unbalanced ']' in hostlist {whole!r}")
        if open_at > pos:
            pieces.append([item[pos:open_at]])
        close_at = item.find("]", open_at)
        if close_at < 0 or "[" in item[open_at + 1 : close_at]:
            raise SlurmError(f"unbalanced '[' in hostlist {whole!r}")
        pieces.append(_expand_range_list(item[open_at + 1 : close_at], whole))
        pos = close_at + 1
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM hostlist expression into host names, in SLURM's order.

    Handles comma lists (also inside brackets), ranges with zero padding kept from the range start
    (``n[009-011]``), several bracket groups (``a[1-2]b[3-4]`` gives a1b3, a1b4, a2b3, a2b4), suffixes after a
    bracket (``n[1-2]-ib``), whitespace as a separator and duplicates (kept).

    Args:
        hostlist: the expression, e.g. ``"node[01-04,07],gpu-[1-2],login1"``; ``""`` gives ``[]``.

    Returns:
        The host names.

    Raises:
        SlurmError: unbalanced brackets or an invalid range; the message names the expression.
    """
    if not isinstance(hostlist, str):
        raise SlurmError(f"hostlist must be a string, got {type(hostlist).__name__} {hostlist!r}")
    hosts: list[str] = []
    for item in _split_top(hostlist.strip(), ", \t\n"):
        if item:
            hosts.extend(_expand_item(item, hostlist))
    return hosts


def compress_hostlist(hosts: Sequence[str]) -> str:
    """Compress host names into a SLURM hostlist expression (the inverse of :func:`expand_hostlist`).

    Adjacent names with the same prefix and a numeric suffix are merged into one bracket group; consecutive
    numbers become ranges when their zero padding agrees.  The order of the names is kept, as SLURM does.

    Args:
        hosts: host names.

    Returns:
        The expression, e.g. ``"node[01-04,07],login1"``; ``""`` for no hosts.
    """
    groups: list[tuple[str, list[str]]] = []
    for host in hosts:
        match = re.fullmatch(r"(.*?)(\d+)", host)
        if match is None or "[" in host or "]" in host:
            groups.append((host, []))
            continue
        prefix, digits = match.groups()
        if groups and groups[-1][1] and groups[-1][0] == prefix:
            groups[-1][1].append(digits)
        else:
            groups.append((prefix, [digits]))
    parts: list[str] = []
    for prefix, numbers in groups:
        if not numbers:
            parts.append(prefix)
        elif len(numbers) == 1:
            parts.append(prefix + numbers[0])
        else:
            parts.append(f"{prefix}[{','.join(_ranges(numbers))}]")
    return ",".join(parts)


def _ranges(numbers: list[str]) -> list[str]:
    runs: list[list[str]] = []
    for digits in numbers:
        if runs:
            start, end = runs[-1][0], runs[-1][-1]
            if int(digits) == int(end) + 1 and str(int(digits)).zfill(len(start)) == digits:
                runs[-1].append(digits)
                continue
        runs.append([digits])
    return [run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs]


# -- arrays and times ------------------------------------------------------------------------------------------
def parse_array_task_ids(spec: str) -> list[int]:
    """Expand a job array specification (``--array`` / ``SLURM_ARRAY_TASK_*`` / squeue form).

    Accepts ``"0-15"``, ``"1,3,5"``, ``"1-7:2"`` (step), a ``%N`` throttle suffix and squeue's brackets
    (``"[1-3%2]"``, ``"123_[1-3]"``).

    Args:
        spec: the specification.

    Returns:
        The task ids in the order given (duplicates removed).

    Raises:
        SlurmError: a malformed specification; the message names it.
    """
    text = spec.strip()
    if "_[" in text:
        text = text.split("_", 1)[1]
    text = text.removeprefix("[").removesuffix("]").split("%", 1)[0]
    ids: dict[int, None] = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+)(?::(\d+))?)?\s*", part)
        if match is None:
            raise SlurmError(
                f"invalid array task specification {spec!r}; expected e.g. '0-15', '1,3,5', "
                "'1-7:2' or '0-9%2'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1 or (last - first) // step > 4_000_000:
            raise SlurmError(f"invalid array range {part.strip()!r} in {spec!r}")
        ids.update(dict.fromkeys(range(first, last + 1, step)))
    return list(ids)


def parse_time_limit(value: str) -> int | None:
    """Parse a SLURM duration (time limit or elapsed time) into seconds.

    Forms: ``"M"``, ``"M:S"``, ``"H:M:S"``, ``"D-H"``, ``"D-H:M"``, ``"D-H:M:S"`` (``"30"`` is 30 minutes,
    ``"02:00"`` is 2 minutes, ``"1-02:03:04"`` is 93784 s); ``"UNLIMITED"``, ``"INFINITE"``,
    ``"Partition_Limit"`` and the like give None.

    Args:
        value: the duration as SLURM prints or accepts it.

    Returns:
        Seconds, or None when there is no limit.

    Raises:
        SlurmError: a malformed duration.
    """
    text = value.strip()
    if text in NO_TIME_LIMIT or text.upper() in NO_TIME_LIMIT:
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match is None:
        raise SlurmError(f"invalid SLURM duration {value!r}; expected M, M:S, H:M:S, D-H, D-H:M or D-H:M:S")
    days, first, second, third = match.groups()
    nums = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:
        hours, minutes, seconds = (nums + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(nums) == 1:
        return nums[0] * 60
    if len(nums) == 2:
        return nums[0] * 60 + nums[1]
    return (nums[0] * 60 + nums[1]) * 60 + nums[2]


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size(value: str) -> int | None:
    """Parse a SLURM memory size (sacct's MaxRSS ``62336K``, ``1.50G``; ``--mem`` values) into bytes.

    SLURM's units are powers of 1024; a number without a unit is bytes, as sacct prints them.

    Args:
        value: the size as SLURM prints it; ``""`` (a step that measured nothing) gives None.

    Returns:
        Bytes (rounded down), or None for an empty or unknown value.

    Raises:
        SlurmError: a malformed size.
    """
    text = value.strip()
    if text in UNKNOWN_VALUES:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)[Bb]?", text, re.IGNORECASE)
    if match is None:
        raise SlurmError(
            f"invalid SLURM size {value!r}; expected a number with an optional K, M, G, T or P unit"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


# -- scontrol / sacct outputs ----------------------------------------------------------------------------------
def _parse_fields(line: str, record: dict[str, str]) -> None:
    key: str | None = None
    seen: list[str] = []
    for token in line.split(" "):
        match = _KEY_RE.fullmatch(token)
        if match and (key is None or match.group(1) in _SCONTROL_KEYS or key not in _FREE_TEXT_KEYS):
            key = match.group(1)
            record[key] = match.group(2)
            seen.append(key)
        elif key is not None and (token or key in _FREE_TEXT_KEYS):
            record[key] += " " + token
        elif token:
            raise SlurmError(f"unexpected text {token!r} in scontrol output line {line[:200]!r}")
    for name in seen:
        record[name] = record[name].rstrip(" ")


def parse_scontrol_jobs(text: str) -> list[dict[str, str]]:
    """Parse `scontrol show job` output (one-line ``-o`` form or the default multi-line form) into records.

    Args:
        text: the command's standard output; several jobs (array tasks) give several records.

    Returns:
        One ``Key -> value`` dict per job, values as printed (``"(null)"`` is kept).

    Raises:
        SlurmError: text that is not ``Key=Value`` output.
    """
    lines = text.splitlines()
    one_line = all(line.startswith("JobId=") for line in lines if line.strip())
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            if current and not one_line:
                records.append(current)
                current = {}
            continue
        if one_line:
            record: dict[str, str] = {}
            _parse_fields(line.strip(), record)
            records.append(record)
        else:
            _parse_fields(line.strip(), current)
    if current:
        records.append(current)
    return records


def parse_scontrol_job(text: str, job_id: str | None = None) -> dict[str, str]:
    """The record of one job in `scontrol show job [-o]` output.

    Args:
        text: the command's standard output.
        job_id: pick the record with this ``JobId`` (default: the first record).

    Returns:
        ``Key -> value`` (e.g. ``{"JobId": "12", "JobState": "COMPLETED", "Reason": "None", ...}``);
        ``{}`` for empty output or when no record has ``job_id``.

    Raises:
        SlurmError: text that is not ``Key=Value`` output.
    """
    records = parse_scontrol_jobs(text)
    if job_id is not None:
        wanted = str(job_id)
        matching = [
            r for r in records if wanted in (r.get("JobId"), f"{r.get('ArrayJobId')}_{r.get('ArrayTaskId')}")
        ]
        records = matching or (records if len(records) == 1 else [])
    return records[0] if records else {}


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS) -> dict[str, Any]:
    """Parse `sacct -P [-n] -o FIELDS` output (also `sacct -c`, the jobcomp file) into job and steps.

    Args:
        text: the command's standard output, ``|``-separated; a header line (no ``-n``) is recognised.
        fields: the names given to ``-o``, in order.  A job name holding ``|`` (sacct does not escape it) is put
            back together, as long as JobName is the only field with free text.

    Returns:
        ``{"job": {field: value}, "steps": {"batch": {...}, "0": {...}}, "jobs": [...]}``: ``job`` is the first
        job-level line (JobID without a ``.``), ``steps`` its step lines keyed by the part after the dot,
        ``jobs`` every job-level line (array tasks, requeued attempts).  Empty when there are no lines.

    Raises:
        SlurmError: a line with a different number of fields than asked for.
    """
    names = list(fields)
    result: dict[str, Any] = {"job": {}, "steps": {}, "jobs": []}
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and [c.strip() for c in lines[0].split("|")][: len(names)] == names:
        lines = lines[1:]
    for line in lines:
        values = line.split("|")
        if len(values) == len(names) + 1 and values[-1] == "":
            values = values[:-1]  # `-p` style trailing separator
        if len(values) > len(names) and "JobName" in names:
            # sacct prints a job name as it is: `sbatch -J 'exp|lr=0.1'` adds separators (only JobName is free text)
            at, surplus = names.index("JobName"), len(values) - len(names)
            values = [*values[:at], "|".join(values[at : at + surplus + 1]), *values[at + surplus + 1 :]]
        if len(values) != len(names):
            raise SlurmError(
                f"sacct line has {len(values)} fields, expected {len(names)} ({','.join(names)}): "
                f"{line[:200]!r}"
            )
        record = dict(zip(names, values, strict=True))
        job_id = record.get("JobID", values[0])
        if "." in job_id:
            parent, step = job_id.split(".", 1)
            if not result["job"] or result["job"].get("JobID", parent) == parent:
                result["steps"][step] = record
        else:
            result["jobs"].append(record)
            if not result["job"]:
                result["job"] = record
    return result


# -- job_info --------------------------------------------------------------------------------------------------
def _known(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value in UNKNOWN_VALUES else value


def _to_int(value: str | None) -> int | None:
    value = _known(value)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _user(value: str | None) -> str | None:
    value = _known(value)
    return (value.split("(", 1)[0] or None) if value else None


def _timestamp(value: str | None) -> str | None:
    """SLURM local time (``2024-05-01T10:00:00``) as ISO 8601 with the local UTC offset; raw when unparseable."""
    value = _known(value)
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    return (stamp if stamp.tzinfo else stamp.astimezone()).isoformat()
