"""Unit tests of prov4ml_hpc.slurm: parsers on real captured outputs, and job_info with fake SLURM commands."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

import pytest

from prov4ml_hpc.errors import Prov4mlHpcError, SlurmError
from prov4ml_hpc.job.environment import slurm_snapshot
from prov4ml_hpc.job.jobinfo import job_info
from prov4ml_hpc.job.slurm import (
    SACCT_FIELDS,
    compress_hostlist,
    expand_hostlist,
    parse_array_task_ids,
    parse_sacct,
    parse_scontrol_job,
    parse_scontrol_jobs,
    parse_size,
    parse_time_limit,
)

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def env_file(name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in read(name).splitlines() if "=" in line)


# -- hostlists (expected values are what `scontrol show hostnames` printed on SLURM 22.05) ----------------------
@pytest.mark.parametrize(
    ("hostlist", "expected"),
    [
        ("", []),
        ("   ", []),
        ("login1", ["login1"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        (
            "node[01-04,07],gpu-[1-2],login1",
            ["node01", "node02", "node03", "node04", "node07", "gpu-1", "gpu-2", "login1"],
        ),
        ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
        ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("n[009-011]", ["n009", "n010", "n011"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[01-3]", ["n01", "n02", "n03"]),
        ("n[1-03]", ["n1", "n2", "n3"]),
        ("n[7-7]", ["n7"]),
        ("a[1,3-4]", ["a1", "a3", "a4"]),
        ("n[0-1]-ib", ["n0-ib", "n1-ib"]),
        ("n1 n2", ["n1", "n2"]),
        ("n[1-2],,m", ["n1", "n2", "m"]),
        (",a", ["a"]),
        ("n[1-2],n[1-2]", ["n1", "n2", "n1", "n2"]),
        ("vm", ["vm"]),
        ("nid[00001-00003]", ["nid00001", "nid00002", "nid00003"]),
        ("cn-[1-2].cluster.local", ["cn-1.cluster.local", "cn-2.cluster.local"]),
    ],
)
def test_expand_hostlist(hostlist: str, expected: list[str]) -> None:
    assert expand_hostlist(hostlist) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "x[3-1]",
        "n[1-3",
        "n[a-b]",
        "n[]",
        "n[1-2]]",
        "n[1-2,]",
        "n[-2]",
        "n[[1-2]]",
        "n[1-]",
        "n]1[",
        "n[010-1]",
    ],
)
def test_expand_hostlist_rejects_bad_input_naming_it(bad: str) -> None:
    with pytest.raises(SlurmError) as err:
        expand_hostlist(bad)
    assert repr(bad) in str(err.value)
    assert isinstance(err.value, Prov4mlHpcError)


def test_expand_hostlist_refuses_absurd_ranges() -> None:
    with pytest.raises(SlurmError, match="too large"):
        expand_hostlist("n[0-99999999]")


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [  # expected: `scontrol show hostlist` on SLURM 22.05
        ("n3,n1,n2,n10,gpu-2,gpu-1,login1,n01,n02", "n[3,1-2,10],gpu-[2,1],login1,n[01-02]"),
        ("a1b3,a1b4,a2b3,a2b4", "a1b[3-4],a2b[3-4]"),
        ("n8,n9,n10", "n[8-10]"),
        ("n01,n2", "n[01,2]"),
        ("n09,n10", "n[09-10]"),
        ("n099,n100,n101", "n[099-101]"),
        ("n1,n01", "n[1,01]"),
        ("login,n1", "login,n1"),
        ("n0,n1", "n[0-1]"),
        ("n2,n1,n2", "n[2,1-2]"),
        ("vm", "vm"),
    ],
)
def test_compress_hostlist_matches_scontrol(hosts: str, expected: str) -> None:
    assert compress_hostlist(hosts.split(",")) == expected


@pytest.mark.parametrize(
    "hostlist",
    ["node[01-04,07],gpu-[1-2],login1", "n[009-011]", "a1b[3-4],a2b[3-4]", "n[8-10]", "x,y,z", "n[1,01]", ""],
)
def test_compress_is_the_inverse_of_expand(hostlist: str) -> None:
    hosts = expand_hostlist(hostlist)
    assert compress_hostlist(hosts) == hostlist
    assert expand_hostlist(compress_hostlist(hosts)) == hosts


# -- arrays and times ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0-3", [0, 1, 2, 3]),
        ("1,3,5", [1, 3, 5]),
        ("1-7:2", [1, 3, 5, 7]),
        ("0-15%4", list(range(16))),
        ("1-3,10-12:2%2", [1, 2, 3, 10, 12]),
        ("[1-3%2]", [1, 2, 3]),
        ("123_[4-5]", [4, 5]),
        ("7", [7]),
        ("2,2,1", [2, 1]),
    ],
)
def test_parse_array_task_ids(spec: str, expected: list[int]) -> None:
    assert parse_array_task_ids(spec) == expected


@pytest.mark.parametrize("bad", ["", "a-b", "3-1", "1-5:0", "1--2", "1,,2", "0-99999999"])
def test_parse_array_task_ids_rejects(bad: str) -> None:
    with pytest.raises(SlurmError) as err:
        parse_array_task_ids(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 1800),
        ("02:00", 120),
        ("00:05:00", 300),
        ("01:00:00", 3600),
        ("1-02:03:04", 93784),
        ("2-00", 172800),
        ("1-12:30", 131400),
        ("0", 0),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("Partition_Limit", None),
        ("NOT_SET", None),
        ("", None),
    ],
)
def test_parse_time_limit(value: str, seconds: int | None) -> None:
    assert parse_time_limit(value) == seconds


@pytest.mark.parametrize("bad", ["1h", "1:2:3:4", "-5", "1-", "abc", "1-2-3"])
def test_parse_time_limit_rejects(bad: str) -> None:
    with pytest.raises(SlurmError, match="invalid SLURM duration"):
        parse_time_limit(bad)


# -- scontrol -----------------------------------------------------------------------------------------------------
def test_scontrol_one_line_completed_job() -> None:
    rec = parse_scontrol_job(read("scontrol-show-job-o-completed.txt"))
    assert rec["JobId"] == "1"
    assert rec["JobName"] == "cap-job"
    assert rec["JobState"] == "COMPLETED"
    assert rec["Reason"] == "None"
    assert rec["Dependency"] == "(null)"
    assert rec["Account"] == "(null)"
    assert rec["UserId"] == "root(0)"
    assert rec["TimeLimit"] == "00:05:00"
    assert rec["ExitCode"] == "0:0"
    assert rec["AllocNode:Sid"] == "localhost:4127"
    assert rec["CPUs/Task"] == "1"
    assert rec["TRES"] == "cpu=4,node=1,billing=4"
    assert rec["Command"] == "/tmp/p4s-try/cap/job.sbatch"
    assert rec["Power"] == ""


def test_scontrol_values_with_spaces_and_equals() -> None:
    rec = parse_scontrol_job(read("scontrol-show-job-o-failed.txt"))
    assert rec["JobName"] == "train model v2"
    assert rec["Command"] == "/tmp/p4s-try/cap/fail.sbatch arg one --lr=0.1"
    assert rec["WorkDir"] == "/tmp/p4s-try/cap"
    assert rec["Comment"] == "lr=0.1 run two"
    assert "lr" not in rec and "run" not in rec
    assert rec["JobState"] == "FAILED"
    assert rec["Reason"] == "NonZeroExitCode"
    assert rec["ExitCode"] == "3:0"
    assert rec["StdErr"] == "/tmp/p4s-try/cap/fail-2.out"


def test_scontrol_multiline_form_equals_one_line_form() -> None:
    multi = parse_scontrol_job(read("scontrol-show-job-failed-multiline.txt"))
    assert multi == parse_scontrol_job(read("scontrol-show-job-o-failed.txt"))


def test_scontrol_array_records() -> None:
    text = read("scontrol-show-job-o-array.txt")
    records = parse_scontrol_jobs(text)
    assert [(r["JobId"], r["ArrayTaskId"]) for r in records] == [("3", "2"), ("6", "1"), ("5", "0")]
    assert parse_scontrol_job(text, "6")["ArrayTaskId"] == "1"
    assert parse_scontrol_job(text, "3_0")["JobId"] == "5"
    assert parse_scontrol_job(text, "99") == {}
    assert len(parse_scontrol_jobs(read("scontrol-show-job-o-array-running.txt"))) == 3


def test_scontrol_unknown_keys_after_free_text() -> None:
    line = "JobId=7 NewKey23=v JobName=x Command=/a/run.sh epochs=3 WorkDir=/w Reason=Some reason text"
    rec = parse_scontrol_job(line)
    assert rec["Command"] == "/a/run.sh epochs=3"
    assert rec["WorkDir"] == "/w"
    assert rec["NewKey23"] == "v"  # an unknown key is a key unless it follows a free-text value
    assert parse_scontrol_job("JobId=7 WorkDir=/w x NewKey23=v")["WorkDir"] == "/w x NewKey23=v"
    assert rec["Reason"] == "Some reason text"


def test_scontrol_empty_and_garbage() -> None:
    assert parse_scontrol_job("") == {}
    with pytest.raises(SlurmError, match="unexpected text"):
        parse_scontrol_jobs("slurm_load_jobs error: Invalid job id specified")


# -- sacct --------------------------------------------------------------------------------------------------------
def test_sacct_jobcomp_several_jobs() -> None:
    parsed = parse_sacct(read("sacct-c-several.txt"))
    assert [j["JobID"] for j in parsed["jobs"]] == ["1", "2", "4", "3"]
    assert parsed["job"]["State"] == "COMPLETED"
    assert parsed["job"]["Elapsed"] == "00:00:00"
    assert parsed["job"]["User"] == "root(0)"
    assert parsed["steps"] == {}
    cancelled = parsed["jobs"][2]
    assert (cancelled["State"], cancelled["ExitCode"], cancelled["Timelimit"]) == ("CANCELLED", "0:0", "60")


def test_sacct_with_header_line() -> None:
    text = read("sacct-c-cancelled-header.txt")
    assert text.splitlines()[0] == "|".join(SACCT_FIELDS)  # the fixtures were captured with SACCT_FIELDS
    parsed = parse_sacct(text)
    assert parsed["job"]["JobID"] == "4"
    assert len(parsed["jobs"]) == 1


def test_sacct_jobcomp_breaks_on_names_with_spaces() -> None:
    job = parse_sacct(read("sacct-c-failed.txt"))["job"]
    assert (job["JobName"], job["State"], job["ExitCode"]) == ("train", "", "3:0")


def test_sacct_default_jobcomp_fields() -> None:
    fields = ("JobID", "UID", "JobName", "Partition", "NNodes", "NodeList", "State", "End")
    job = parse_sacct(read("sacct-c-default-fields.txt"), fields)["job"]
    assert job["State"] == "COMPLETED" and job["NodeList"] == "vm"


SACCT_DBD = """\
4242|train|COMPLETED|0:0|00:10:05|2024-05-01T10:00:00|2024-05-01T10:10:05|
4242.batch|batch|COMPLETED|0:0|00:10:05|2024-05-01T10:00:00|2024-05-01T10:10:05|5120K
4242.extern|extern|COMPLETED|0:0|00:10:05|2024-05-01T10:00:00|2024-05-01T10:10:05|0
4242.0|python|CANCELLED by 0|0:15|00:10:00|2024-05-01T10:00:03|2024-05-01T10:10:03|2048M
"""


def test_sacct_job_and_steps() -> None:
    fields = ("JobID", "JobName", "State", "ExitCode", "Elapsed", "Start", "End", "MaxRSS")
    parsed = parse_sacct(SACCT_DBD, fields)
    assert parsed["job"]["JobID"] == "4242"
    assert set(parsed["steps"]) == {"batch", "extern", "0"}
    assert parsed["steps"]["0"]["State"] == "CANCELLED by 0"
    assert parsed["steps"]["batch"]["MaxRSS"] == "5120K"


def test_sacct_array_and_field_count_mismatch() -> None:
    fields = ("JobID", "State")
    parsed = parse_sacct("77_3|COMPLETED\n77_3.batch|COMPLETED\n77_3.0|FAILED\n", fields)
    assert parsed["job"]["JobID"] == "77_3"
    assert parsed["steps"]["0"]["State"] == "FAILED"
    assert parse_sacct("", fields) == {"job": {}, "steps": {}, "jobs": []}
    with pytest.raises(SlurmError, match="expected 2"):
        parse_sacct("1|COMPLETED|extra|more\n", fields)


# -- job_info -----------------------------------------------------------------------------------------------------
def test_job_info_from_environment_alone() -> None:
    snap = slurm_snapshot(env_file("env-srun-task-2.txt"))
    info = job_info(snap, query=False)
    assert info.job_id == "1"
    assert info.name == "cap-job"
    assert info.nodes == ["vm"]
    assert info.nnodes == 1 and info.ntasks == 4
    assert (info.partition, info.user, info.cluster, info.submit_host) == ("debug", "root", "prov4ml", "vm")
    assert info.account is None and info.qos is None and info.cpus_per_task is None
    assert info.restart_count == 0
    assert info.extra["step_id"] == "1"
    assert info.sources == ["env"]


def test_job_info_nothing_known() -> None:
    info = job_info(None, None)
    assert info.job_id is None and info.sources == [] and info.nodes == []


def test_job_info_array_and_bad_nodelist() -> None:
    snap = {
        "job_id": "5",
        "array_job_id": "3",
        "array_task_id": "0",
        "nodelist": "n[1-",
        "restart_count": "2",
    }
    info = job_info(snap, query=False)
    assert (info.array_job_id, info.array_task_id, info.restart_count) == ("3", "0", 2)
    assert info.nodes == [] and "n[1-" in info.extra["nodelist_error"]


def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_text(
        f"#!{sys.executable}\nimport sys, time\nargs = sys.argv[1:]\nDATA = {str(DATA)!r}\n{body}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


FAKE_SCONTROL = """
if args[:3] == ["show", "job", "-o"] and args[3] == "2":
    sys.stdout.write(open(DATA + "/scontrol-show-job-o-failed.txt").read())
