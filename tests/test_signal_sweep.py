"""Signals at many moments of the launcher's close (tests/signal_sweep.py): every file ends closed with every row.

Before the fix, SIGTERM in the first ~40 ms of the close left the file `running` and lost rows (the active run
was cleared before closing; the handler then found no run and killed the process mid-close); SIGINT there raised
KeyboardInterrupt inside the HDF5 close.  The long sweep is benchmarks/sweep_signals.py.
"""

from __future__ import annotations

from conftest import clean_env
from signal_sweep import sweep

OFFSETS = [i * 0.01 for i in range(9)]  # 0-80 ms after the script's end: the close of 100,000 rows and after


def test_signals_during_the_close_never_lose_a_row():
    cases = sweep(("TERM", "INT", "TERM2"), OFFSETS, 100_000, env=clean_env())
    bad = [str(c) for c in cases if not c.ok]
    assert not bad, f"{len(bad)} of {len(cases)} cases lost data or hung:\n" + "\n".join(bad)
    # each process ended as asked: by the signal, or by itself when the signal came after its end
    assert all(c.returncode in (0, -_first_signal(c.kind)) for c in cases), [str(c) for c in cases]


def _first_signal(kind: str) -> int:
    import signal

    return int(signal.SIGINT if kind.startswith("INT") else signal.SIGTERM)
