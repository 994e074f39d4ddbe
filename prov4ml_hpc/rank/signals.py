"""Signal handling for the launcher and the import hook: record SLURM's signals in the rank file, then chain.

Installed only by :mod:`prov4ml_hpc.run` and :mod:`prov4ml_hpc.hook` (never at import), by default for
SIGTERM and SIGINT; SIGUSR1/SIGUSR2 only when asked (``--signals`` / PROV4ML_HPC_SIGNALS; the templates add the
signal of ``#SBATCH --signal``).  What a signal does (docs/slurm.md, "Signals"):

* SIGTERM/SIGINT whose previous handler is the default action: close the rank file as ``cancelled`` (the
  reason names the signal) within a second, then die by the same signal (exit status as without us).
* SIGUSR1/SIGUSR2 (a warning before the time limit): record a ``signal`` event and flush, and go on: the
  time limit's SIGTERM closes the run later.  The status becomes ``signalled`` only if the run then ends
  otherwise than by completing.
* A previous Python handler (checkpoint-on-signal, Python's KeyboardInterrupt): record the event and flush,
  then call it; the run stays open so the handler and the shutdown can still log, and the launcher closes it
  at the end as ``cancelled`` (TERM/INT).  Ignored signals (SIG_IGN): event, flush, go on.
* A framework that installed its own handler after ours and calls ours as "the previous one" (Lightning
  does): ours only records and flushes; it never closes the file or ends the process behind the framework.

A handler runs in the main thread between two bytecodes, possibly while that thread holds one of the
recorder's locks; so the recorder work is done by a short-lived helper thread that the handler waits for at
most :data:`CLOSE_TIMEOUT` seconds, and a signal can never deadlock the process.

While the main thread closes the rank file, every signal waits for the end of the close (:mod:`.holding`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import schema, settings
from ..errors import ConfigError
from ..log import logger
from . import holding

SIGNALS_ENV = settings.SIGNALS
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT")
CLOSE_TIMEOUT = holding.CLOSE_TIMEOUT  # seconds a handler waits for the helper thread (normally 20-30 ms)

REASONS = {
    "SIGTERM": "SIGTERM (scancel or time limit)",
    "SIGINT": "SIGINT (interrupted: Ctrl-C, or scancel --signal=INT)",
    "SIGUSR1": "SIGUSR1 (sbatch --signal warning before the time limit, or scancel --signal=USR1)",
    "SIGUSR2": "SIGUSR2 (sbatch --signal warning before the time limit, or scancel --signal=USR2)",
}
TERMINATING = ("SIGTERM", "SIGINT")


@dataclass
class SignalState:
    """What the handlers saw: read by the launcher to choose the final status."""

    received: list[tuple[str, float]] = field(default_factory=list)  # (signal name, unix time)
    pending: tuple[str, str] | None = None  # a SIGTERM/SIGINT: (status, reason) to close with later
    closing: bool = False  # a terminating signal is being handled: a repeated one must not cut it short
    warned: tuple[str, str] | None = None  # a SIGUSR1/2 warning: the status if the run does not complete
    close_seconds: float | None = None  # how long the last close from a handler took


state = SignalState()
_previous: dict[int, Any] = {}


def parse_signals(value: str | Iterable[str] | None) -> tuple[signal.Signals, ...]:
    """Signals from a list or a comma-separated string (``TERM,USR1`` or ``SIGTERM``; ``none`` for none).

    Raises:
        ConfigError: an unknown name, or one that cannot be caught (SIGKILL, SIGSTOP).
    """
    if value is None:
        value = settings.get(settings.SIGNALS)
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    out: list[signal.Signals] = []
    for raw in names:
        if not raw or raw.lower() == "none":
            continue
        name = raw.upper() if raw.upper().startswith("SIG") else "SIG" + raw.upper()
        try:
            sig = signal.Signals[name]
        except KeyError:
            raise ConfigError(
                f"unknown signal {raw!r} (from --signals or {SIGNALS_ENV}): use names like "
                "TERM, INT, USR1, USR2, HUP, or 'none'"
            ) from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"{name} cannot be caught; remove it from --signals / {SIGNALS_ENV}")
        if sig not in out:
            out.append(sig)
    return tuple(out)


def install(signals: str | Iterable[str] | None = None) -> tuple[signal.Signals, ...]:
    """Install our handler for each signal (default TERM and INT), remembering the previous one.

    Must be called from the main thread.  Calling it again does not stack handlers.  Returns the signals.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError("prov4ml_hpc.rank.signals.install() must be called from the main thread")
    sigs = parse_signals(signals)
    for sig in sigs:
        current = signal.getsignal(sig)
        if current is _handle:
            continue
        _previous[int(sig)] = current
        signal.signal(sig, _handle)
    return sigs


