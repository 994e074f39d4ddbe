"""Helpers of the merge and gather tests: rank files made by the real API, and run.h5 contents to compare."""

from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np

import prov4ml_hpc as p4
from prov4ml_hpc import schema


def make_rank(
    root: str, rank: int, world: int, *, run_id: str = "m1", attempt: int = 0, logs=None, end: bool = True
) -> p4.Run:
    """Start rank `rank` of `world` in this process (PMI environment), run logs(p4), end the run."""
    env = {"PMI_RANK": str(rank), "PMI_SIZE": str(world)}
    if attempt:
        env["PROV4ML_HPC_ATTEMPT"] = str(attempt)
    run = p4.start_run("exp", root, run_id=run_id, system_metrics=False, gather=False, environ=env)
    if logs is not None:
        logs(p4, rank)
    if end:
        p4.end_run()
    return run


def make_energy_run(root: str, run_id: str = "energy") -> str:
    """Three ranks on two nodes with energy totals as the samplers write them at close (their sink,
    ``recorder.update_totals``; no GPU here).  Local rank 0 of node-a reports every GPU of its node, rank 1
    (local rank 1 there) its own GPU-b: one NVML counter seen by two ranks.  codecarbon's come once per node.
    The job's totals: energy_kwh 0.75, emissions 0.15, gpu_energy_j 650 (300 + max(250, 200) + 100), 3 GPUs."""
    values = {
        0: {"energy_kwh": 0.5, "emissions_kg_co2eq": 0.1, "gpu_energy_j": {"GPU-a": 300.0, "GPU-b": 250.0}},
        1: {"gpu_energy_j": {"GPU-b": 200.0}},
        2: {"energy_kwh": 0.25, "emissions_kg_co2eq": 0.05, "gpu_energy_j": {"GPU-c": 100.0}},
    }
    nodes = {0: ("node-a", 0), 1: ("node-a", 1), 2: ("node-b", 0)}
    for rank in range(3):
        node, local = nodes[rank]
        env = {"PMI_RANK": str(rank), "PMI_SIZE": "3", "PMI_LOCAL_RANK": str(local), "SLURMD_NODENAME": node}
        run = p4.start_run("exp", root, run_id=run_id, system_metrics=False, gather=False, environ=env)
        p4.log_metric("loss", 1.0, step=0)
        run.recorder.update_totals(values[rank])
        p4.end_run()
    return run_dir(root, run_id)


def run_dir(root: str, run_id: str = "m1") -> str:
    return os.path.join(root, "exp", run_id)


def dump_h5(path: str, skip_attrs=schema.VOLATILE_ATTRS) -> dict:
    """Everything in an HDF5 file (attributes and data), for equality checks; volatile root attrs left out."""
    out: dict = {}

    def attrs(obj, root: bool) -> dict:
        return {k: _plain(v) for k, v in obj.attrs.items() if not (root and k in skip_attrs)}

    with h5py.File(path, "r", locking=False) as f:
        out["/"] = attrs(f, True)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (attrs(obj, False), _plain(obj[()]))
            else:
                out[name] = attrs(obj, False)

        f.visititems(visit)
    return out


def _plain(v):
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "O":
            return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
        return v.tobytes() + str(v.dtype).encode()  # bit-exact, NaN == NaN
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.tobytes() + str(v.dtype).encode()
    return v


def sha256_tree(path: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out