elif args[:2] == ["write", "batch_script"] and args[2] == "2":
    sys.stdout.buffer.write(open(DATA + "/batch-script-failed.sh", "rb").read())
elif args[:2] == ["write", "batch_script"]:
    print("job script retrieval failed: Invalid job id specified", file=sys.stderr)  # exit 0, as real scontrol
else:
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    sys.exit(1)
"""
FAKE_SACCT = """
if "-c" not in args:
    print("Slurm accounting storage is disabled", file=sys.stderr)
    sys.exit(1)
if args[args.index("-j") + 1] == "2":
    sys.stdout.write(open(DATA + "/sacct-c-failed.txt").read())
"""


@pytest.fixture
def fake_path(tmp_path: Path) -> dict[str, str]:
    _fake_bin(tmp_path, "scontrol", FAKE_SCONTROL)
    _fake_bin(tmp_path, "sacct", FAKE_SACCT)
    return {"PATH": str(tmp_path), "SLURM_CONF": "/nonexistent/slurm.conf"}


def test_job_info_with_scontrol_and_jobcomp(fake_path: dict[str, str]) -> None:
    snap = {"job_id": "2", "nodelist": "vm", "ntasks": "2"}
    info = job_info(snap, environ=fake_path)
    assert info.sources == ["env", "scontrol", "batch_script", "sacct-jobcomp"]
    assert info.name == "train model v2"  # from scontrol: jobcomp truncates names with spaces
    assert info.state == "FAILED"  # jobcomp's State is empty for that job: scontrol's stays
    assert info.exit_code == "3:0"
    assert info.user == "root" and info.partition == "debug"
    assert info.time_limit == "00:02:00" and info.extra["time_limit_s"] == 120
    assert info.cpus_per_task == 2 and info.ntasks == 2 and info.nnodes == 1
    assert info.start is not None and info.start.startswith("2026-11-26T23:31:21")
    assert info.start[19:] != ""  # a UTC offset was added
    assert info.extra["command"] == "/tmp/p4s-try/cap/fail.sbatch arg one --lr=0.1"
    assert info.extra["reason"] == "NonZeroExitCode"
    script = (DATA / "batch-script-failed.sh").read_bytes()
    assert info.script == script.decode()
    assert info.script_sha256 == hashlib.sha256(script).hexdigest()


def test_job_info_unknown_job_never_raises(fake_path: dict[str, str]) -> None:
    info = job_info({"job_id": "999"}, environ=fake_path)
    assert info.sources == ["env"]
    assert info.state is None and info.script is None


def test_job_info_without_commands(tmp_path: Path) -> None:
    info = job_info({"job_id": "2"}, environ={"PATH": str(tmp_path)})
    assert info.sources == ["env"] and info.state is None


def test_job_info_command_timeout_and_garbage(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "scontrol", "print('garbage output here'); time.sleep(0 if 'show' in args else 30)")
    _fake_bin(tmp_path, "sacct", "print('1|2|3')")
    info = job_info({"job_id": "2"}, timeout=1.0, environ={"PATH": str(tmp_path)})
    assert info.sources == ["env"]
    assert info.state is None and info.script is None


def test_job_info_respects_slurm_conf_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_bin(
        tmp_path,
        "scontrol",
        "import os; print('JobId=9 JobState=' + os.environ['SLURM_CONF'].replace('/', '_'))",
    )
    _fake_bin(tmp_path, "sacct", "sys.exit(1)")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("SLURM_CONF", "/etc/x.conf")
    info = job_info(None, "9")
    assert info.state == "_etc_x.conf"
    assert "scontrol" in info.sources


def test_job_info_takes_the_last_jobcomp_record_of_a_requeued_job(tmp_path: Path) -> None:
    first = "5|train|NODE_FAIL|0:0|0:0|00:01:00|60|2026-01-01T10:00:00|2026-01-01T10:01:00" + "|" * 12
    last = "5|train|COMPLETED|0:0|0:0|00:02:00|120|2026-01-01T10:05:00|2026-01-01T10:07:00" + "|" * 12
    _fake_bin(tmp_path, "sacct", f"if '-c' not in args: sys.exit(1)\nprint({first!r}); print({last!r})")
    info = job_info({"job_id": "5"}, environ={"PATH": str(tmp_path)})
    assert info.sources == ["env", "sacct-jobcomp"]
    assert (info.state, info.elapsed) == ("COMPLETED", "00:02:00")
    assert info.end is not None and info.end.startswith("2026-01-01T10:07:00")


# -- real accounting (slurmdbd), captured on the multi-node test cluster ------------------------------------------
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("95472K", 95472 * 1024),
        ("1.50G", 1610612736),
        ("12M", 12 * 1024**2),
        ("0", 0),
        ("2048", 2048),
        ("", None),
    ],
)
def test_parse_size(size: str, expected: int | None) -> None:
    assert parse_size(size) == expected


def test_parse_size_rejects() -> None:
    with pytest.raises(SlurmError, match="invalid SLURM size"):
        parse_size("12 apples")


def test_sacct_dbd_job_steps_and_a_pipe_in_the_job_name() -> None:
    parsed = parse_sacct(read("sacct-dbd-steps.txt"))
    job, steps = parsed["job"], parsed["steps"]
    assert job["JobName"] == "p4 acct|job"  # sacct does not escape the separator
    assert (job["State"], job["ExitCode"], job["DerivedExitCode"], job["NodeList"]) == (
        "COMPLETED",
        "0:0",
        "3:0",
        "node[01-02]",
    )
    assert job["MaxRSS"] == "" and job["NTasks"] == ""  # step fields
    assert sorted(steps) == ["0", "1", "batch"]
    assert parse_size(steps["0"]["MaxRSS"]) == 95472 * 1024 and steps["0"]["NTasks"] == "4"
    assert (steps["1"]["State"], steps["1"]["ExitCode"]) == ("FAILED", "3:0")


def test_sacct_dbd_cancelled_and_array() -> None:
    cancelled = parse_sacct(read("sacct-dbd-cancelled.txt"))
    assert cancelled["job"]["State"] == "CANCELLED by 0" and cancelled["steps"]["0"]["ExitCode"] == "0:15"
    array = parse_sacct(read("sacct-dbd-array.txt"))
    assert [j["JobID"] for j in array["jobs"]] == ["24_0", "24_1"]
    assert sorted(array["steps"]) == ["0", "batch"]  # those of the first task


LAGGING = """
if args[:3] == ["show", "job", "-o"]:
    sys.stdout.write(open(DATA + "/scontrol-show-job-o-running-multinode.txt").read())
