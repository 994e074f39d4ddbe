"""Node-level series are recorded once per node: 4 real MPI ranks on this one node."""

from __future__ import annotations

import os

import pytest
from conftest import clean_env, run_mpi

import prov4ml_hpc as p4

SCRIPT = r"""
import sys, time
import prov4ml_hpc as p4
run = p4.start_run('nodes', sys.argv[1], run_id='dedup', sample_interval=0.2, gather=False)
# a run shorter than codecarbon's start-up gets no codecarbon figures (end_run never waits for it): wait here
assert run.sampler.wait_ready(120)
t = time.time()
while time.time() - t < 2.5:
    sum(i * i for i in range(20000))
    p4.log_metric('work', 1.0)
p4.end_run()
"""


@pytest.mark.mpi
@pytest.mark.slow
def test_node_series_and_energy_come_from_local_rank_zero_only(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    env = clean_env(PROV4ML_HPC_SYSTEM_METRICS="1", PROV4ML_HPC_ENERGY_INTERVAL="1")
    run_mpi(4, [str(script), str(tmp_path)], env=env, timeout=180)
    ranks_dir = tmp_path / "nodes" / "dedup" / "ranks"
    files = sorted(os.listdir(ranks_dir))
    assert files == [f"rank-0000{i}.h5" for i in range(4)]
    for name in files:
        rf = p4.read_rank_file(ranks_dir / name)
        system = {s.name for s in rf.series if s.context == "system"}
        local = rf.attrs["local_rank"]
        assert {"process.cpu_percent", "process.rss"} <= system, (name, system)
        node_level = {n for n in system if n.startswith(("node.", "energy.", "rapl."))}
        if local == 0:
            assert {"node.cpu_percent", "node.memory_used"} <= node_level
            assert rf.attrs["totals"].get("energy_kwh", 0) > 0  # codecarbon's offline tracker, this node once
            assert len(rf.values("process.rss", "system")) >= 2  # codecarbon starts on this thread first
        else:
            assert node_level == set(), (name, node_level)
            assert "energy_kwh" not in rf.attrs["totals"]