def uninstall() -> None:
    """Put back the handlers that were there before :func:`install` (where ours is still installed)."""
    for signum, prev in list(_previous.items()):
        if signal.getsignal(signum) is _handle:
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        del _previous[signum]


def reset() -> None:
    """Forget what was received (tests)."""
    global state
    state = SignalState()


def _in_helper(fn: Callable[[], None], what: str) -> bool:
    """Run fn in a helper thread and wait at most CLOSE_TIMEOUT; True when it finished."""
    thread = threading.Thread(target=fn, name=f"prov4ml-hpc-{what}", daemon=True)
    thread.start()
    thread.join(CLOSE_TIMEOUT)
    if thread.is_alive():
        logger.warning(
            "%s after a signal did not finish within %.1f s; going on (everything flushed before "
            "stays in the rank file)",
            what,
            CLOSE_TIMEOUT,
        )
        return False
    return True


def _flush_event(name: str, prev: Any) -> None:
    from . import api

    run = api.active_run()
    if run is None:
        return

    def work() -> None:
        run.recorder.add_record(
            {
                "type": schema.REC_EVENT,
                "name": "signal",
                "context": None,
                "attrs": {
                    "signal": name,
                    "reason": REASONS.get(name, name),
                    "previous_handler": _describe(prev),
                },
            }
        )
        run.recorder.flush()

    _in_helper(work, "flush")


def close_now(status: str, reason: str) -> float | None:
    """Close the active run (no in-job gather: other ranks may be gone).  Returns the seconds it took."""
    from . import api

    run = api.active_run()
    if run is None:
        return None
    run._end_hooks.clear()  # a collective gather after a signal could hang: `prov4ml-hpc merge` does it later
    t0 = time.monotonic()
    _in_helper(lambda: api.close_run(status=status, reason=reason), "close")
    state.close_seconds = time.monotonic() - t0
    return state.close_seconds


def _describe(handler: Any) -> str:
    if handler is signal.SIG_DFL or handler is None:
        return "default"
    if handler is signal.SIG_IGN:
        return "ignore"
    return getattr(handler, "__qualname__", None) or repr(handler)


def _handle(signum: int, frame: Any) -> None:
    sig = signal.Signals(signum)
    name = sig.name
    prev = _previous.get(signum, signal.SIG_DFL)
    state.received.append((name, time.time()))
    terminating = name in TERMINATING
    status = schema.STATUS_CANCELLED if terminating else schema.STATUS_SIGNALLED
    reason = REASONS.get(name, name)
    direct = signal.getsignal(signum) is _handle  # False: a later handler chains to us
    if terminating and state.closing:
        # SLURM delivers SIGTERM twice at a time limit or requeue (slurmstepd and srun both send it): the
        # second arrives while the first handler waits for the close; dying now would leave the file "running"
        return
    if direct and terminating and (prev is signal.SIG_DFL or prev is None):
        state.closing = True
        state.pending = (status, reason)
        close_now(status, reason)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the default action: the process ends with the right status
        time.sleep(1.0)  # the signal is delivered before kill() returns; this is a safety net
        os._exit(128 + signum)
    _flush_event(name, prev)
    if terminating:
        state.pending = (status, reason)
    elif state.warned is None:
        state.warned = (status, reason)
    if direct and prev not in (signal.SIG_IGN, signal.SIG_DFL, None):
        prev(signum, frame)


def final_status(status: str, reason: str | None) -> tuple[str, str | None]:
    """The status to close with, given the signals received: a SIGTERM/SIGINT makes it ``cancelled``; a
    SIGUSR1/2 warning makes a run that did not complete ``signalled``; the reason keeps both stories."""
    if state.pending is not None:
        sig_status, sig_reason = state.pending
    elif state.warned is not None and status != schema.STATUS_COMPLETED:
        sig_status, sig_reason = state.warned
    else:
        return status, reason
    return sig_status, f"{sig_reason}; then {reason}" if reason else sig_reason
