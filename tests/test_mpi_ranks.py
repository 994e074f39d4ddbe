"""Real MPI processes through mpiexec: every rank lands in the same run directory with its own file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import clean_env, run_mpi

import prov4ml_hpc as p4
from prov4ml_hpc import schema

SCRIPT = r"""
import sys
import prov4ml_hpc as p4
run = p4.start_run('mpi', sys.argv[1], system_metrics=False, gather=False)
for step in range(200):
    p4.log_metric('loss', run.global_rank + step / 1000, step=step)
p4.log_param('rank_param', run.global_rank)
with open(f"{sys.argv[1]}.rank{run.global_rank}", "w") as f:
    f.write(f"{run.global_rank} {run.world_size} {run.run_id} {run.rank_file}")
p4.end_run()
"""


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 4])
def test_ranks_agree_on_the_run_and_write_their_own_files(tmp_path, n):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    run_mpi(n, [str(script), str(tmp_path / "runs")], timeout=120)
    lines = [(tmp_path / f"runs.rank{r}").read_text().split() for r in range(n)]
    assert [int(line[0]) for line in lines] == list(range(n))
    assert {line[1] for line in lines} == {str(n)}
    run_ids = {line[2] for line in lines}
    assert len(run_ids) == 1  # agreed over MPI, nobody listed a directory
    run_dir = os.path.join(tmp_path, "runs", "mpi", run_ids.pop())
    files = sorted(os.listdir(os.path.join(run_dir, "ranks")))
    assert files == [schema.rank_file_name(r) for r in range(n)]
    for r in range(n):
        rf = p4.read_rank_file(os.path.join(run_dir, "ranks", files[r]))
        assert (rf.global_rank, rf.attrs["world_size"], rf.status) == (r, n, "completed")
        assert rf.attrs["identity_source"] == ("pmi" if n > 1 else rf.attrs["identity_source"])
        assert np.allclose(rf.values("loss")["value"], [r + s / 1000 for s in range(200)])
        assert rf.params == {"rank_param": r}


@pytest.mark.mpi
def test_without_mpi4py_ranks_need_a_shared_run_id(tmp_path):
    """Under mpiexec with mpi4py hidden, start_run fails fast with the fix in the message."""
    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.modules['mpi4py'] = None\n" + SCRIPT)
    proc = run_mpi(2, [str(script), str(tmp_path / "runs")], timeout=60, check=False)
    assert proc.returncode != 0
    assert "PROV4ML_HPC_RUN_ID" in proc.stderr and "cannot agree on a run id" in proc.stderr
    env = clean_env(PROV4ML_HPC_RUN_ID="shared-id")
    proc = run_mpi(2, [str(script), str(tmp_path / "runs")], env=env, timeout=60)
    assert sorted(os.listdir(tmp_path / "runs" / "mpi" / "shared-id" / "ranks")) == [
        "rank-00000.h5",
        "rank-00001.h5",
    ]
