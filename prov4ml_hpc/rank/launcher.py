"""The launcher used under ``srun``: ``python -m prov4ml_hpc.run [options] SCRIPT|-m MODULE|-c CMD [ARGS...]``.

Like ``python`` (and mpi4py's ``python -m mpi4py``) it runs the code as ``__main__`` through runpy, with
``sys.argv`` and ``sys.path[0]`` set as python sets them; around it, it starts this rank's run, installs the
signal handlers (:mod:`prov4ml_hpc.signals`), and always flushes and closes the rank file with the final status:
``completed`` (exit code 0), ``failed`` (non-zero exit code or uncaught exception: the traceback is saved as
an artifact) or ``cancelled``/``signalled`` (a signal).  Its own options stop at the script name; each one can
also come from the environment variable named in :data:`OPTIONS`.  On an uncaught exception, when the code
initialised MPI, it calls ``MPI.COMM_WORLD.Abort(1)`` after closing the file, so the other ranks do not hang
(``PROV4ML_HPC_MPI_ABORT=0``: not).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from .. import schema, settings
from .._version import __version__
from ..errors import Prov4mlHpcError
from . import crash

PROG = "prov4ml-hpc run"

# option -> (attribute, environment variable, takes a value, help)
OPTIONS: dict[str, tuple[str, str | None, bool, str]] = {
    "--run-dir": ("run_dir", settings.RUN_DIR, True, "RUN_ROOT of the run [./prov4ml_runs]"),
    "--experiment": ("experiment", settings.EXPERIMENT, True, "experiment name [experiment]"),
    "--run-id": ("run_id", settings.RUN_ID, True, "run id, the same on every rank [from SLURM/MPI]"),
    "--flush-interval": (
        "flush_interval",
        settings.FLUSH_INTERVAL,
        True,
        "seconds between flushes [1.0]",
    ),
    "--buffer-rows": ("buffer_rows", settings.BUFFER_ROWS, True, "rows buffered before a flush [8192]"),
    "--sample-interval": (
        "sample_interval",
        settings.SAMPLE_INTERVAL,
        True,
        "seconds between system samples [1.0]",
    ),
    "--no-system-metrics": (
        "system_metrics",
        settings.SYSTEM_METRICS,
        False,
        "do not sample CPU/memory/GPU/energy",
    ),
    "--copy-artifacts": (
        "copy_artifacts",
        settings.COPY_ARTIFACTS,
        False,
        "copy logged artifacts into the run directory",
    ),
    "--no-gather": (
        "gather",
        settings.GATHER,
        False,
        "no in-job gather at the end (run `prov4ml-hpc merge` later)",
    ),
    "--signals": (
        "signals",
        settings.SIGNALS,
        True,
        "signals to record, comma-separated, or 'none' [TERM,INT]",
    ),
}

USAGE = f"""usage: {PROG} [options] SCRIPT [ARGS...]
       {PROG} [options] -m MODULE [ARGS...]
       {PROG} [options] -c COMMAND [ARGS...]

Run a Python script as this rank of a prov4ml-hpc run (use it under srun / mpiexec).
Options stop at the script name; every option can also be set by its environment variable.

options:
  -h, --help               show this help and exit
  --version                show the version and exit
""" + "".join(
    f"  {opt + (' VALUE' if val else ''):<24} {hlp} (${env})\n" for opt, (_, env, val, hlp) in OPTIONS.items()
)


class UsageError(Prov4mlHpcError):
    """The launcher's command line is wrong (exit status 2)."""


@dataclass
class LaunchOptions:
    """What the command line says; None means "not given" (start_run then reads the environment)."""

    kind: str = "path"  # path, module, command
    target: str = ""
    args: list[str] = field(default_factory=list)
    run_dir: str | None = None
    experiment: str | None = None
    run_id: str | None = None
    flush_interval: float | None = None
    buffer_rows: int | None = None
    sample_interval: float | None = None
    system_metrics: bool | None = None
    copy_artifacts: bool | None = None
    gather: bool | None = None
    signals: str | None = None


