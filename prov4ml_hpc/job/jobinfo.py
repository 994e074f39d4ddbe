"""The SLURM job around a run: the JobInfo record and :func:`job_info`, which fills it from the ranks' environment
snapshot, ``scontrol show job`` and ``sacct``.

Never raises for a missing command, a failing command or a missing field: whatever does not answer is recorded
as unknown (None), and ``JobInfo.sources`` lists what did answer.  Commands run with list arguments (no shell)
and a timeout, in the caller's environment, so ``SLURM_CONF`` is respected.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import SlurmError
from .slurm import (
    _STEP_FIELDS,
    NOT_ENDED_STATES,
    SACCT_FIELDS,
    _known,
    _timestamp,
    _to_int,
    _user,
    expand_hostlist,
    parse_sacct,
    parse_scontrol_job,
    parse_size,
    parse_time_limit,
)


@dataclass
class JobInfo:
    """The SLURM job (or the plain launch) around the run; unknown fields are None, never an error."""

    job_id: str | None = None
    name: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    user: str | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    cluster: str | None = None
    submit_dir: str | None = None
    submit_host: str | None = None
    nodes: list[str] = field(default_factory=list)
    nnodes: int | None = None
    ntasks: int | None = None
    cpus_per_task: int | None = None
    gpus: str | None = None
    time_limit: str | None = None
    state: str | None = None  # final state from sacct / scontrol
    exit_code: str | None = None
    elapsed: str | None = None
    start: str | None = None
    end: str | None = None
    restart_count: int = 0
    script: str | None = None  # the batch script text when scontrol could give it
    script_sha256: str | None = None
    sources: list[str] = field(default_factory=list)  # which of env / scontrol / sacct answered
    extra: dict[str, Any] = field(default_factory=dict)


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
