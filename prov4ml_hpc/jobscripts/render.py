"""Render the shipped sbatch templates from validated options; never a shell line built from user strings.

Every value is checked against what SLURM accepts (names ``[A-Za-z0-9_.-]``, SLURM time formats, integers)
and every command word is quoted with :func:`shlex.quote`.  ``python -m prov4ml_hpc.jobscripts DIR``
rewrites the rendered examples (``jobscripts/`` at the repository root) from :data:`EXAMPLES`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from ..errors import ConfigError

TEMPLATES = ("single-node", "multi-node", "array", "merge")
DEFAULTS: dict[str, dict[str, Any]] = {
    "single-node": {"nodes": 1, "ntasks_per_node": 4, "gpus_per_node": 4},
    "multi-node": {"nodes": 2, "ntasks_per_node": 4, "gpus_per_node": 4},
    "array": {"nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 1, "array": "0-3"},
    "merge": {"nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 0, "time": "00:30:00"},
}
OPTIONS = (
    "command",
    "job_name",
    "nodes",
    "ntasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem",
    "time",
    "partition",
    "account",
    "qos",
    "output",
    "signal",
    "requeue",
    "array",
    "run_dir",
    "experiment",
    "mode",
    "python",
    "merge",
    "merge_time",
    "mpi",
    "run_path",
    "dependency",
)

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|"
    r"UNLIMITED|unlimited|infinite|INFINITE)$"
)
_SIGNAL = re.compile(r"^(?:([BR]{1,2}):)?(?:SIG)?([A-Z0-9]+)(?:@(\d+))?$")
_SIGNAL_NAMES = ("HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "CONT", "URG", "ALRM", "XCPU")
_ARRAY = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")
_GPUS = re.compile(r"^(?:[A-Za-z0-9_.-]+:)?\d+$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_PATH = re.compile(r"^[A-Za-z0-9_./%+=,@:~-]+$")  # sbatch's own #SBATCH parser has no quoting
_DEPENDENCY = re.compile(r"^[a-z]+(:\d+(_\d+)?(\+\d+)?)+([,?][a-z]+(:\d+(_\d+)?(\+\d+)?)+)*$")
_PYTHON = re.compile(r"^python[0-9.]*$")
_MPI = re.compile(r"^[a-z0-9_]+$")

EXAMPLES: dict[str, dict[str, Any]] = {
    "single-node": {
        "command": ["train.py", "--epochs", "10"],
        "job_name": "train",
        "time": "02:00:00",
        "partition": "gpu",
        "output": "train-%j.out",
        "signal": "USR1@120",
        "requeue": True,
    },
    "single-node-hook": {
        "template": "single-node",
        "mode": "hook",
        "command": ["python", "train.py"],
        "job_name": "train-hook",
        "time": "02:00:00",
        "output": "train-%j.out",
    },
    "multi-node": {
        "command": ["-m", "mypkg.train", "--config", "configs/big run.yaml"],
        "job_name": "ddp",
        "nodes": 4,
        "time": "1-00:00:00",
        "partition": "gpu",
        "account": "proj-123",
        "output": "ddp-%j.out",
        "mpi": "pmi2",
        "signal": "B:USR1@300",
    },
    "array": {
        "command": ["sweep.py", "--seed", "{task_id}"],
        "job_name": "sweep",
        "array": "0-9%4",
        "time": "30",
        "output": "sweep-%A_%a.out",
    },
    "merge": {
        "run_path": "prov4ml_runs/experiment/slurm-1234",
        "job_name": "merge-train",
        "dependency": "afterany:1234",
        "output": "merge-%j.out",
    },
}


def template_names() -> tuple[str, ...]:
    return TEMPLATES


def _fail(what: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{what} {value!r} cannot be used in a job script: expected {expected}")


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _fail(what, value, "1-128 characters from letters, digits and _ . -")
    return value


def _int(what: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(what, value, f"an integer >= {minimum}")
    return value


def _match(what: str, value: Any, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(what, value, expected)
    return value


def check_signal(value: str) -> tuple[str, str, str]:
    """``[B:|R:]SIG[@seconds]`` as sbatch --signal takes it; returns (flags, signal name, seconds)."""
    m = _SIGNAL.match(value) if isinstance(value, str) else None
    if not m or m.group(2) not in _SIGNAL_NAMES and not m.group(2).isdigit():
        raise _fail(
            "signal",
            value,
            f"[B:]NAME[@SECONDS] with NAME one of {', '.join(_SIGNAL_NAMES)} (e.g. USR1@120 or B:USR1@60)",
        )
    return m.group(1) or "", m.group(2), m.group(3) or ""


TASK_ID = "{task_id}"  # in a command word of the array template: this task's $SLURM_ARRAY_TASK_ID


def _word(word: str, array: bool) -> str:
    """One command word for the shell: quoted; in the array template ``{task_id}`` becomes the task's id."""
    if TASK_ID not in word:
        return shlex.quote(word)
    if not array:
        raise _fail(
            "command word", word, f"no {TASK_ID} outside the array template (it is the array task's id)"
        )
    # the literal pieces stay single-quoted; only the variable is expanded, inside double quotes
    return '"$SLURM_ARRAY_TASK_ID"'.join(shlex.quote(p) if p else "" for p in word.split(TASK_ID))


