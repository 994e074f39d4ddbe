"""The import hook: with ``PROV4ML_HPC_HOOK=1`` every rank process of a job records from interpreter start.

Two ways to run :func:`activate` at interpreter start (docs/slurm.md, "The import hook"):

* the job script puts :func:`site_dir` (``prov4ml_hpc/_hook_site``, holding a ``sitecustomize.py`` that chains
  to any other one) on ``PYTHONPATH``; the shipped templates do this: it works with ``pip install .``,
  ``pip install -e .`` and a plain checkout, and no installation step can be forgotten;
* or ``python -m prov4ml_hpc.hook install`` writes a one-line ``prov4ml_hpc_hook.pth`` into this
  interpreter's site-packages, after which the one variable is enough.

:func:`activate` starts a run only in a rank process of the job: a process of an ``srun`` step or one with MPI
/ torchrun rank variables (``PROV4ML_HPC_HOOK=all``: any top-level process); never in a child of a recording
process (fork: the API's fork hooks; spawn, forkserver and subprocesses: the marker variable
:data:`MARKER_ENV` that a recording process sets), never in ``prov4ml-hpc`` itself or a torchrun agent, never
twice.  It never raises: a process it cannot record runs unrecorded, with one warning.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .. import settings

HOOK_ENV = settings.HOOK
MARKER_ENV = settings.HOOK_PARENT  # pid of the recording process this one descends from
PTH_NAME = "prov4ml_hpc_hook.pth"
# The .pth line runs while site.py is still adding site-packages folders, when prov4ml_hpc's dependencies may
# not be importable yet (a venv over system site-packages, user site, conda layers): it only puts a one-shot
# finder first on sys.meta_path, which activates the hook when site.py imports `sitecustomize`, after every
# folder is on sys.path.  With PROV4ML_HPC_HOOK unset it costs one dictionary lookup.
_PTH_CODE = (
    "import sys\n"
    "class _Prov4mlHpcHookFinder:\n"
    " @classmethod\n"
    " def find_spec(cls, name, path=None, target=None):\n"
    "  if name != 'sitecustomize':\n"
    "   return None\n"
    "  sys.meta_path.remove(cls)\n"
    "  try:\n"
    "   from prov4ml_hpc.hook import activate\n"
    "  except ImportError:\n"
    "   return None\n"
    "  activate()\n"
    "sys.meta_path.insert(0, _Prov4mlHpcHookFinder)\n"
)
PTH_LINE = f'import os; os.environ.get("PROV4ML_HPC_HOOK", "") not in ("", "0") and exec({_PTH_CODE!r})\n'
_AGENT_MODULES = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.elastic")
_OWN_MODULES = ("prov4ml_hpc",)

_activated = False
_exit_code: Any = None
_real_exit = sys.exit


def site_dir() -> str:
    """The folder to put on PYTHONPATH so that ``sitecustomize`` runs :func:`activate` at interpreter start."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hook_site")


def command_target(orig_argv: Sequence[str]) -> tuple[str, str]:
    """What the interpreter runs: ("path", script), ("module", name), ("command", code) or ("stdin", "")."""
    args = list(orig_argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "-m"):
            value = args[i + 1] if i + 1 < len(args) else ""
            return ("command" if arg == "-c" else "module"), value
        if arg.startswith(("-c", "-m")) and not arg.startswith("--"):
            return ("command" if arg[1] == "c" else "module"), arg[2:]
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            i += 2
            continue
        if arg == "-" or not arg.startswith("-"):
            return ("stdin", "") if arg == "-" else ("path", arg)
        i += 1
    return "stdin", ""


def should_activate(
    environ: Mapping[str, str] | None = None, orig_argv: Sequence[str] | None = None
) -> tuple[bool, str]:
    """Whether this process is one the hook records, and why (pure: reads only its arguments and sys.modules)."""
    env = os.environ if environ is None else environ
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    try:
        value = settings.get(HOOK_ENV, env)
    except Exception as exc:  # noqa: BLE001 - the hook never raises: the process runs unrecorded, and says why
        return False, str(exc)
    if value in settings.FALSE_WORDS:
        return False, f"{HOOK_ENV} is not set"
    if _activated:
        return False, "the hook already ran in this process"
    if env.get(MARKER_ENV):
        return False, f"a child of the recording process {env[MARKER_ENV]} ({MARKER_ENV} is set)"
    if "--multiprocessing-fork" in argv:
        return False, "a multiprocessing spawn child"
    kind, target = command_target(argv)
    if kind == "command" and "from multiprocessing" in target:
        return False, "a multiprocessing helper (forkserver, resource tracker)"
    if kind == "module" and target.startswith(_OWN_MODULES + _AGENT_MODULES):
        return False, f"python -m {target} (prov4ml-hpc itself or a torchrun agent)"
    if kind == "path" and os.path.basename(target) in ("prov4ml-hpc", "torchrun"):
        return False, f"{os.path.basename(target)} itself"
    api = sys.modules.get("prov4ml_hpc.rank.api")
    if api is not None and api.active_run() is not None:
        return False, "a run is already active in this process"
    if value in ("all", "always"):
        return True, f"{HOOK_ENV}={value}: every top-level process"
    from ..job.environment import ranks_from_env

    try:
        found = ranks_from_env(env)
    except Exception as exc:  # noqa: BLE001 - a broken environment is reported by start_run, not here
        return False, f"the launcher environment is unreadable: {exc}"
    if found is None:
        return False, (
            "not a rank process: no srun step (SLURM_STEP_ID) and no MPI/torchrun rank variables "
            "(a helper in the batch script?)"
        )
    return True, f"rank {found[1]} of {found[2]} (from {found[0]})"


