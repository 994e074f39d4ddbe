"""Identity detection and run location: pure functions over environment mappings."""

from __future__ import annotations

import pytest

from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.job.environment import detect_identity, environment_snapshot, slurm_run_id, slurm_snapshot
from prov4ml_hpc.job.location import check_component, resolve_location


def ident(**env):
    return detect_identity(env, use_mpi4py=False)


def test_plain_process_is_rank_zero_of_one():
    i = ident()
    assert (i.global_rank, i.local_rank, i.world_size, i.source) == (0, 0, 1, "single")


def test_mpich_hydra_inside_a_slurm_allocation_wins_over_slurm_procid():
    # under mpiexec inside an allocation every rank sees SLURM_PROCID=0 and SLURM_NTASKS=1
    i = ident(
        PMI_RANK="3",
        PMI_SIZE="4",
        MPI_LOCALRANKID="3",
        SLURM_PROCID="0",
        SLURM_NTASKS="1",
        SLURM_STEP_ID="0",
        SLURM_JOB_ID="42",
        SLURM_NNODES="1",
    )
    assert (i.global_rank, i.world_size, i.local_rank, i.source) == (3, 4, 3, "pmi")
    assert i.job_id == "42"


def test_openmpi_variables():
    i = ident(OMPI_COMM_WORLD_RANK="5", OMPI_COMM_WORLD_SIZE="8", OMPI_COMM_WORLD_LOCAL_RANK="1")
    assert (i.global_rank, i.world_size, i.local_rank, i.source) == (5, 8, 1, "openmpi")


def test_pmix_rank_with_size_from_slurm_step():
    i = ident(PMIX_RANK="2", SLURM_STEP_NUM_TASKS="4", SLURM_LOCALID="0", SLURM_STEP_ID="0")
    assert (i.global_rank, i.world_size, i.local_rank, i.source) == (2, 4, 0, "pmix")


def test_srun_step_uses_slurm_procid_and_step_tasks():
    i = ident(
        SLURM_PROCID="6",
        SLURM_NTASKS="8",
        SLURM_STEP_NUM_TASKS="8",
        SLURM_LOCALID="2",
        SLURM_STEP_ID="0",
        SLURMD_NODENAME="node07",
    )
    assert (i.global_rank, i.world_size, i.local_rank, i.node, i.source) == (6, 8, 2, "node07", "slurm")


def test_batch_script_helper_is_not_a_rank():
    # a python call in the batch script itself (outside srun) is a plain process
    i = ident(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_ID="9", SLURM_STEP_ID="batch")
    assert (i.global_rank, i.world_size, i.source) == (0, 1, "single")
    i = ident(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_ID="9")
    assert i.source == "single"


def test_torchrun_variables():
    i = ident(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", TORCHELASTIC_RUN_ID="abc")
    assert (i.global_rank, i.world_size, i.local_rank, i.source) == (1, 2, 1, "torchrun")
    assert i.torchelastic_run_id == "abc"
    assert ident(RANK="1", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="none").torchelastic_run_id is None


def test_rank_alone_without_world_size_is_not_torchrun():
    assert ident(RANK="3").source == "single"


def test_bad_values_fail_with_the_variable_name():
    with pytest.raises(ConfigError, match="PMI_RANK"):
        ident(PMI_RANK="x", PMI_SIZE="4")
    with pytest.raises(ConfigError, match="outside the world size"):
        ident(PMI_RANK="4", PMI_SIZE="4")


def test_slurm_run_ids():
    assert slurm_run_id(ident(SLURM_JOB_ID="77")) == "77"
    assert slurm_run_id(ident(SLURM_JOB_ID="78", SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID="3")) == "70_3"
    assert (
        slurm_run_id(ident(SLURM_JOB_ID="77", SLURM_STEP_ID="2", SLURM_PROCID="0", SLURM_NTASKS="1"))
        == "77.2"
    )
    assert (
        slurm_run_id(ident(SLURM_JOB_ID="77", SLURM_STEP_ID="0", SLURM_PROCID="0", SLURM_NTASKS="1")) == "77"
    )
    assert slurm_run_id(ident()) is None


def test_snapshots_keep_slurm_facts_and_drop_secrets():
    env = {
        "SLURM_JOB_ID": "5",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "CUDA_VISIBLE_DEVICES": "0",
        "NCCL_DEBUG": "INFO",
        "SLURM_API_TOKEN": "s3cret",
        "HOME": "/root",
        "NCCL_IB_PASSWORD": "x",
    }
    snap = environment_snapshot(env)
    assert snap["SLURM_JOB_ID"] == "5" and snap["CUDA_VISIBLE_DEVICES"] == "0" and "NCCL_DEBUG" in snap
    assert "SLURM_API_TOKEN" not in snap and "NCCL_IB_PASSWORD" not in snap and "HOME" not in snap
    assert slurm_snapshot(env) == {"job_id": "5", "job_name": "train", "nodelist": "n[1-2]"}


def test_run_location_sources(tmp_path):
    root = str(tmp_path)
    loc = resolve_location(ident(SLURM_JOB_ID="123", SLURM_RESTART_COUNT="2"), root, "exp", None, {})
    assert (loc.run_id, loc.attempt, loc.id_source) == ("slurm-123", 2, "slurm")
    assert loc.rank_file(7).endswith("exp/slurm-123/ranks/rank-00007.attempt-2.h5")
    loc = resolve_location(
        ident(), root, None, None, {"PROV4ML_HPC_RUN_ID": "fixed", "PROV4ML_HPC_EXPERIMENT": "e2"}
    )
    assert (loc.run_id, loc.experiment, loc.id_source) == ("fixed", "e2", "env")
    loc = resolve_location(ident(RANK="0", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="r9"), root, "e", None, {})
    assert loc.run_id == "torchrun-r9"
    a = resolve_location(ident(), root, "e", None, {})
    b = resolve_location(ident(), root, "e", None, {})
    assert a.run_id != b.run_id and a.id_source == "local"  # two plain runs never collide


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "", "/abs", "x" * 201, "-lead", "sp ace", "ü"])
def test_unsafe_directory_names_are_refused(bad):
    with pytest.raises(ConfigError, match="directory name"):
        check_component(bad, "run id")