def _words(command: Sequence[str], array: bool = False) -> str:
    if isinstance(command, str) or not all(isinstance(w, str) for w in command):
        raise _fail("command", command, "a list of words (the shell never splits it)")
    return " ".join(_word(w, array) for w in command)


def _needs_python(command: Sequence[str]) -> bool:
    """In hook mode, whether the command starts with a Python script or -m/-c and so needs the interpreter in
    front: ``srun train.py`` would exec the file itself ("Permission denied" unless it is executable with a
    shebang).  A command that starts with a program (python, torchrun, a wrapper) is run as given."""
    first = command[0]
    return first in ("-m", "-c") or (first.endswith(".py") and not first.startswith("-"))


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.sbatch").read_text(encoding="utf-8")


def _sbatch_lines(o: Mapping[str, Any], name: str) -> list[str]:
    lines = [f"#SBATCH --job-name={_name('job name', o['job_name'])}"]
    lines.append(f"#SBATCH --nodes={_int('nodes', o['nodes'])}")
    lines.append(f"#SBATCH --ntasks-per-node={_int('ntasks per node', o['ntasks_per_node'])}")
    gpus = o.get("gpus_per_node")
    if gpus not in (None, 0, "0"):
        gpus = str(gpus)
        _match("gpus per node", gpus, _GPUS, "a count or TYPE:COUNT, e.g. 4 or a100:4")
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if o.get("cpus_per_task") is not None:
        lines.append(f"#SBATCH --cpus-per-task={_int('cpus per task', o['cpus_per_task'])}")
    if o.get("mem") is not None:
        lines.append(f"#SBATCH --mem={_match('mem', str(o['mem']), _MEM, 'e.g. 64G or 16000')}")
    lines.append(
        f"#SBATCH --time={_match('time', o['time'], _TIME, 'a SLURM time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS')}"
    )
    for key in ("partition", "account", "qos"):
        if o.get(key) is not None:
            lines.append(f"#SBATCH --{key}={_name(key, o[key])}")
    if o.get("output") is not None:
        out = _match("output", o["output"], _PATH, "a path without spaces or quotes (%j, %A, %a allowed)")
        lines.append(f"#SBATCH --output={out}")
    if o.get("array") is not None and name == "array":
        lines.append(
            f"#SBATCH --array={_match('array', str(o['array']), _ARRAY, 'e.g. 0-9, 1,3,5 or 0-99%10')}"
        )
    if o.get("signal") is not None:
        check_signal(o["signal"])
        lines.append(f"#SBATCH --signal={o['signal']}")
    if o.get("requeue"):
        lines.append("#SBATCH --requeue")
    if o.get("dependency") is not None:
        lines.append(
            f"#SBATCH --dependency={_match('dependency', o['dependency'], _DEPENDENCY, 'e.g. afterany:1234')}"
        )
    return lines


def _environment(o: Mapping[str, Any]) -> str:
    lines = []
    if o.get("run_dir") is not None:
        if not isinstance(o["run_dir"], str) or not o["run_dir"] or "\n" in o["run_dir"]:
            raise _fail("run dir", o["run_dir"], "a path")
        lines.append(f"export PROV4ML_HPC_RUN_DIR={shlex.quote(o['run_dir'])}")
    else:
        lines.append('export PROV4ML_HPC_RUN_DIR="${PROV4ML_HPC_RUN_DIR:-$SLURM_SUBMIT_DIR/prov4ml_runs}"')
    if o.get("experiment") is not None:
        lines.append(f"export PROV4ML_HPC_EXPERIMENT={_name('experiment', o['experiment'])}")
    else:
        lines.append('export PROV4ML_HPC_EXPERIMENT="${PROV4ML_HPC_EXPERIMENT:-experiment}"')
    lines.append(
        "export HDF5_USE_FILE_LOCKING=FALSE  # Lustre/NFS mounts without locks (one file per rank anyway)"
    )
    if o.get("signal") is not None:
        sig = check_signal(o["signal"])[1]
        lines.append(
            f"# record the --signal warning ({sig}) as an event; the time limit's SIGTERM closes the run"
        )
        lines.append(f'export PROV4ML_HPC_SIGNALS="${{PROV4ML_HPC_SIGNALS:-TERM,INT,{sig}}}"')
    if o["mode"] == "hook":
        lines.append(
            "# the import hook: every rank process records from interpreter start, the script unchanged"
        )
        lines.append("export PROV4ML_HPC_HOOK=1")
        lines.append(f'PROV4ML_HPC_SITE="$({o["python"]} -m prov4ml_hpc.hook site-dir)"')
        lines.append('export PYTHONPATH="$PROV4ML_HPC_SITE${PYTHONPATH:+:$PYTHONPATH}"')
    return "\n".join(lines)