def activate() -> Any:
    """Start this process's run if it is a rank process (see the module docstring).  Never raises.

    Returns the :class:`~prov4ml_hpc.api.Run`, or None when this process is not recorded.
    """
    global _activated
    try:
        ok, why = should_activate()
    except Exception:  # noqa: BLE001 - never break the interpreter start
        return None
    if not ok:
        return None
    _activated = True
    os.environ[MARKER_ENV] = str(os.getpid())
    from ..log import logger
    from . import api, signals

    try:
        signals.install()
        run = api.start_run()
    except Exception as exc:  # noqa: BLE001 - the script must run even when recording cannot start
        try:
            signals.uninstall()
        except Exception:  # noqa: BLE001, S110
            pass
        sys.stderr.write(
            f"prov4ml-hpc hook: not recording this process ({' '.join(sys.orig_argv)}): "
            f"{type(exc).__name__}: {exc}\n"
        )
        return None
    run.started_by = "hook"
    logger.info("hook: recording %s", why)
    _install_exit_hooks()
    return run


# ---- exit status under the hook ------------------------------------------------------------------------
def _recording_exit(code: Any = None) -> None:
    """sys.exit that remembers its code (atexit cannot see the exit status otherwise)."""
    global _exit_code
    _exit_code = code
    _real_exit(code)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    from .. import schema
    from . import api, crash, signals

    active = api.active_run()
    interrupted = issubclass(exc_type, KeyboardInterrupt)
    if active is not None:
        active._end_hooks.clear()  # no collective gather from a failing rank: merge later
        if not interrupted:
            import traceback

            text = "".join(traceback.format_exception(exc_type, exc, tb))
            crash.record_exception(active, exc_type, exc, text)
        if not interrupted or signals.state.pending is not None:
            status, reason = signals.final_status(
                schema.STATUS_FAILED, f"uncaught {exc_type.__name__}: {exc}"
            )
            api.close_run(status=status, reason=reason)
    _prev_excepthook(exc_type, exc, tb)  # the API's hook: closes what is still open, prints the traceback,
    # and aborts MPI when the code initialised it (crash.should_abort)


def _at_exit() -> None:
    from .. import schema
    from . import api, signals

    active = api.active_run()
    if active is None or os.getpid() != active.recorder._pid:
        return
    code, _ = _code_of(_exit_code)
    status, reason = signals.final_status(
        *((schema.STATUS_COMPLETED, None) if code == 0 else (schema.STATUS_FAILED, f"exit code {code}"))
    )
    if status != schema.STATUS_COMPLETED:
        active._end_hooks.clear()  # no collective gather from a rank that did not complete: merge later
    api.close_run(status=status, reason=reason)


def _code_of(code: Any) -> tuple[int, str | None]:
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code, None
    return 1, str(code)


_prev_excepthook: Any = sys.__excepthook__


def _install_exit_hooks() -> None:
    import atexit

    global _prev_excepthook
    sys.exit = _recording_exit
    _prev_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_at_exit)  # registered after the API's: runs before it (atexit is last-in, first-out)


# ---- the .pth file -------------------------------------------------------------------------------------
def default_site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def install_pth(site_packages: str | None = None) -> str:
    """Write ``prov4ml_hpc_hook.pth`` into site-packages (this interpreter's by default); returns its path."""
    folder = site_packages or default_site_packages()
    path = os.path.join(folder, PTH_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(PTH_LINE)
    os.replace(tmp, path)
    return path


def uninstall_pth(site_packages: str | None = None) -> str | None:
    """Remove the .pth file; returns its path, or None when it was not there."""
    path = os.path.join(site_packages or default_site_packages(), PTH_NAME)
    try:
        os.remove(path)
    except FileNotFoundError:
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m prov4ml_hpc.hook site-dir|install|uninstall|status|check``."""
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    target = args[1] if len(args) > 1 else None
    if cmd == "site-dir":
        print(site_dir())
    elif cmd == "install":
        print(install_pth(target))
    elif cmd == "uninstall":
        removed = uninstall_pth(target)
        print(removed or "not installed")
    elif cmd == "status":
        path = os.path.join(target or default_site_packages(), PTH_NAME)
        print(f"pth: {path if os.path.exists(path) else 'not installed'}")
        print(f"site dir (for PYTHONPATH): {site_dir()}")
    elif cmd == "check":
        ok, why = should_activate()
        print(f"{'would record' if ok else 'would not record'}: {why}")
    else:
        print(
            "usage: python -m prov4ml_hpc.hook site-dir|install [SITE]|uninstall [SITE]|status|check",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
