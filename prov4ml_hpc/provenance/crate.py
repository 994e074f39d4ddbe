"""The run as a Workflow Run RO-Crate (Process, Workflow and Provenance Run Crate profiles, version 0.5).

``write_crate(run_dir)`` writes ``RUN_DIR/ro-crate-metadata.json``: the run directory itself becomes the crate,
nothing is copied.  ``write_crate(run_dir, "run.zip")`` writes a zip and ``write_crate(run_dir, "DIR")`` a
directory crate, each holding copies of the run's files (run.h5, provenance.json, report/, artifacts stored in
the run directory; the rank files when the run is not merged).  Files outside the run directory (the training
script, datasets read in place) are referenced by ``file://`` URIs with their sha256 and size, never copied.
The profiles' URIs are identifiers only: nothing is fetched.  The crate passes roc-validator's REQUIRED checks of
RO-Crate 1.1, Workflow RO-Crate 1.0 and the Process/Workflow/Provenance Run Crate 0.5 profiles (tests/test_crate.py,
offline).  See docs/report.md, "RO-Crate".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import zipfile
from typing import Any
from urllib.parse import quote

from .. import schema, settings
from .._version import __version__
from ..errors import ExportError
from ..merge.load import load_run
from ..merge.model import RunSummary

METADATA = "ro-crate-metadata.json"
RO_CRATE = "https://w3id.org/ro/crate/1.1"
RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
# the RO-Crate 1.1 context does not define these two Workflow Run Crate terms: the crate's context adds them
CONTEXT = [RO_CRATE_CONTEXT, {"sha256": WFRUN + "sha256", "resourceUsage": WFRUN + "resourceUsage"}]
SPDX = "https://spdx.org/licenses/"
NOT_FILES = ("", "-", "-c", "-m")  # argv[0] of `python -`, `python -c ...`, `python -m ...`: no script file
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
PROV_JSON = "https://www.w3.org/submissions/prov-json/"
WROC = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
# actionStatus values, as the plain strings roc-validator expects (Process Run Crate 0.5)
COMPLETED = "http://schema.org/CompletedActionStatus"
FAILED = "http://schema.org/FailedActionStatus"
ACTIVE = "http://schema.org/ActiveActionStatus"
_ENERGY = (
    ("energy_kwh", "energy", "kWh"),
    ("cpu_energy_kwh", "CPU energy", "kWh"),
    ("gpu_energy_kwh", "GPU energy (codecarbon)", "kWh"),
    ("ram_energy_kwh", "RAM energy", "kWh"),
    ("gpu_energy_j", "GPU energy (NVML)", "J"),
    ("rapl_energy_j", "RAPL energy", "J"),
    ("emissions_kg_co2eq", "emissions", "kg CO2eq"),
)


def write_crate(
    run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, license: str | None = None
) -> str:
    """Write the run's RO-Crate; return its path (the run directory, the new directory, or the zip file).

    Args:
        run_dir: the run directory (merged or not).
        out: None: in place (RUN_DIR/ro-crate-metadata.json); a path ending in ``.zip``: a zip crate; any other
            path: a new (or empty) directory crate.
        license: the crate's license: an SPDX identifier (``CC-BY-4.0``) or a URL; default PROV4ML_HPC_LICENSE,
            else a sentence saying that none was given (RO-Crate requires a license; only the run's owner can
            choose one).

    Raises:
        ConfigError: run_dir is not a run directory.
        ExportError: out exists and is not an empty directory, or a file cannot be written.
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    run = load_run(run_dir, values=False)
    meta, local = crate_metadata(run, license=settings.get(settings.LICENSE, override=license))
    text = json.dumps(meta, indent=2, ensure_ascii=False, default=str)
    try:
        if out is None:
            _atomic_write(os.path.join(run_dir, METADATA), text)
            return run_dir
        out = os.path.abspath(os.fspath(out))
        if out.lower().endswith(".zip"):
            tmp = f"{out}.{os.getpid()}.tmp"
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(METADATA, text)
                for rel in local:
                    zf.write(os.path.join(run_dir, rel), rel)
            os.replace(tmp, out)
            return out
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise ExportError(
                f"{out} exists and is not an empty directory: give a new directory or a .zip path"
            )
        os.makedirs(out, exist_ok=True)
        for rel in local:
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(run_dir, rel), dest)
        _atomic_write(os.path.join(out, METADATA), text)
        return out
    except OSError as exc:
        raise ExportError(f"cannot write the RO-Crate to {out or run_dir}: {exc}") from exc


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _iso(t: float | None) -> str | None:
    """Unix seconds as ISO 8601 with milliseconds (roc-validator's datetime pattern refuses microseconds)."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="milliseconds")


def _file_uri(path: str) -> str:
    return "file://" + quote(os.path.abspath(path))


def _sha256(path: str, limit: int = 64 << 20) -> str | None:
    try:
        if os.path.getsize(path) > limit:
            return None
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


class _Graph:
    def __init__(self) -> None:
        self.entities: dict[str, dict[str, Any]] = {}

    def add(self, ent: dict[str, Any]) -> str:
        ent = {k: v for k, v in ent.items() if v is not None and v != []}
        if ent["@id"] not in self.entities:
            self.entities[ent["@id"]] = ent
        return ent["@id"]


def _ref(ids: list[str] | str) -> Any:
    """A reference, or a list of them; a one-item list as a single reference (RO-Crate 1.1's compact form)."""
    if isinstance(ids, list):
        return {"@id": ids[0]} if len(ids) == 1 else [{"@id": i} for i in ids]
    return {"@id": ids}


def crate_metadata(run: RunSummary, *, license: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The ro-crate-metadata.json content and the run-relative paths of the files the crate holds.

    ``license``: an SPDX identifier or a URL (None: a sentence saying that none was given)."""
    g = _Graph()
    import dataclasses

    run_dir = run.run_dir
    main = run.main_rank()
    a = main.meta if main is not None else {}
    run_id = str(a.get(schema.A_RUN_ID) or os.path.basename(run_dir))
    job = dataclasses.asdict(run.job)
    local: list[str] = []
    parts: list[str] = []

    def local_file(rel: str, **props: Any) -> str:
        path = os.path.join(run_dir, rel)
        local.append(rel)
        parts.append(
            g.add(
                {
                    "@id": quote(rel),
                    "@type": "File",
                    "name": rel,
                    "contentSize": os.path.getsize(path),
                    **props,
                }
            )
        )
        return quote(rel)

    # files of the run
    outputs: list[str] = []
    for rel, fmt, desc in (
        (
            schema.RUN_FILE,
            "application/x-hdf5",
            "every series of every rank, per-step aggregates and rank metadata (prov4ml-hpc run file)",
        ),
        (schema.PROV_FILE, "application/json", "the W3C PROV graph of the job (PROV-JSON)"),
    ):
        if os.path.exists(os.path.join(run_dir, rel)):
            extra = {"conformsTo": {"@id": PROV_JSON}} if rel == schema.PROV_FILE else {}
            outputs.append(local_file(rel, encodingFormat=fmt, description=desc, **extra))
    if schema.RUN_FILE not in local:  # not merged: the rank files are the record
        for r in run.ranks:
            if r.file and os.path.exists(os.path.join(run_dir, r.file)):
                outputs.append(
                    local_file(
                        r.file,
                        encodingFormat="application/x-hdf5",
                        description=f"rank buffer of rank {r.global_rank}, attempt {r.attempt}",
                    )
                )
    report = os.path.join(run_dir, schema.REPORT_DIR)
    if os.path.isfile(os.path.join(report, "index.html")):
        for name in sorted(os.listdir(report)):
            if os.path.isfile(os.path.join(report, name)) and not name.endswith(".tmp"):
                local_file(f"{schema.REPORT_DIR}/{name}")

    # inputs and outputs the script logged (datasets, models, artifacts)
    inputs: list[str] = []
    seen: set[str] = set()
    for r in run.ranks:
        for rec in r.records:
            kind = rec.get("type")
            if kind not in (schema.REC_ARTIFACT, schema.REC_MODEL, schema.REC_DATASET):
                continue
            ident = _artifact_entity(g, run_dir, rec, r.global_rank, local, seen)
            if ident is None:
                continue
            (inputs if rec.get("role") == "input" else outputs).append(ident)
            if ident not in parts:
                parts.append(ident)

    # the workflow (the training script that srun/mpiexec ran on every rank), its one step and its tool
    workflow = _workflow(g, run, a)
    parts.insert(0, workflow)
    tool = g.add(
        {
            "@id": "#rank-program",
            "@type": "SoftwareApplication",
            "name": "the program of each rank: " + (_command_line(a) or "python"),
            "description": "what every rank process ran (the same on every rank); one CreateAction per rank",
        }
    )
    step = g.add(
        {
            "@id": "#step-rank",
            "@type": "HowToStep",
            "name": "one rank of the job (all ranks run the same program)",
            "position": "0",
            "workExample": _ref(tool),
        }
    )
    g.entities[workflow]["hasPart"] = _ref([tool])
    g.entities[workflow]["step"] = _ref([step])

    # agents
    user = run.user or job.get("user")
    agent = (
        g.add({"@id": f"#person-{quote(str(user))}", "@type": "Person", "name": str(user)}) if user else None
    )
    engine = g.add(
        {
            "@id": "#prov4ml-hpc",
            "@type": "SoftwareApplication",
            "name": "prov4ml-hpc",
            "version": a.get(schema.A_PACKAGE_VERSION) or __version__,
            "url": {"@id": "https://w3id.org/prov4ml-hpc/ns#"},
        }
    )

    # energy as resource usage
    usage = []
    totals = run.totals
    for key, name, unit in _ENERGY:
        if isinstance(totals.get(key), int | float):
            usage.append(
                g.add(
                    {
                        "@id": f"#usage-{key}",
                        "@type": "PropertyValue",
                        "name": name,
                        "propertyID": key,
                        "value": totals[key],
                        "unitText": unit,
                    }
                )
            )

    # the job and its ranks
    start, end = run.time_span()
    latest = run.latest()
    statuses = {r.status for r in latest}
    running = schema.STATUS_RUNNING in statuses
    ok = statuses == {schema.STATUS_COMPLETED}
    bad = sorted({r.status for r in latest} - {schema.STATUS_COMPLETED})
    job_id = job.get("job_id")
    job_action = g.add(
        {
            "@id": "#job",
            "@type": "CreateAction",
            "name": (f"SLURM job {job_id}" + (f" ({job['name']})" if job.get("name") else ""))
            if job_id
            else f"run {run_id}",
            "description": f"{run.world_size} ranks, attempts {', '.join(map(str, run.attempts))}",
            "identifier": str(job_id) if job_id else run_id,
            "agent": _ref(agent) if agent else None,
            "instrument": _ref(workflow),
            "object": _ref(list(dict.fromkeys(inputs))),
            "result": _ref(list(dict.fromkeys(outputs))),
            "startTime": _iso(start),
            "endTime": None if running else _iso(end),
            "actionStatus": ACTIVE if running else COMPLETED if ok else FAILED,
            "error": None
            if ok or running
            else "ranks not completed: "
            + ", ".join(f"{sum(1 for r in latest if r.status == s)} {s}" for s in bad),
            "resourceUsage": _ref(usage) if usage else None,
        }
    )
    controls, rank_actions = [], []
    for r in run.ranks:
        if r.status == schema.STATUS_MISSING:
            continue
        rid = f"#rank-{r.global_rank:05d}-attempt-{r.attempt}"
        done = r.status == schema.STATUS_COMPLETED
        live = r.status == schema.STATUS_RUNNING
        rank_actions.append(
            g.add(
                {
                    "@id": rid,
                    "@type": "CreateAction",
                    "name": f"rank {r.global_rank} attempt {r.attempt} ({r.status})",
                    "description": f"rank {r.global_rank} of {run.world_size}"
                    + (f" on {r.node}" if r.node else "")
                    + (f", attempt {r.attempt}" if r.attempt else ""),
                    "instrument": _ref(tool),
                    "agent": _ref(agent) if agent else None,
                    "startTime": _iso(r.start_time),
                    "endTime": None if live else _iso(r.end_time),
                    "actionStatus": COMPLETED if done else ACTIVE if live else FAILED,
                    "error": None if done or live else f"{r.status}: {r.reason or ''}".strip(),
                }
            )
        )
        controls.append(
            g.add(
                {
                    "@id": f"#control-{r.global_rank:05d}-attempt-{r.attempt}",
                    "@type": "ControlAction",
                    "instrument": _ref(step),
                    "object": _ref(rid),
                    "name": f"orchestrate rank {r.global_rank} attempt {r.attempt}",
                }
            )
        )
    organize = g.add(
        {
            "@id": "#organize",
            "@type": "OrganizeAction",
            "name": "prov4ml-hpc recording of the job",
            "instrument": _ref(engine),
            "agent": _ref(agent) if agent else None,
            "object": _ref(controls),
            "result": _ref(job_action),
            "startTime": _iso(start),
            "endTime": None if running else _iso(end),
        }
    )

    profiles = [
        g.add({"@id": uri, "@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
        for uri, name in PROFILES.items()
    ]
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": f"prov4ml-hpc run {run_id}",
        "description": f"Provenance and metrics of the ML training run {run_id} (experiment "
        f"{a.get(schema.A_EXPERIMENT) or '?'}), recorded by prov4ml-hpc.",
        "datePublished": now,
        "license": _license(g, license, user),
        "author": _ref(agent) if agent else None,
        "conformsTo": _ref(profiles),
        "mainEntity": _ref(workflow),
        "hasPart": _ref(list(dict.fromkeys(parts))),
        "mentions": _ref([job_action, organize, *rank_actions, *controls]),
    }
    descriptor = {
        "@id": METADATA,
        "@type": "CreativeWork",
        "conformsTo": _ref([RO_CRATE, WROC]),
        "about": {"@id": "./"},
    }
    root = {k: value for k, value in root.items() if value is not None}
    graph = [descriptor, root, *g.entities.values()]
    return {"@context": CONTEXT, "@graph": graph}, list(dict.fromkeys(local))


def _command_line(a: dict[str, Any]) -> str | None:
    argv = a.get(schema.A_ARGV)
    if not isinstance(argv, list) or not argv:
        return None
    text = " ".join(shlex.quote(str(x)) for x in argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _workflow(g: _Graph, run: RunSummary, a: dict[str, Any]) -> str:
    """The training script as the crate's main workflow: a ``file://`` URI of its absolute path (a relative
    argv[0] is resolved against the rank's working directory; it is never a File inside the crate that is not
    there), or ``#training-script`` when the ranks ran no script file (``python -c``)."""
    script = run.script()
    path = None
    if script and script not in NOT_FILES:
        cwd = a.get(schema.A_CWD)
        path = script if os.path.isabs(script) else (os.path.join(cwd, script) if cwd else None)
        path = os.path.normpath(path) if path else None
    python = g.add(
        {
            "@id": "#python",
            "@type": "ComputerLanguage",
            "name": "Python",
            "identifier": {"@id": "https://www.python.org/"},
            "url": {"@id": "https://www.python.org/"},
            "version": a.get(schema.A_PYTHON_VERSION),
        }
    )
    ident = _file_uri(path) if path else "#training-script"
    return g.add(
        {
            "@id": ident,
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": os.path.basename(path) if path else (script or "unknown script"),
            "programmingLanguage": _ref(python),
            "encodingFormat": "text/x-python",
            "sha256": _sha256(path) if path else None,
            "description": "the training script (argv[0] of the ranks), run on every rank by srun or mpiexec",
        }
    )


def _license(g: _Graph, license: str | None, user: Any) -> Any:
    """The root's license: a contextual entity for an SPDX id or URL, else a sentence (RO-Crate allows text)."""
    if not license:
        owner = f" ({user})" if user else ""
        return (
            f"No license was given when this crate was exported: ask the run's owner{owner} before reuse "
            "(prov4ml-hpc export --license, or PROV4ML_HPC_LICENSE)."
        )
    uri = license if "://" in license else SPDX + quote(license)
    g.add({"@id": uri, "@type": "CreativeWork", "name": license, "identifier": license})
    return _ref(uri)


def _artifact_entity(
    g: _Graph, run_dir: str, rec: dict[str, Any], rank: int, local: list[str], seen: set[str]
) -> str | None:
    path = rec.get("path")
    name = str(rec.get("name"))
    props = {
        "name": name,
        "sha256": rec.get("sha256"),
        "contentSize": rec.get("size"),
        "description": f"{rec.get('type')} ({rec.get('role') or 'output'}) logged by rank {rank}",
    }
    copy = rec.get("copy")
    where = os.path.join(run_dir, copy) if copy else path
    if not where:
        return None
    where = os.path.abspath(where)
    inside = os.path.commonpath([where, run_dir]) == run_dir and os.path.exists(where)
    is_dir = os.path.isdir(where) or bool(rec.get("files"))
    if inside:
        rel = os.path.relpath(where, run_dir).replace(os.sep, "/")
        ident = quote(rel) + ("/" if is_dir else "")
        if ident not in seen and not is_dir:
            local.append(rel)
        elif ident not in seen and is_dir:
            for root, _, files in os.walk(where):
                local.extend(
                    os.path.relpath(os.path.join(root, f), run_dir).replace(os.sep, "/") for f in files
                )
    else:
        ident = _file_uri(where) + ("/" if is_dir else "")
    seen.add(ident)
    g.add({"@id": ident, "@type": "Dataset" if is_dir else "File", **props})
    return ident


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - debugging aid
    print(write_crate(*(argv or sys.argv[1:])))
    return 0
