"""kill -9 at random moments: a plain reader sees every row older than the last flush, and no torn row."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import clean_env

import prov4ml_hpc as p4

WRITER = r"""
import sys, threading, time
import prov4ml_hpc as p4
run = p4.start_run('exp', sys.argv[1], run_id=sys.argv[2], system_metrics=False, flush_interval=0.02,
                   buffer_rows=5000)
rec = run.recorder
print(run.rank_file, flush=True)
def monitor():
    last = -1
    while True:
        n = rec.flushed_rows
        if n != last:
            print(n, flush=True)
            last = n
        time.sleep(0.002)
threading.Thread(target=monitor, daemon=True).start()
i = 0
while True:
    p4.log_metric('a', float(i), step=i)
    p4.log_metric('b', -float(i), step=i, context='validation')
    if i % 50_000 == 0:
        p4.log_param(f'p{i}', i)
    i += 1
"""


@pytest.mark.slow
def test_random_sigkill_keeps_every_flushed_row(tmp_path):
    rng = random.Random(20261126)
    kills = 24
    for k in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"kill{k}"],
            env=clean_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        path = proc.stdout.readline().strip()
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        printed = [int(x) for x in out.split()]
        last_flushed = printed[-1] if printed else 0
        rf = p4.read_rank_file(path)  # opens: never a file that HDF5 refuses
        assert rf.status == "running"  # a killed rank never looks completed
        assert rf.nrows >= last_flushed
        if not rf.series:  # killed before the first flush (a loaded machine can take 50 ms to get there)
            assert rf.nrows == 0 and last_flushed == 0
            continue
        a = rf.values("a")
        b = rf.values("b", "validation")
        # exact prefixes: no gap, no torn row, no zero-filled row
        assert np.array_equal(a["step"], np.arange(len(a)))
        assert np.array_equal(a["value"], np.arange(len(a), dtype=float))
        assert np.array_equal(b["value"], -np.arange(len(b), dtype=float))
        assert abs(len(a) - len(b)) <= 1
        assert len(a) + len(b) == rf.nrows
        assert all(int(name[1:]) == value for name, value in rf.params.items())
