"""Every ``PROV4ML_HPC_*`` environment variable: one table (name, kind, default, meaning) and one strict parser.

Every module reads its variables through :func:`get` (or :func:`parse` for a value that came from an option),
so a value means the same thing everywhere: ``PROV4ML_HPC_SYSTEM_METRICS=flase`` is an error wherever it is
read, never "on" in one place and "off" in another.  An unset or empty variable gives the default.  The table
is also the documentation: docs/settings.md is generated from it (``prov4ml-hpc settings --markdown``) and a
test keeps the two equal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import ConfigError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
OFF_WORDS = FALSE_WORDS + ("none", "disabled")  # also accepted by "seconds_or_off" settings


class Setting(NamedTuple):
    """One environment variable.  ``kind``: bool, int, float, seconds_or_off, str, choice.

    (A NamedTuple, not a dataclass: ``import prov4ml_hpc`` must stay cheap, and dataclasses costs ~12 ms.)"""

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None  # for int/float: the smallest accepted value
    strict_min: bool = False  # the value must be > minimum (not >=)
    choices: tuple[str, ...] = ()  # for choice: accepted words (lower case)
    internal: bool = False  # set by prov4ml-hpc itself, not by users
    origin: str = ""  # appended to messages after the value, e.g. " (argument; the variable is ...)"

    def shown(self, raw: Any) -> str:
        return f"{self.name}={raw!r}{self.origin}"


def _s(name: str, kind: str, default: Any, help: str, **kw: Any) -> Setting:
    return Setting("PROV4ML_HPC_" + name, kind, default, help, **kw)


_TABLE = (
    # where a run lives
    _s("RUN_DIR", "str", "prov4ml_runs", "RUN_ROOT: runs go to RUN_ROOT/EXPERIMENT/RUN_ID"),
    _s("EXPERIMENT", "str", "experiment", "experiment name (one directory under RUN_ROOT)"),
    _s("RUN_ID", "str", None, "run id, the same on every rank [default: from SLURM, torchrun or MPI]"),
    _s("ATTEMPT", "int", None, "attempt number of this run [default: SLURM_RESTART_COUNT]", minimum=0),
    # the rank buffer
    _s(
        "FLUSH_INTERVAL", "float", 1.0, "seconds between flushes of the rank file", minimum=0, strict_min=True
    ),
    _s("BUFFER_ROWS", "int", 8192, "rows buffered before an early flush", minimum=1),
    _s("COPY_ARTIFACTS", "bool", False, "copy logged artifacts into RUN_DIR/artifacts"),
    # sampling
    _s("SYSTEM_METRICS", "bool", True, "sample CPU, memory, GPU and energy in a thread"),
    _s("SAMPLE_INTERVAL", "seconds_or_off", 1.0, "seconds between system samples (0/off: no thread)"),
    _s("SAMPLE_GPU", "bool", True, "sample NVML GPUs"),
    _s("SAMPLE_ENERGY", "bool", True, "codecarbon + RAPL energy on each node's local rank 0"),
    _s("ENERGY_INTERVAL", "seconds_or_off", 10.0, "seconds between codecarbon readings"),
    _s("COUNTRY", "str", "USA", "ISO 3166 alpha-3 country for codecarbon's carbon intensity"),
    # end of job
    _s(
        "GATHER",
        "bool",
        True,
        "multi-rank runs: rank 0 writes run.h5 and provenance.json at the end of the run",
    ),
    _s("GATHER_TIMEOUT", "float", 60.0, "seconds the end of job waits for the other ranks", minimum=0),
    _s(
        "GRAPH",
        "choice",
        "auto",
        "detail of provenance.json: job, node, rank, or auto (rank level within 5,000 records, else node, else job)",
        choices=("auto", "job", "node", "rank"),
    ),
    _s("LICENSE", "str", None, "license of exported RO-Crates: an SPDX id (CC-BY-4.0) or a URL"),
    _s(
        "MPI_ABORT",
        "bool",
        True,
        "on an uncaught exception, when the code initialised MPI, abort MPI_COMM_WORLD after recording "
        "(as `python -m mpi4py` does), so the other ranks do not hang in a collective",
    ),
    # launcher and hook
    _s("SIGNALS", "str", "TERM,INT", "signals the launcher/hook record, comma-separated, or 'none'"),
    _s(
        "HOOK",
        "choice",
        "0",
        "record every rank process from interpreter start (1) or every top-level process (all)",
        choices=FALSE_WORDS + TRUE_WORDS + ("all", "always"),
    ),
    _s("HOOK_PARENT", "str", None, "pid of the recording process this one descends from", internal=True),
    # messages
    _s(
        "LOG_LEVEL",
        "choice",
        "WARNING",
        "level of the prov4ml_hpc logger",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
)

SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}

# the names, for code that refers to one (settings.RUN_DIR == "PROV4ML_HPC_RUN_DIR")
RUN_DIR = "PROV4ML_HPC_RUN_DIR"
EXPERIMENT = "PROV4ML_HPC_EXPERIMENT"
RUN_ID = "PROV4ML_HPC_RUN_ID"
ATTEMPT = "PROV4ML_HPC_ATTEMPT"
FLUSH_INTERVAL = "PROV4ML_HPC_FLUSH_INTERVAL"
BUFFER_ROWS = "PROV4ML_HPC_BUFFER_ROWS"
COPY_ARTIFACTS = "PROV4ML_HPC_COPY_ARTIFACTS"
SYSTEM_METRICS = "PROV4ML_HPC_SYSTEM_METRICS"
SAMPLE_INTERVAL = "PROV4ML_HPC_SAMPLE_INTERVAL"
SAMPLE_GPU = "PROV4ML_HPC_SAMPLE_GPU"
SAMPLE_ENERGY = "PROV4ML_HPC_SAMPLE_ENERGY"
ENERGY_INTERVAL = "PROV4ML_HPC_ENERGY_INTERVAL"
COUNTRY = "PROV4ML_HPC_COUNTRY"
GATHER = "PROV4ML_HPC_GATHER"
GATHER_TIMEOUT = "PROV4ML_HPC_GATHER_TIMEOUT"
GRAPH = "PROV4ML_HPC_GRAPH"
LICENSE = "PROV4ML_HPC_LICENSE"
MPI_ABORT = "PROV4ML_HPC_MPI_ABORT"
SIGNALS = "PROV4ML_HPC_SIGNALS"
HOOK = "PROV4ML_HPC_HOOK"
HOOK_PARENT = "PROV4ML_HPC_HOOK_PARENT"
LOG_LEVEL = "PROV4ML_HPC_LOG_LEVEL"


def parse(name: str, raw: Any, *, label: str | None = None, origin: str = "") -> Any:
    """The value of setting ``name`` for ``raw`` (a string from the environment, or a Python value from an
    option or argument); None or "" gives the default.

    Args:
        name: the variable, e.g. ``settings.FLUSH_INTERVAL``.
        raw: the value.
        label: how messages name the value (default: the variable's name).
        origin: said after the value in messages.

    Raises:
        ConfigError: the value is not one the setting accepts (the message names the variable, the value and
            what is accepted).
        KeyError: ``name`` is not a prov4ml-hpc setting.
    """
    s = SETTINGS[name]
    if label is not None:
        s = s._replace(name=label, origin=origin)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return s.default
    text = raw.strip() if isinstance(raw, str) else raw
    if s.kind == "bool":
        return _bool(s, text)
    if s.kind == "choice":
        word = str(text).lower()
        if word not in s.choices:
            raise ConfigError(f"{s.shown(raw)} is not accepted: use one of {', '.join(s.choices)}")
        return word
    if s.kind == "str":
        return str(text)
    if s.kind == "seconds_or_off":
        if isinstance(text, str) and text.lower() in OFF_WORDS:
            return 0.0
        return _number(s, raw, float, minimum=0.0, strict=False)
    if s.kind == "int":
        return _number(s, raw, int, s.minimum, s.strict_min)
    if s.kind == "float":
        return _number(s, raw, float, s.minimum, s.strict_min)
    raise AssertionError(f"unknown setting kind {s.kind!r}")  # pragma: no cover - the table is fixed


def get(name: str, environ: Mapping[str, str] | None = None, override: Any = None) -> Any:
    """``override`` when it is not None (an explicit argument wins), else the environment's value, parsed.

    Raises:
        ConfigError: see :func:`parse`.
    """
    if override is not None:
        arg = name.removeprefix("PROV4ML_HPC_").lower()
        return parse(name, override, label=arg, origin=f" (argument; the variable is {name})")
    env = os.environ if environ is None else environ
    return parse(name, env.get(name))


def is_true(raw: str | None) -> bool:
    """The reading of a switch that must never raise (interpreter start-up): only TRUE_WORDS mean on."""
    return raw is not None and raw.strip().lower() in TRUE_WORDS


def _bool(s: Setting, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{s.shown(value)} is not a switch: use 1/0, true/false, yes/no or on/off")


def _number(s: Setting, raw: Any, kind: type, minimum: float | None, strict: bool) -> Any:
    what = "an integer" if kind is int else "a number"
    if isinstance(raw, bool):
        raise ConfigError(f"{s.shown(raw)} is not {what}")
    try:
        value = kind(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{s.shown(raw)} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{s.shown(raw)} must be a finite number")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigError(f"{s.shown(raw)} must be {bound}")
    return value


def current(environ: Mapping[str, str] | None = None) -> list[tuple[Setting, str | None, str]]:
    """(setting, raw value or None, what it means now: the parsed value or the error) for every setting."""
    env = os.environ if environ is None else environ
    out = []
    for s in _TABLE:
        raw = env.get(s.name)
        try:
            meaning = repr(parse(s.name, raw))
        except ConfigError as exc:
            meaning = f"ERROR: {exc}"
        out.append((s, raw, meaning))
    return out


def markdown_table() -> str:
    """The settings as the Markdown table of docs/settings.md."""
    lines = ["| variable | kind | default | meaning |", "|---|---|---|---|"]
    for s in _TABLE:
        kind = s.kind if s.kind != "choice" else "one of " + ", ".join(f"`{c}`" for c in s.choices)
        default = "" if s.default is None else f"`{s.default}`"
        meaning = s.help + (" (set by prov4ml-hpc itself)" if s.internal else "")
        lines.append(f"| `{s.name}` | {kind} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
