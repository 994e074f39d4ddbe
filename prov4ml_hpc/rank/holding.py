"""Signals held while the main thread closes the rank file, then sent again to the handlers that were there.

``api.close_run`` wraps the close in :class:`hold`: the handlers of :data:`HELD` are replaced by one that only
notes the signal, so nothing can interrupt the close (a KeyboardInterrupt inside the HDF5 close, a process killed
half-way through the final flush: before, a SIGTERM in the first ~40 ms of the close left the file ``running``).
The moment the file is closed the signals are sent again, in order, once each, to the handlers that were there
(ours, the user's, Python's, the default action).  A terminating one that finds the close still running after
:data:`CLOSE_TIMEOUT` seconds ends the process anyway (everything flushed before stays readable).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from ..log import logger

CLOSE_TIMEOUT = 10.0  # seconds: a close normally takes 20-30 ms; SLURM's SIGKILL comes KillWait (30 s) later
HELD = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT")
_ENDING = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


class hold:  # noqa: N801 - used as a context manager, like contextlib's
    """Hold the signals of :data:`HELD` while the main thread closes the rank file (see the module docstring).

    Outside the main thread (a close done by a signal's helper thread) it does nothing: the main thread is then
    inside our handler, and a repeated signal returns at once (``state.closing``).
    """

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.held: list[int] = []
        self.timer: threading.Timer | None = None

    def __enter__(self) -> hold:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in HELD:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                current = signal.getsignal(sig)
                if current is signal.SIG_IGN or current is None:  # ignored, or not set from Python
                    continue
                signal.signal(sig, self._note)
                self.saved[int(sig)] = current
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                continue
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.held.append(signum)
        if self.timer is None and signal.Signals(signum).name in _ENDING:
            self.timer = threading.Timer(CLOSE_TIMEOUT, _give_up, (signum,))
            self.timer.daemon = True
            self.timer.start()

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        held, self.held = self.held, []
        for signum in dict.fromkeys(held):  # each signal once, in order, to the handler that was there
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signum)  # delivered (and its Python handler run) before the next bytecode


def _give_up(signum: int) -> None:
    """The close did not finish within CLOSE_TIMEOUT of a terminating signal: end the process as asked."""
    logger.warning(
        "closing the rank file did not finish within %.0f s of %s; exiting now (everything flushed before "
        "stays readable; the merge calls the rank partial)",
        CLOSE_TIMEOUT,
        signal.Signals(signum).name,
    )
    sys.stderr.flush()
    os._exit(128 + signum)
