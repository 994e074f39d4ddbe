"""SLURM facts: pure parsers of SLURM notations and outputs, and the job metadata query that fills a JobInfo.

The parsers (hostlists, array task ids, time limits, `scontrol show job`, `sacct -P`) raise
:class:`~prov4ml_hpc.errors.SlurmError` on malformed input.  :func:`job_info` never raises for a missing
command, a failing command or a missing field: whatever does not answer is recorded as unknown (None), and
``JobInfo.sources`` lists what did answer.  Commands run with list arguments (no shell) and a timeout, in the
caller's environment, so ``SLURM_CONF`` is respected.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from .errors import SlurmError
from .record import JobInfo

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


def _command(args: list[str], timeout: float, env: Mapping[str, str] | None) -> tuple[int, bytes, str] | None:
    """Run a SLURM client command; None when it is absent or cannot run. Returns (rc, stdout, stderr)."""
    exe = shutil.which(args[0], path=(env or os.environ).get("PATH"))
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *args[1:]],
            capture_output=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def _from_snapshot(info: JobInfo, snap: Mapping[str, str]) -> None:
    info.name = _known(snap.get("job_name"))
    info.array_job_id = _known(snap.get("array_job_id"))
    info.array_task_id = _known(snap.get("array_task_id"))
    info.restart_count = _to_int(snap.get("restart_count")) or 0
    info.nnodes = _to_int(snap.get("nnodes"))
    info.ntasks = _to_int(snap.get("ntasks"))
    info.cpus_per_task = _to_int(snap.get("cpus_per_task"))
    info.gpus = _known(snap.get("gpus")) or _known(snap.get("gpus_on_node"))
    for attr in ("partition", "account", "qos", "user", "submit_dir", "submit_host", "cluster"):
        setattr(info, attr, _known(snap.get(attr)))
    for key in ("step_id", "gpus_on_node", "nodelist"):
        if _known(snap.get(key)):
            info.extra[key] = snap[key]
    _set_nodes(info, snap.get("nodelist"))


def _set_nodes(info: JobInfo, nodelist: str | None) -> None:
    if info.nodes or not _known(nodelist):
        return
    try:
        info.nodes = expand_hostlist(nodelist or "")
    except SlurmError as exc:
        info.extra["nodelist_error"] = str(exc)


def _fill(info: JobInfo, attr: str, value: Any) -> None:
    if value is not None and getattr(info, attr) is None:
        setattr(info, attr, value)


def _from_scontrol(info: JobInfo, rec: Mapping[str, str]) -> None:
    _fill(info, "name", _known(rec.get("JobName")))
    _fill(info, "user", _user(rec.get("UserId")))
    _fill(info, "account", _known(rec.get("Account")))
    _fill(info, "qos", _known(rec.get("QOS")))
    _fill(info, "partition", _known(rec.get("Partition")))
    _fill(info, "array_job_id", _known(rec.get("ArrayJobId")))
    _fill(info, "array_task_id", _known(rec.get("ArrayTaskId")))
    _fill(info, "nnodes", _to_int(rec.get("NumNodes")))
    # the job's task count: SLURM_NTASKS in a rank's environment is its step's (2 hydra proxies under mpiexec)
    info.ntasks = _to_int(rec.get("NumTasks")) or info.ntasks
    _fill(info, "cpus_per_task", _to_int(rec.get("CPUs/Task")))
    _fill(info, "time_limit", _known(rec.get("TimeLimit")))
    _set_time_limit_seconds(info)
    info.state = _known(rec.get("JobState")) or info.state
    info.exit_code = _known(rec.get("ExitCode")) or info.exit_code
    info.elapsed = _known(rec.get("RunTime")) or info.elapsed
    info.start = _timestamp(rec.get("StartTime")) or info.start
    if info.state in NOT_ENDED_STATES:  # EndTime is when the time limit would end the job
        if _known(rec.get("EndTime")):
            info.extra["time_limit_end"] = _timestamp(rec.get("EndTime"))
    else:
        info.end = _timestamp(rec.get("EndTime")) or info.end
    info.restart_count = max(info.restart_count, _to_int(rec.get("Restarts")) or 0)
    _set_nodes(info, rec.get("NodeList"))
    tres = _known(rec.get("TRES"))
    if info.gpus is None and tres:
        gpu = re.search(r"gres/gpu=(\d+)", tres)
        info.gpus = gpu.group(1) if gpu else None
    for key, name in (
        ("Command", "command"),
        ("WorkDir", "work_dir"),
        ("SubmitTime", "submit_time"),
        ("BatchHost", "batch_host"),
        ("TRES", "tres"),
        ("Reason", "reason"),
        ("StdOut", "stdout"),
        ("StdErr", "stderr"),
    ):
        value = _known(rec.get(key))
        if value is not None:
            info.extra[name] = _timestamp(value) if key == "SubmitTime" else value


def _set_time_limit_seconds(info: JobInfo) -> None:
    if info.time_limit is None or "time_limit_s" in info.extra:
        return
    with contextlib.suppress(SlurmError):
        info.extra["time_limit_s"] = parse_time_limit(info.time_limit)


def _from_sacct(info: JobInfo, parsed: Mapping[str, Any]) -> None:
    # The jobcomp file keeps one line per end of a job: a requeued job (or a reused id) has several; the last wins.
    job = [rec for rec in parsed["jobs"] if rec.get("JobID") == parsed["job"].get("JobID")][-1]
    state = _known(job.get("State"))
    ended = state is not None and state.split(" ", 1)[0] not in NOT_ENDED_STATES
    # Accounting lags behind slurmctld: while the job is not over, sacct may still say PENDING when scontrol
    # already says RUNNING; scontrol's word stands then.  The final outcome comes from sacct.
    if state and (ended or info.state is None):
        info.state = state.split(" ", 1)[0]  # "CANCELLED by 0"
        if " " in state:
            info.extra["state_detail"] = state
    if ended or info.exit_code is None:
        info.exit_code = _known(job.get("ExitCode")) or info.exit_code
        info.elapsed = _known(job.get("Elapsed")) or info.elapsed
    info.start = _timestamp(job.get("Start")) or info.start
    info.end = _timestamp(job.get("End")) or info.end
    _fill(info, "name", _known(job.get("JobName")))
    _fill(info, "user", _user(job.get("User")))
    _fill(info, "account", _known(job.get("Account")))
    _fill(info, "qos", _known(job.get("QOS")))
    _fill(info, "partition", _known(job.get("Partition")))
    _fill(info, "nnodes", _to_int(job.get("NNodes")))
    _fill(info, "time_limit", _known(job.get("Timelimit")))
    _set_time_limit_seconds(info)
    if _known(job.get("Cluster")) and info.cluster is None:
        info.cluster = job["Cluster"]
    _set_nodes(info, job.get("NodeList"))
    if _known(job.get("DerivedExitCode")):
        info.extra["derived_exit_code"] = job["DerivedExitCode"]
    steps = {
        step: {
            k.lower(): _timestamp(v) if k in ("Start", "End") else v
            for k, v in rec.items()
            if k in _STEP_FIELDS and _known(v) is not None
        }
        for step, rec in parsed["steps"].items()
    }
    for step in steps.values():
        if "maxrss" in step:
            with contextlib.suppress(SlurmError):
                step["maxrss_bytes"] = parse_size(step["maxrss"])
    if steps:
        info.extra["steps"] = steps


def _query_sacct(
    job_id: str, timeout: float, env: Mapping[str, str] | None
) -> tuple[str, dict[str, Any]] | None:
    fields = ",".join(SACCT_FIELDS)
    for source, mode in (("sacct", []), ("sacct-jobcomp", ["-c"])):
        answer = _command(["sacct", *mode, "-P", "-n", "-j", job_id, "-o", fields], timeout, env)
        if answer is None:
            return None  # no sacct at all
        rc, out, _err = answer
        if rc != 0:
            continue  # "Slurm accounting storage is disabled": try the jobcomp file
        try:
            parsed = parse_sacct(out.decode("utf-8", "replace"))
        except SlurmError:
            continue
        if parsed["job"]:
            return source, parsed
    return None


def job_info(
    snapshot: Mapping[str, str] | None,
    job_id: str | None = None,
    *,
    query: bool = True,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> JobInfo:
    """Describe a SLURM job from a rank's environment snapshot and, where they answer, SLURM's commands.

    Sources, each recorded in ``JobInfo.sources`` when it answered: ``env`` (the snapshot, attribute names of
    :data:`prov4ml_hpc.environment.SLURM_VARS`), ``scontrol`` (`scontrol show job -o ID`: state, time limit,
    user, account, ...), ``batch_script`` (`scontrol write batch_script ID -`: ``script`` and
    ``script_sha256``), and ``sacct`` or, when accounting is disabled, ``sacct-jobcomp`` (`sacct -c`: final
    state, exit code, elapsed, start, end).  Times are ISO 8601 with the local UTC offset.

    Args:
        snapshot: the SLURM snapshot of a rank (``environment.slurm_snapshot()``), or None when there is none.
        job_id: the job to query; default: the snapshot's ``job_id``.
        query: run the SLURM commands (when installed); False uses the snapshot alone.
        timeout: seconds allowed to each command.
        environ: environment of the commands (default: this process's, so ``SLURM_CONF`` is respected).

    Returns:
        The JobInfo; fields nobody answered are None.  Never raises for a missing command or field.
    """
    snap = dict(snapshot or {})
    info = JobInfo(job_id=_known(str(job_id)) if job_id is not None else _known(snap.get("job_id")))
    if snap:
        _from_snapshot(info, snap)
        info.sources.append("env")
    if not query or info.job_id is None:
        return info
    answer = _command(["scontrol", "show", "job", "-o", info.job_id], timeout, environ)
    if answer is not None and answer[0] == 0:
        try:
            record = parse_scontrol_job(answer[1].decode("utf-8", "replace"), info.job_id)
        except SlurmError:
            record = parse_scontrol_job("")
        if record:
            _from_scontrol(info, record)
            info.sources.append("scontrol")
    answer = _command(["scontrol", "write", "batch_script", info.job_id, "-"], timeout, environ)
    if answer is not None and answer[0] == 0 and answer[1]:
        info.script = answer[1].decode("utf-8", "replace")
        info.script_sha256 = hashlib.sha256(answer[1]).hexdigest()
        info.sources.append("batch_script")
    found = _query_sacct(info.job_id, timeout, environ)
    if found is not None:
        _from_sacct(info, found[1])
        info.sources.append(found[0])
    return info
