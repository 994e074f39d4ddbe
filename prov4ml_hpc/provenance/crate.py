"""The run as a Workflow Run RO-Crate (Process, Workflow and Provenance Run Crate profiles, version 0.5).

``write_crate(run_dir)`` writes ``RUN_DIR/ro-crate-metadata.json``: the run directory itself becomes the crate,
nothing is copied.  ``write_crate(run_dir, "run.zip")`` writes a zip and ``write_crate(run_dir, "DIR")`` a
directory crate, each holding copies of the run's files (run.h5, provenance.json, report/, artifacts stored in
the run directory; the rank files when the run is not merged).  Files outside the run directory (the training
script, datasets read in place) are referenced by ``file://`` URIs with their sha256 and size, never copied.
The profiles' URIs are identifiers only: nothing is fetched.  See docs/report.md, "RO-Crate".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import zipfile
from typing import Any
from urllib.parse import quote

from .. import schema
from .._version import __version__
from ..errors import ExportError
from ..merge.load import load_run
from ..merge.model import RunSummary

METADATA = "ro-crate-metadata.json"
RO_CRATE = "https://w3id.org/ro/crate/1.1"
CONTEXT = "https://w3id.org/ro/crate/1.1/context"
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
PROV_JSON = "https://www.w3.org/submissions/prov-json/"
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


def write_crate(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Write the run's RO-Crate; return its path (the run directory, the new directory, or the zip file).

    Args:
        run_dir: the run directory (merged or not).
        out: None: in place (RUN_DIR/ro-crate-metadata.json); a path ending in ``.zip``: a zip crate; any other
            path: a new (or empty) directory crate.

    Raises:
        ConfigError: run_dir is not a run directory.
        ExportError: out exists and is not an empty directory, or a file cannot be written.
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    run = load_run(run_dir, values=False)
    meta, local = crate_metadata(run)
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
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat() if t is not None else None


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
    return [{"@id": i} for i in ids] if isinstance(ids, list) else {"@id": ids}


def crate_metadata(run: RunSummary) -> tuple[dict[str, Any], list[str]]:
    """The ro-crate-metadata.json content and the run-relative paths of the files the crate holds."""
    import dataclasses

    g = _Graph()
    run_dir = run.run_dir
    main = run.main_rank()
    a = main.meta if main is not None else {}
    run_id = run.run_id
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

    # the script: the workflow
    script = run.script()
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
    step = g.add(
        {
            "@id": "#step-rank",
            "@type": "HowToStep",
            "name": "one rank of the job (all ranks run the same script)",
            "position": "0",
        }
    )
    script_id = (
        _file_uri(script) if script and os.path.isabs(script) else f"#script-{quote(script or 'unknown')}"
    )
    g.add(
        {
            "@id": script_id,
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
            "name": os.path.basename(script or "unknown script"),
            "programmingLanguage": _ref(python),
            "sha256": _sha256(script) if script else None,
            "step": _ref([step]),
            "description": "the training script (argv[0] of the ranks)",
        }
    )
    parts.insert(0, script_id)

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
            "instrument": _ref(script_id),
            "object": _ref(list(dict.fromkeys(inputs))),
            "result": _ref(list(dict.fromkeys(outputs))),
            "startTime": _iso(start),
            "endTime": None if running else _iso(end),
            "actionStatus": _ref(ACTIVE if running else COMPLETED if ok else FAILED),
            "error": None
            if ok or running
            else "ranks not completed: "
            + ", ".join(f"{sum(1 for r in latest if r.status == s)} {s}" for s in bad),
            "resourceUsage": _ref(usage) if usage else None,
        }
    )
    controls = []
    for r in run.ranks:
        if r.status == schema.STATUS_MISSING:
            continue
        rid = f"#rank-{r.global_rank:05d}-attempt-{r.attempt}"
        g.add(
            {
                "@id": rid,
                "@type": "CreateAction",
                "name": f"rank {r.global_rank} attempt {r.attempt} ({r.status})",
                "instrument": _ref(script_id),
                "agent": _ref(agent) if agent else None,
                "startTime": _iso(r.start_time),
                "endTime": _iso(r.end_time),
                "actionStatus": _ref(
                    COMPLETED
                    if r.status == schema.STATUS_COMPLETED
                    else ACTIVE
                    if r.status == schema.STATUS_RUNNING
                    else FAILED
                ),
                "error": None
                if r.status in (schema.STATUS_COMPLETED, schema.STATUS_RUNNING)
                else f"{r.status}: {r.reason or ''}".strip(),
            }
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
        "conformsTo": _ref(profiles),
        "mainEntity": _ref(script_id),
        "hasPart": _ref(list(dict.fromkeys(parts))),
        "mentions": _ref([job_action, organize]),
    }
    descriptor = {
        "@id": METADATA,
        "@type": "CreativeWork",
        "conformsTo": {"@id": RO_CRATE},
        "about": {"@id": "./"},
    }
    graph = [descriptor, root, *g.entities.values()]
    return {"@context": CONTEXT, "@graph": graph}, list(dict.fromkeys(local))


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
