"""A signal sweep over the launcher's close: signals sent at many offsets into it, each rank file checked.

One case: ``python -m prov4ml_hpc.run`` runs a script that logs ``rows`` values and returns; the moment it
prints its last line the close begins (the script's end), and the signal(s) are sent ``offset`` seconds later.
The case holds when the process ends (by itself or by the signal) within a deadline and its rank file is
closed (a final status, never ``running``) with every row.  Used by tests/test_signal_sweep.py (a short sweep in
CI) and benchmarks/sweep_signals.py (a long one).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

SCRIPT = """
import sys
import prov4ml_hpc as p4
rows = int(sys.argv[1])
for i in range(rows):
    p4.log_metric("x", float(i), step=i)
print("closing", flush=True)
"""


@dataclass
class Case:
    kind: str  # TERM, INT, TERM2 (two SIGTERMs 3 ms apart), INTTERM
    offset: float  # seconds after the script's last line
    returncode: int | None = None
    status: str | None = None
    rows: int | None = None
    hung: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        from prov4ml_hpc import schema

        return not self.hung and self.status in schema.FINAL_STATUSES and self.rows == self.expected

    expected: int = 0

    def __str__(self) -> str:
        return (
            f"{self.kind}@{self.offset * 1000:.0f}ms: rc={self.returncode} status={self.status} "
            f"rows={self.rows}/{self.expected}{' HUNG' if self.hung else ''}"
        )


SIGNALS = {
    "TERM": (signal.SIGTERM,),
    "INT": (signal.SIGINT,),
    "TERM2": (signal.SIGTERM, signal.SIGTERM),
    "INTTERM": (signal.SIGINT, signal.SIGTERM),
}


def run_case(
    folder: str, kind: str, offset: float, rows: int, env: dict[str, str], deadline: float = 30
) -> Case:
    """One launcher process, signalled ``offset`` s after its script ended; its rank file read back."""
    from prov4ml_hpc.merge.reader import read_rank_file

    case = Case(kind, offset, expected=rows)
    run_root = os.path.join(folder, "runs")
    run_id = f"{kind}-{int(offset * 1e6)}-{os.getpid()}-{time.monotonic_ns()}"
    script = os.path.join(folder, "sweep_script.py")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "prov4ml_hpc.run",
        "--run-dir",
        run_root,
        "--run-id",
        run_id,
        script,
        str(rows),
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        if line.strip() == "closing":
            time.sleep(offset)
            for i, sig in enumerate(SIGNALS[kind]):
                if i:
                    time.sleep(0.003)
                if proc.poll() is None:
                    proc.send_signal(sig)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            case.hung = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    case.seconds = time.monotonic() - t0
    case.returncode = proc.returncode
    (path,) = glob.glob(os.path.join(run_root, "experiment", run_id, "ranks", "*.h5")) or [None]
    if path is not None:
        rf = read_rank_file(path)
        case.status, case.rows = rf.status, rf.nrows
    return case


def sweep(
    kinds: tuple[str, ...],
    offsets: list[float],
    rows: int,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> list[Case]:
    """Every (kind, offset) case, ``workers`` at a time; returns them in order."""
    env = dict(env or os.environ)
    env.setdefault("PROV4ML_HPC_SYSTEM_METRICS", "0")
    with tempfile.TemporaryDirectory(prefix="p4-sweep-") as folder, ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(run_case, folder, k, o, rows, env) for k in kinds for o in offsets]
        return [j.result() for j in jobs]
