"""What a partition of the cluster offers (``sinfo``), the template defaults that fit it, and requests it cannot run.

A job that asks for GPUs on a partition without them is refused by sbatch ("Invalid generic resource (gres)
specification"); one that asks for more nodes, CPUs or time than the partition has pends forever.  Before
rendering or submitting, :func:`query_partition` asks ``sinfo`` once (nothing when it is absent or cannot reach
the controller), :func:`fit_defaults` fills the options the user left out from what the partition has, and
:func:`problems` says which requested values it cannot give, and how to fix them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, SlurmError
from ..job.slurm import parse_time_limit

SINFO_FORMAT = (
    "%P|%D|%G|%c|%l|%a"  # partition (default marked *), nodes, gres, CPUs per node, time limit, state
)
_GPU_GRES = re.compile(r"^gpu(?::([A-Za-z0-9_.-]+))?:(\d+)")


@dataclass(frozen=True)
class Partition:
    """One partition as sinfo describes it (per-node values: the smallest over its node groups)."""

    name: str
    default: bool
    nodes: int
    gpus_per_node: int  # 0: no GPU gres on some node of the partition
    gpu_types: tuple[str, ...]
    cpus_per_node: int
    max_time_s: int | None  # None: no limit
    state: str

    def describe(self) -> str:
        gpus = f"{self.gpus_per_node} GPU(s) per node" if self.gpus_per_node else "no GPUs"
        limit = "no time limit" if self.max_time_s is None else f"time limit {_hms(self.max_time_s)}"
        return f"partition {self.name}: {self.nodes} node(s), {self.cpus_per_node} CPUs and {gpus} per node, {limit}"


def _hms(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def gpus_in_gres(gres: str) -> tuple[int, tuple[str, ...]]:
    """GPUs per node and their types in a sinfo/scontrol Gres field: ``gpu:a100:4(S:0-1),shard:8`` -> (4, ("a100",))."""
    total, types = 0, []
    for item in gres.split(","):
        m = _GPU_GRES.match(item.strip())
        if m:
            total += int(m.group(2))
            if m.group(1):
                types.append(m.group(1))
    return total, tuple(types)


def parse_sinfo(text: str) -> list[Partition]:
    """Partitions from ``sinfo -h -o SINFO_FORMAT`` (one line per group of alike nodes of a partition)."""
    groups: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 6 and fields[0]:
            groups.setdefault(fields[0], []).append(fields)
    out = []
    for raw, lines in groups.items():
        gpus = [gpus_in_gres(f[2]) for f in lines]
        cpus = [int(m.group(0)) for m in (re.match(r"\d+", f[3]) for f in lines) if m]  # "8" or "8+"
        try:
            limit = parse_time_limit(lines[0][4])
        except SlurmError:
            limit = None
        out.append(
            Partition(
                name=raw.rstrip("*"),
                default=raw.endswith("*"),
                nodes=sum(int(f[1]) for f in lines if f[1].isdigit()),
                gpus_per_node=min(n for n, _ in gpus),
                gpu_types=tuple(sorted({t for _, ts in gpus for t in ts})),
                cpus_per_node=min(cpus) if cpus else 0,
                max_time_s=limit,
                state=lines[0][5],
            )
        )
    return out


def query_partition(
    name: str | None = None, *, sinfo: str = "sinfo", timeout: float = 15.0
) -> Partition | None:
    """The partition ``name`` (default: the cluster's default partition) as sinfo sees it.

    None when sinfo is not installed or cannot reach the controller (the job script then keeps the template's
    defaults), or when there is no default partition and none was named.

    Raises:
        ConfigError: sinfo answered and has no partition ``name`` (the message lists the partitions it has).
    """
    exe = shutil.which(sinfo)
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    parts = parse_sinfo(proc.stdout)
    if name:
        found = next((p for p in parts if p.name == name), None)
        if found is None:
            raise ConfigError(
                f"partition {name!r} does not exist on this cluster; sinfo lists "
                f"{', '.join(p.name for p in parts) or 'no partition'}"
            )
        return found
    return next((p for p in parts if p.default), parts[0] if len(parts) == 1 else None)


def fit_defaults(
    template: str, given: Mapping[str, Any], part: Partition
) -> tuple[dict[str, Any], list[str]]:
    """Values for the options the user did not give (``given``) that this partition can run, and what was chosen.

    GPUs per node: all of a node's GPUs (0 on a CPU partition); tasks per node: one per GPU, or up to 4 on a CPU
    partition (never more than its CPUs); multi-node: 2 nodes when the partition has them, else 1.
    """
    if template == "merge":
        return {}, []
    chosen: dict[str, Any] = {}
    if given.get("gpus_per_node") is None:
        chosen["gpus_per_node"] = part.gpus_per_node if template != "array" else min(part.gpus_per_node, 1)
    gpus = _count(given.get("gpus_per_node", chosen.get("gpus_per_node")))
    if given.get("ntasks_per_node") is None and template != "array":
        cpus = max(1, part.cpus_per_node // max(1, int(given.get("cpus_per_task") or 1)))
        chosen["ntasks_per_node"] = gpus if gpus else min(4, cpus)
    if given.get("nodes") is None and template == "multi-node":
        chosen["nodes"] = min(2, max(1, part.nodes))
    notes = [f"{k.replace('_', '-')}={v}" for k, v in chosen.items()]
    return chosen, ([f"{part.describe()}: --{', --'.join(notes)}"] if notes else [])


def _count(gpus: Any) -> int:
    if gpus in (None, "", 0, "0"):
        return 0
    text = str(gpus)
    return int(text.rsplit(":", 1)[-1]) if text.rsplit(":", 1)[-1].isdigit() else 0


def problems(options: Mapping[str, Any], part: Partition) -> list[str]:
    """Why this partition cannot run the job the options ask for (each with a fix); empty when it can."""
    out = []
    nodes = int(options.get("nodes") or 1)
    if nodes > part.nodes:
        out.append(
            f"--nodes={nodes} but partition {part.name} has {part.nodes} node(s): the job would pend forever; "
            f"ask for at most {part.nodes} (or another partition: sinfo -s)"
        )
    gpus = _count(options.get("gpus_per_node"))
    if gpus > part.gpus_per_node:
        have = f"{part.gpus_per_node} GPU(s) per node" if part.gpus_per_node else "no GPUs"
        out.append(
            f"--gpus-per-node={options.get('gpus_per_node')} but partition {part.name} has {have}: sbatch would "
            f"refuse it ('Invalid generic resource (gres) specification'); use --gpus-per-node="
            f"{part.gpus_per_node} or a GPU partition (sinfo -o '%P %G')"
        )
    gtype = str(options.get("gpus_per_node") or "")
    if ":" in gtype and part.gpu_types and gtype.split(":")[0] not in part.gpu_types:
        out.append(
            f"--gpus-per-node={gtype} but partition {part.name} has GPU types {', '.join(part.gpu_types)} only"
        )
    cpus = int(options.get("ntasks_per_node") or 1) * int(options.get("cpus_per_task") or 1)
    if part.cpus_per_node and cpus > part.cpus_per_node:
        out.append(
            f"{cpus} CPUs per node asked (--ntasks-per-node x --cpus-per-task) but the nodes of partition "
            f"{part.name} have {part.cpus_per_node}: the job would pend forever"
        )
    time = options.get("time")
    if isinstance(time, str) and part.max_time_s is not None:
        try:
            wanted = parse_time_limit(time)
        except SlurmError:
            wanted = None  # the renderer says what is wrong with it
        if wanted is None or wanted > part.max_time_s:
            out.append(
                f"--time={time} but partition {part.name} allows at most {_hms(part.max_time_s)}: the job "
                "would pend forever (PartitionTimeLimit); ask for less"
            )
    if part.state.lower() not in ("up", ""):
        out.append(f"partition {part.name} is {part.state}: jobs wait until it is up")
    return out