def _number(opt: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{opt} {raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if value <= 0:
        raise UsageError(f"{opt} {raw!r}: must be positive")
    return value


def parse_args(argv: list[str]) -> LaunchOptions | str:
    """Parse the launcher's command line.  Returns the options, or "help"/"version".

    Raises:
        UsageError: an unknown option, a missing value, or no script.
    """
    opts = LaunchOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            return "help"
        if arg == "--version":
            return "version"
        if arg in ("-m", "-c"):
            if i + 1 >= len(argv):
                raise UsageError(f"{arg} needs a value ({'a module name' if arg == '-m' else 'Python code'})")
            opts.kind = "module" if arg == "-m" else "command"
            opts.target, opts.args = argv[i + 1], argv[i + 2 :]
            return opts
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=")
        if name not in OPTIONS:
            raise UsageError(
                f"unknown option {name!r}; the options are {', '.join(OPTIONS)} "
                "(they come before the script name)"
            )
        attr, _, takes_value, _ = OPTIONS[name]
        if takes_value:
            if eq:
                raw = inline
            elif i + 1 < len(argv):
                i += 1
                raw = argv[i]
            else:
                raise UsageError(f"{name} needs a value")
            if attr == "flush_interval" or attr == "sample_interval":
                setattr(opts, attr, _number(name, raw, float))
            elif attr == "buffer_rows":
                setattr(opts, attr, _number(name, raw, int))
            else:
                setattr(opts, attr, raw)
        else:
            if eq:
                raise UsageError(f"{name} takes no value")
            setattr(opts, attr, attr == "copy_artifacts")  # the --no-* flags set False, --copy-artifacts True
        i += 1
    if i >= len(argv):
        raise UsageError("no script given: give SCRIPT, -m MODULE or -c COMMAND after the options")
    opts.kind, opts.target, opts.args = "path", argv[i], argv[i + 1 :]
    return opts


# ---- running the code ------------------------------------------------------------------------------------
def _set_sys_argv_and_path(opts: LaunchOptions) -> None:
    """sys.argv and sys.path[0] as `python SCRIPT`, `python -m MODULE` and `python -c CMD` set them."""
    if opts.kind == "path":
        sys.argv[:] = [opts.target, *opts.args]
        first = os.path.dirname(os.path.realpath(opts.target))
    elif opts.kind == "module":
        sys.argv[:] = [opts.target, *opts.args]  # runpy replaces argv[0] with the module's file
        first = os.getcwd()
    else:
        sys.argv[:] = ["-c", *opts.args]
        first = ""
    if sys.flags.safe_path or not sys.path:  # `python -P`: python itself added nothing
        return
    sys.path[0] = first  # was the launcher's own entry: the cwd (`python -m`) or the console script's folder


def _exec_as_main(code: Any, file: str | None) -> None:
    """Execute code in a fresh ``__main__`` module, left in sys.modules as python leaves its own."""
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(
        {"__builtins__": __builtins__, "__spec__": None, "__package__": None, "__cached__": None}
    )
    if file is not None:
        from importlib.machinery import SourceFileLoader

        main.__dict__.update({"__file__": file, "__loader__": SourceFileLoader("__main__", file)})
    sys.modules["__main__"] = main
    exec(code, main.__dict__)  # noqa: S102 - this is what `python SCRIPT` and `python -c CMD` do


def run_code(opts: LaunchOptions) -> None:
    """Run the script/module/command as __main__ (exceptions propagate)."""
    import runpy

    if opts.kind == "path":
        path = os.path.abspath(opts.target)
        if os.path.isfile(path):
            with open(path, "rb") as f:  # bytes: compile() honours a coding cookie
                code = compile(f.read(), path, "exec", dont_inherit=True)
            _exec_as_main(code, path)  # sys.argv[0] stays as typed, __file__ is absolute: as python
        elif os.path.exists(path):
            runpy.run_path(path, run_name="__main__")  # a folder or zip file with __main__.py
        else:
            raise FileNotFoundError(
                2, f"can't open file {path!r}: [Errno 2] No such file or directory", opts.target
            )
    elif opts.kind == "module":
        runpy.run_module(opts.target, run_name="__main__", alter_sys=True)
    else:
        _exec_as_main(compile(opts.target, "<string>", "exec", dont_inherit=True), None)


def _exit_code(exc: SystemExit) -> tuple[int, str | None]:
    code = exc.code
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code, None
    return 1, str(code)


def _finish(status: str, reason: str | None, *, gather: bool) -> None:
    from . import api, signals

    run = api.active_run()
    if run is None:
        return
    status, reason = signals.final_status(status, reason)
    if not gather or status != schema.STATUS_COMPLETED:
        run._end_hooks.clear()  # a collective gather from a rank that did not complete could hang
    api.close_run(status=status, reason=reason)


def launch(argv: list[str]) -> int:
    """The `prov4ml-hpc run` command: parse argv, run the code as this rank, return the exit status.

    On an uncaught exception under an initialised MPI this calls ``MPI.COMM_WORLD.Abort(1)`` and does not
    return.  Options come before SCRIPT / -m MODULE / -c CMD; see :data:`OPTIONS`.
    """
    try:
        parsed = parse_args(list(argv))
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\n{PROG}: error: {exc}\n")
        return 2
    if parsed == "help":
        sys.stdout.write(USAGE)
        return 0
    if parsed == "version":
        sys.stdout.write(f"prov4ml-hpc {__version__}\n")
        return 0
    assert isinstance(parsed, LaunchOptions)  # noqa: S101 - narrowing for type checkers
    return _launch(parsed)


def _launch(opts: LaunchOptions) -> int:
    from . import api, signals

    os.environ[settings.HOOK_PARENT] = str(
        os.getpid()
    )  # children (spawn, subprocess) never start a hooked run
    try:
        signals.install(opts.signals)
        run = api.start_run(
            opts.experiment,
            opts.run_dir,
            run_id=opts.run_id,
            flush_interval=opts.flush_interval,
            buffer_rows=opts.buffer_rows,
            copy_artifacts=opts.copy_artifacts,
            system_metrics=opts.system_metrics,
            sample_interval=opts.sample_interval,
            gather=opts.gather,
        )
    except Prov4mlHpcError as exc:
        signals.uninstall()
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not cost the training: run it unrecorded
        signals.uninstall()
        sys.stderr.write(
            f"{PROG}: warning: not recording this rank, the script runs anyway: {type(exc).__name__}: {exc} "
            "(please report this)\n"
        )
        run = None
    if run is not None:
        run.started_by = "launcher"
    _set_sys_argv_and_path(opts)
    try:
        run_code(opts)
    except SystemExit as exc:
        code, message = _exit_code(exc)
        if message is not None:
            sys.stderr.write(message + "\n")
        if code == 0:
            _finish(schema.STATUS_COMPLETED, None, gather=True)
        else:
            _finish(schema.STATUS_FAILED, f"exit code {code}", gather=False)
        return code
    except KeyboardInterrupt as exc:
        _report_exception(exc, run, print_only=True)
        _finish(schema.STATUS_CANCELLED, "KeyboardInterrupt", gather=False)
        _die_by_sigint()
        return 130
    except BaseException as exc:  # noqa: BLE001 - everything the script raises is recorded, then shown
        _report_exception(exc, run)
        _finish(schema.STATUS_FAILED, f"uncaught {type(exc).__name__}: {exc}", gather=False)
        if crash.should_abort():
            crash.abort_mpi()
        return 1
    _finish(schema.STATUS_COMPLETED, None, gather=True)
    return 0


def _report_exception(exc: BaseException, run: Any, *, print_only: bool = False) -> None:
    """Print the traceback as python would; save it as an artifact and an event (not for KeyboardInterrupt)."""
    from . import api

    text = crash.format_user_traceback(exc)
    sys.stderr.write(text)
    sys.stderr.flush()
    if print_only or api.active_run() is None:
        return
    crash.record_exception(run, type(exc), exc, text)


def _die_by_sigint() -> None:
    """Exit as python does on an uncaught KeyboardInterrupt: by SIGINT with its default action."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m prov4ml_hpc.run``."""
    code = launch(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