elif "-j" in args:
    sys.stdout.write(open(DATA + "/sacct-dbd-running.txt").read())
"""


def test_job_info_of_a_running_job_whose_accounting_lags(tmp_path: Path) -> None:
    # captured 2 s into a running 2-node job: scontrol says RUNNING; sacct's job line still says PENDING,
    # JobName "allocation", NodeList node01 (slurmdbd made the record from a step record)
    _fake_bin(tmp_path, "scontrol", LAGGING)
    _fake_bin(tmp_path, "sacct", LAGGING)
    snap = {"job_id": "27", "ntasks": "2"}  # SLURM_NTASKS of the step: 2 (hydra proxies under mpiexec)
    info = job_info(snap, environ={"PATH": str(tmp_path)})
    assert info.sources == ["env", "scontrol", "sacct"]
    assert (info.state, info.name, info.ntasks) == ("RUNNING", "run 2", 4)
    assert info.nodes == ["node01", "node02"]
    assert info.end is None and info.extra["time_limit_end"].startswith("2026-12-01T23:45:58")
    assert info.extra["steps"]["0"]["state"] == "RUNNING"


def test_job_info_of_a_pending_job_from_sacct_alone(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "sacct", 'sys.stdout.write(open(DATA + "/sacct-dbd-pending.txt").read())')
    info = job_info({"job_id": "26"}, environ={"PATH": str(tmp_path)})
    assert (info.state, info.name, info.nodes, info.start, info.end) == ("PENDING", "later", [], None, None)
