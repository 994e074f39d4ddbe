"""RO-Crate export: written from real runs and loaded back with the `rocrate` package (no network)."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
from test_inspect import make_run

from prov4ml_hpc.provenance.crate import COMPLETED, FAILED, PROFILES, write_crate

rocrate = pytest.importorskip("rocrate.rocrate")


def _id(value):  # rocrate gives an entity, or the bare URI for a reference to a thing outside the crate
    return getattr(value, "id", value)


def _ids(value):
    value = value if isinstance(value, list) else [value]
    return {e.id for e in value}


def test_crate_in_place_of_merged_run(tmp_path):
    from prov4ml_hpc.merge import merge_run

    run_dir = make_run(str(tmp_path), "c1")
    merge_run(run_dir, query_slurm=False)
    path = write_crate(run_dir)
    assert path == run_dir and os.path.isfile(os.path.join(run_dir, "ro-crate-metadata.json"))
    crate = rocrate.ROCrate(path)
    root = crate.root_dataset
    assert _ids(root["conformsTo"]) == set(PROFILES)
    main = crate.mainEntity
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow"} <= set(main.type)
    job = crate.get("#job")
    assert job.type == "CreateAction"
    assert _id(job["actionStatus"]) == COMPLETED
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
        assert (
            ent is not None
            and ent.type == "File"
            and ent["contentSize"] == os.path.getsize(os.path.join(run_dir, name))
        )
    organize = crate.get("#organize")
    assert organize.type == "OrganizeAction" and organize["result"].id == "#job"
    assert len(_ids(organize["object"])) == 4  # one ControlAction per rank
    ranks = [e for e in crate.get_entities() if e.id.startswith("#rank-")]
    assert len(ranks) == 4 and all(_id(e["actionStatus"]) == COMPLETED for e in ranks)


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
    assert _id(job["actionStatus"]) == FAILED and "1 failed" in job["error"]
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

    from prov4ml_hpc.merge.load import load_run
    from prov4ml_hpc.provenance.crate import crate_metadata

    info = load_run(make_energy_run(run_root), values=False)
    meta, _ = crate_metadata(info)
    ents = {e["@id"]: e for e in meta["@graph"]}
    usage = {ref["@id"] for ref in ents["#job"]["resourceUsage"]}
    assert ents["#usage-energy_kwh"]["value"] == 0.75 and ents["#usage-energy_kwh"]["unitText"] == "kWh"
    assert ents["#usage-gpu_energy_j"]["value"] == 650.0  # GPU-b, seen by two ranks, counts once
    assert {"#usage-energy_kwh", "#usage-emissions_kg_co2eq", "#usage-gpu_energy_j"} <= usage
    assert all(ents[u]["@type"] == "PropertyValue" for u in usage)