def _merge_job(o: Mapping[str, Any]) -> str:
    if not o.get("merge", True):
        return "# (no post-job merge: run `prov4ml-hpc merge RUN_DIR` yourself)"
    opts = [
        f"--job-name=merge-{_name('job name', o['job_name'])}",
        "--ntasks=1",
        f"--time={_match('merge time', o['merge_time'], _TIME, 'a SLURM time')}",
        "--output=prov4ml-merge-%j.out",
        "--export=ALL,PROV4ML_HPC_HOOK=0",
    ]
    opts += [
        f"--{key}={_name(key, o[key])}" for key in ("partition", "account", "qos") if o.get(key) is not None
    ]
    opts_text = " \\\n    ".join(opts)
    return f"""# Merge the rank files after this job whatever its end (completed, failed, cancelled, time limit):
# a dependent job runs `prov4ml-hpc merge` (every attempt of a requeued job submits one; merging is idempotent).
if [ -n "${{SLURM_ARRAY_JOB_ID:-}}" ]; then
    PROV4ML_HPC_RUN_ID_="slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
else
    PROV4ML_HPC_RUN_ID_="slurm-${{SLURM_JOB_ID}}"
fi
export PROV4ML_HPC_MERGE_DIR="$PROV4ML_HPC_RUN_DIR/$PROV4ML_HPC_EXPERIMENT/$PROV4ML_HPC_RUN_ID_"
sbatch --parsable --dependency="afterany:$SLURM_JOB_ID" \\
    {opts_text} <<'PROV4ML_HPC_MERGE' || echo "prov4ml-hpc: no merge job submitted; after the job run: prov4ml-hpc merge $PROV4ML_HPC_MERGE_DIR" >&2
#!/bin/bash
exec {o["python"]} -m prov4ml_hpc merge "$PROV4ML_HPC_MERGE_DIR"
PROV4ML_HPC_MERGE"""


def _launch(o: Mapping[str, Any]) -> str:
    raw = o.get("command") or []
    if isinstance(raw, str | bytes):
        raise _fail("command", raw, "a list of words (the shell never splits it)")
    command = list(raw)
    if not command:
        raise ConfigError(
            "the job needs a command: the Python script and its arguments (or -m MODULE ...), "
            "e.g. `prov4ml-hpc sbatch single-node -- train.py --epochs 10`"
        )
    srun = ["srun", "--kill-on-bad-exit=1"]
    if o.get("mpi") is not None:
        srun.append(f"--mpi={_match('mpi', o['mpi'], _MPI, 'an srun --mpi type such as pmi2 or pmix')}")
    array = o.get("template") == "array"
    if o["mode"] == "hook":
        words = _words(command, array)
        line = f"{' '.join(srun)} {o['python'] + ' ' if _needs_python(command) else ''}{words}"
    else:
        if _PYTHON.match(os.path.basename(command[0])):
            python, command = shlex.quote(command[0]), command[1:]
        else:
            python = o["python"]
        if not command:
            raise ConfigError(
                "the command names python but no script: give SCRIPT [ARGS] or -m MODULE [ARGS]"
            )
        line = f"{' '.join(srun)} {python} -m prov4ml_hpc.run {_words(command, array)}"
    flags = check_signal(o["signal"])[0] if o.get("signal") else ""
    if "B" not in flags:
        return line
    sig = check_signal(o["signal"])[1]
    return f"""# --signal=B:... goes to this batch shell only: pass it on to the tasks (srun forwards it to them).
{line} &
srun_pid=$!
trap 'kill -{sig} "$srun_pid" 2>/dev/null || true' {sig}
status=0
while true; do
    wait "$srun_pid" && status=0 || status=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done
exit "$status\""""


def effective_options(name: str, **options: Any) -> dict[str, Any]:
    """The options template ``name`` is rendered with: its defaults, overridden by the given (not None) ones.

    Raises:
        ConfigError: an unknown template.
    """
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; the templates are {', '.join(TEMPLATES)}")
    o: dict[str, Any] = {
        "job_name": "prov4ml",
        "time": "01:00:00",
        "mode": "launcher",
        "python": "python3",
        "merge": True,
        "merge_time": "00:30:00",
        **DEFAULTS[name],
    }
    o.update({k: v for k, v in options.items() if v is not None})
    return o


