"""The job's totals (energy, emissions) from the ranks' ``totals``: each measurement counted exactly once.

The rule (docs/metrics.md, "Job totals"):

- GPU energy (``gpu_energy_j``, {GPU UUID: joules}): NVML's counter of one GPU can be reported by several ranks
  of its node (local rank 0 reports every GPU of the node, every rank its own).  Per attempt and GPU UUID the
  largest value reported is taken (the counter that ran longest), never a sum; the job's ``gpu_energy_j`` is the
  sum over those, ``gpus_measured`` the number of distinct UUIDs.
- Every other number (codecarbon's ``energy_kwh``, ``emissions_kg_co2eq``, ...; RAPL's ``rapl_energy_j`` per
  domain) describes a whole node: per attempt and node the largest value any rank of the node reported is
  taken, then these are summed over nodes and attempts.  Nested numbers (per domain) go key by key.
- A rank with no node name counts as a node of its own.  Strings and booleans are not totals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .model import RankSummary

GPU_ENERGY = "gpu_energy_j"
GPUS_MEASURED = "gpus_measured"


def job_totals(ranks: Iterable[RankSummary]) -> dict[str, Any]:
    """The job's totals by the rule above; the same ranks give the same bits, whatever their order."""
    per_gpu: dict[tuple[int, str], float] = {}
    per_node: dict[tuple[int, str], dict[str, Any]] = {}
    for r in ranks:
        if not r.totals:
            continue
        node = r.node or f"rank {r.global_rank}"
        for key, value in r.totals.items():
            if key == GPU_ENERGY and isinstance(value, dict):
                for uuid, joules in value.items():
                    if _number(joules):
                        k = (r.attempt, str(uuid))
                        per_gpu[k] = max(per_gpu.get(k, -math.inf), float(joules))
            else:
                _max_into(per_node.setdefault((r.attempt, node), {}), key, value)
    out: dict[str, Any] = {}
    for group in sorted(per_node):
        _sum_into(out, per_node[group])
    if per_gpu:
        out[GPU_ENERGY] = math.fsum(per_gpu[k] for k in sorted(per_gpu))
        out[GPUS_MEASURED] = len({uuid for _, uuid in per_gpu})
    return dict(sorted(out.items()))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _max_into(acc: dict[str, Any], key: str, value: Any) -> None:
    if _number(value):
        prev = acc.get(key)
        acc[key] = value if not _number(prev) else max(prev, value)
    elif isinstance(value, dict):
        sub = acc.setdefault(key, {})
        if isinstance(sub, dict):
            for k, v in value.items():
                _max_into(sub, str(k), v)


def _sum_into(acc: dict[str, Any], values: dict[str, Any]) -> None:
    for key in sorted(values):
        value = values[key]
        if _number(value):
            prev = acc.get(key, 0)
            if _number(prev):
                acc[key] = prev + value
        elif isinstance(value, dict) and value:
            sub = acc.setdefault(key, {})
            if isinstance(sub, dict):
                _sum_into(sub, value)
