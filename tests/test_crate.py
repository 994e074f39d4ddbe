"""RO-Crate export: written from real runs, loaded and written back with `rocrate`, and checked by `roc-validator`
at REQUIRED for the Workflow Run Crate and Provenance Run Crate 0.5 profiles, offline.

roc-validator fetches the crate's JSON-LD context through its HTTP cache (requests-cache); offline it only reads
that cache.  The tests fill a private cache with tests/data/ro-crate-1.1-context.jsonld (the RO-Crate 1.1 context
as ro-crate-py 0.9.0 shipped it, Apache-2.0; see tests/data/README.md) under its URL, so nothing is fetched.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import pytest
from test_inspect import make_run

from prov4ml_hpc.merge.load import load_run
from prov4ml_hpc.provenance.crate import COMPLETED, FAILED, METADATA, PROFILES, crate_metadata, write_crate

rocrate = pytest.importorskip("rocrate.rocrate")
CONTEXT_FILE = Path(__file__).parent / "data" / "ro-crate-1.1-context.jsonld"
CONTEXT_URL = "https://w3id.org/ro/crate/1.1/context"


def _id(value):  # rocrate gives an entity, or the bare URI for a reference to a thing outside the crate
    return getattr(value, "id", value)


def _ids(value):
    value = value if isinstance(value, list) else [value]
    return {_id(e) for e in value}


def _entities(meta):
    return {e["@id"]: e for e in meta["@graph"]}


def _with_script(run_dir: str, argv0: str, cwd: str) -> dict:
    """The crate metadata of a run whose ranks ran ``argv0`` in ``cwd``, written in place as write_crate does."""
    info = load_run(run_dir, values=False)
    for r in info.ranks:
        r.meta["argv"], r.meta["cwd"] = [argv0, "--lr", "0.1"], cwd
    meta, _ = crate_metadata(info)
    Path(run_dir, METADATA).write_text(json.dumps(meta, indent=2))
    return meta


@pytest.fixture
def scripted_run(tmp_path):
    """A merged 4-rank run (rank 2 failed) whose ranks ran ./train.py (relative argv[0]) in tmp_path."""
    from prov4ml_hpc.merge import merge_run

    (tmp_path / "train.py").write_text("print('training')\n")
    run_dir = make_run(str(tmp_path), "c0", fail_rank=2)
    merge_run(run_dir, query_slurm=False)
    return run_dir, _with_script(run_dir, "train.py", str(tmp_path))


def test_crate_in_place_of_merged_run(tmp_path):
    from prov4ml_hpc.merge import merge_run

    run_dir = make_run(str(tmp_path), "c1")
    merge_run(run_dir, query_slurm=False)
    path = write_crate(run_dir, license="CC-BY-4.0")
    assert path == run_dir and os.path.isfile(os.path.join(run_dir, "ro-crate-metadata.json"))
    crate = rocrate.ROCrate(path)
    root = crate.root_dataset
    assert _ids(root["conformsTo"]) == set(PROFILES)
    assert _id(root["license"]) == "https://spdx.org/licenses/CC-BY-4.0"
    main = crate.mainEntity
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"} <= set(main.type)
    tool = crate.get("#rank-program")
    assert tool.type == "SoftwareApplication" and _ids(main["hasPart"]) == {tool.id}
    step = crate.get("#step-rank")
    assert _ids(main["step"]) == {step.id} and step["workExample"].id == tool.id
    job = crate.get("#job")
    assert job.type == "CreateAction"
    assert job["actionStatus"] == COMPLETED  # the schema.org status as a plain string
    assert job["instrument"].id == main.id
    assert job["agent"].type == "Person"
    assert job["startTime"] and job["endTime"]
    results = _ids(job["result"])
    assert {"run.h5", "provenance.json"} <= results
    assert any("model-" in r for r in results)
    inputs = _ids(job["object"])
    assert len(inputs) == 1 and next(iter(inputs)).startswith("file://")  # the dataset, read in place
    for name in ("run.h5", "provenance.json"):
        ent = crate.get(name)
        assert ent.type == "File" and ent["contentSize"] == os.path.getsize(os.path.join(run_dir, name))
    organize = crate.get("#organize")
    assert organize.type == "OrganizeAction" and organize["result"].id == "#job"
    assert len(_ids(organize["object"])) == 4  # one ControlAction per rank
    ranks = [e for e in crate.get_entities() if e.type == "CreateAction" and e.id.startswith("#rank-")]
    assert len(ranks) == 4 and all(e["actionStatus"] == COMPLETED for e in ranks)
    assert all(e["instrument"].id == tool.id for e in ranks)
    mentioned = _ids(root["mentions"])
    assert {e.id for e in ranks} | {"#job", "#organize"} <= mentioned  # rank actions are in mentions


def test_times_have_milliseconds_and_context_defines_every_key(scripted_run):
    _, meta = scripted_run
    context = json.loads(CONTEXT_FILE.read_text())["@context"]
    local = {k for item in meta["@context"] if isinstance(item, dict) for k in item}
    assert meta["@context"][0] == CONTEXT_URL
    for ent in meta["@graph"]:
        for key in ent:
            assert key.startswith("@") or key in context or key in local, key  # e.g. sha256, resourceUsage
        for key in ("startTime", "endTime"):
            if key in ent:  # roc-validator's pattern takes .123+00:00, not .123456+00:00
                assert len(ent[key].split(".")[1]) == len("123+00:00"), ent[key]


def test_relative_argv0_is_an_absolute_uri_and_rocrate_writes_it_back(scripted_run, tmp_path):
    run_dir, meta = scripted_run
    ents = _entities(meta)
    script = f"file://{tmp_path}/train.py"
    assert next(e for e in meta["@graph"] if e["@id"] == "./")["mainEntity"] == {"@id": script}
    assert len(ents[script]["sha256"]) == 64 and "train.py" not in ents  # never a File that is not there
    crate = rocrate.ROCrate(run_dir)
    out = tmp_path / "written"
    crate.write(out)  # rocrate's writer copies every local File: a relative argv[0] made it raise
    assert (out / "run.h5").is_file() and json.loads((out / METADATA).read_text())


def test_crate_zip_and_directory_of_failed_unmerged_run(tmp_path):
    run_dir = make_run(str(tmp_path), "c2", ranks=2, fail_rank=1)
    z = write_crate(run_dir, tmp_path / "run.zip")
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("ro-crate-metadata.json"))
    assert {
        "ranks/rank-00000.h5",
        "ranks/rank-00001.h5",
    } <= names  # not merged: the rank files are the record
    crate = rocrate.ROCrate(z)
    job = crate.get("#job")
    assert job["actionStatus"] == FAILED and "1 failed" in job["error"]
    assert "No license was given" in crate.root_dataset["license"]
    ids = {e["@id"] for e in meta["@graph"]}
    for rel in names - {"ro-crate-metadata.json"}:
        assert rel in ids  # every file shipped is described
    out = write_crate(run_dir, tmp_path / "crate-dir")
    crate2 = rocrate.ROCrate(out)
    assert crate2.get("ranks/rank-00001.h5") is not None
    assert os.path.isfile(os.path.join(out, "ranks", "rank-00001.h5"))
    from prov4ml_hpc.errors import ExportError

    with pytest.raises(ExportError, match="not an empty directory"):
        write_crate(run_dir, out)


def test_crate_energy_as_resource_usage(run_root):
    from helpers_mpi import make_energy_run

    info = load_run(make_energy_run(run_root), values=False)
    meta, _ = crate_metadata(info)
    ents = _entities(meta)
    usage = {ref["@id"] for ref in ents["#job"]["resourceUsage"]}
    assert ents["#usage-energy_kwh"]["value"] == 0.75 and ents["#usage-energy_kwh"]["unitText"] == "kWh"
    assert ents["#usage-gpu_energy_j"]["value"] == 650.0  # GPU-b, seen by two ranks, counts once
    assert {"#usage-energy_kwh", "#usage-emissions_kg_co2eq", "#usage-gpu_energy_j"} <= usage
    assert all(ents[u]["@type"] == "PropertyValue" for u in usage)


# ---- roc-validator, offline --------------------------------------------------------------------------------
def _offline_cache(path: Path) -> Path:
    """A requests-cache database holding the RO-Crate 1.1 context under its URL (what roc-validator reads)."""
    import urllib3
    from requests.adapters import BaseAdapter, HTTPAdapter
    from requests_cache import CachedSession

    body = CONTEXT_FILE.read_bytes()

    class LocalContext(BaseAdapter):
        def send(self, request, **kwargs):
            headers = {"Content-Type": "application/ld+json"}
            raw = urllib3.HTTPResponse(
                body=io.BytesIO(body),
                headers=headers,
                status=200,
                preload_content=False,
                request_url=request.url,
            )
            return HTTPAdapter().build_response(request, raw)

        def close(self):
            pass

    session = CachedSession(cache_name=str(path), backend="sqlite", expire_after=-1, allowable_codes=(200,))
    session.mount("https://w3id.org/", LocalContext())
    try:
        assert session.get(CONTEXT_URL).status_code == 200
    finally:
        session.close()
    return path


def _validate(crate: str, profile: str, severity: str, cache: Path):
    from rocrate_validator import services
    from rocrate_validator.models import ValidationSettings

    settings = ValidationSettings(
        rocrate_uri=crate,
        profile_identifier=profile,
        requirement_severity=severity,
        offline=True,
        cache_path=cache,
        skip_availability_check=True,
    )
    with warnings.catch_warnings():  # pyshacl and rdflib 7 deprecations inside the validator, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        result = services.validate(settings)
    issues = [
        (str(i.severity), i.check.identifier if i.check else None, i.message) for i in result.get_issues()
    ]
    return result.passed(), issues


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["workflow-run-crate", "provenance-run-crate"])
def test_roc_validator_required(scripted_run, tmp_path, profile):
    pytest.importorskip("rocrate_validator")
    run_dir, _ = scripted_run
    passed, issues = _validate(run_dir, profile, "REQUIRED", _offline_cache(tmp_path / "http-cache"))
    assert passed, issues
    assert [i for i in issues if "REQUIRED" in i[0]] == []


@pytest.mark.slow
def test_roc_validator_required_fails_a_broken_crate(scripted_run, tmp_path):
    """The offline set-up can fail: without the license and the tool, the same crate is refused."""
    pytest.importorskip("rocrate_validator")
    run_dir, meta = scripted_run
    root = next(e for e in meta["@graph"] if e["@id"] == "./")
    del root["license"]
    for ent in meta["@graph"]:
        ent.pop("hasPart", None) if "ComputationalWorkflow" in ent.get("@type", []) else None
    Path(run_dir, METADATA).write_text(json.dumps(meta))
    passed, issues = _validate(run_dir, "provenance-run-crate", "REQUIRED", _offline_cache(tmp_path / "c"))
    found = {i[1] for i in issues}
    assert not passed and {"ro-crate-1.1_8.3", "provenance-run-crate-0.5_1.1"} <= found, issues