def render_template(name: str, **options: Any) -> str:
    """The text of template ``name`` (one of :data:`TEMPLATES`) rendered with ``options``.

    Options: command (list of words: SCRIPT [ARGS] or -m MODULE [ARGS]; in hook mode the whole command),
    job_name, nodes, ntasks_per_node, gpus_per_node (0: none), cpus_per_task, mem, time, partition, account,
    qos, output, signal ([B:]SIG@SECONDS), requeue, array (array template), run_dir, experiment,
    mode ("launcher" or "hook"), python, merge (submit the dependent merge job, default True), merge_time,
    mpi (srun --mpi), run_path and dependency (merge template).

    Raises:
        ConfigError: an unknown template or option, or a value SLURM would not accept (the message says which).
    """
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; the templates are {', '.join(TEMPLATES)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for template {name!r}; "
            f"the options are {', '.join(OPTIONS)}"
        )
    o = effective_options(name, **options)
    o["template"] = name
    if o["mode"] not in ("launcher", "hook"):
        raise _fail("mode", o["mode"], "'launcher' or 'hook'")
    o["python"] = shlex.quote(_match("python", o["python"], _PATH, "a python executable name or path"))
    values = {"sbatch_options": "\n".join(_sbatch_lines(o, name)), "python": o["python"]}
    if name == "merge":
        if not o.get("run_path"):
            raise ConfigError("the merge template needs run_path: the run directory to merge")
        values["run_path"] = shlex.quote(str(o["run_path"]))
    else:
        values["environment"] = _environment(o)
        values["merge_job"] = _merge_job(o)
        values["launch"] = _launch(o)
    text = _read(name)

    def fill(m: re.Match[str]) -> str:
        return values[m.group(1)]

    return re.sub(r"\{\{(\w+)\}\}", fill, text)


SBATCH_HINTS = (  # sbatch's refusals of a request the partition cannot give, and what to do
    (
        "Invalid generic resource",
        "; the partition has no GPUs of the kind asked for: use --gpus-per-node 0 on a CPU partition, or a "
        "GPU partition (`sinfo -o '%P %G'` lists the GPUs of each)",
    ),
    (
        "Requested node configuration is not available",
        "; no node of the partition has that many CPUs/GPUs/memory (`sinfo -o '%P %D %c %G %m'`): ask for less",
    ),
    (
        "Node count specification invalid",
        "; the partition has fewer nodes than --nodes asks for (`sinfo -o '%P %D'`)",
    ),
)


def submit(
    script: str,
    *,
    sbatch: str = "sbatch",
    args: Sequence[str] = (),
    dependency: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    merge_run_path: str | None = None,
    merge_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Submit a rendered script with ``sbatch --parsable`` (script text on stdin); return the job id(s).

    With ``merge_run_path`` also submit the merge template as a job depending (afterany) on the first one;
    ``{job_id}`` in it is replaced by the first job's id (e.g. ``"/scratch/runs/experiment/slurm-{job_id}"``).

    Raises:
        ConfigError: sbatch is missing or refused the script (its message is included).
    """
    cmd = [sbatch, "--parsable", *args]
    if dependency is not None:
        cmd.append(f"--dependency={_match('dependency', dependency, _DEPENDENCY, 'e.g. afterany:1234')}")
    try:
        proc = subprocess.run(
            cmd, input=script, capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot run {sbatch!r}: {exc}; submit on a SLURM login node, or print the "
            "script and submit it yourself"
        ) from exc
    if proc.returncode != 0:
        message = proc.stderr.strip()
        hint = next((h for key, h in SBATCH_HINTS if key in message), "")
        raise ConfigError(f"sbatch refused the job (exit {proc.returncode}): {message}{hint}")
    job_id = proc.stdout.strip().split(";")[0]
    ids = [job_id]
    if merge_run_path is not None:
        run_path = merge_run_path.replace("{job_id}", job_id)
        text = render_template("merge", run_path=run_path, **dict(merge_options or {}))
        ids += submit(text, sbatch=sbatch, dependency=f"afterany:{job_id}", env=env, cwd=cwd)
    return ids


def render_examples() -> dict[str, str]:
    """File name -> text of every rendered example of :data:`EXAMPLES`."""
    out = {}
    for example, opts in EXAMPLES.items():
        opts = dict(opts)
        template = opts.pop("template", example)
        out[f"{example}.sbatch"] = render_template(template, **opts)
    return out


def write_examples(folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for file_name, text in render_examples().items():
        path = os.path.join(folder, file_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        paths.append(path)
    return paths
