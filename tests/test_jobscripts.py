"""sbatch templates: validation of every value, quoting of the command, and the rendered examples kept in sync."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.jobscripts import EXAMPLES, TEMPLATES, render_template
from prov4ml_hpc.jobscripts.render import render_examples, submit

REPO = Path(__file__).resolve().parents[1]


def test_examples_in_sync_with_templates():
    """jobscripts/ at the repo root holds the rendered EXAMPLES; rewrite with `python -m prov4ml_hpc.jobscripts`."""
    rendered = render_examples()
    on_disk = {p.name: p.read_text() for p in (REPO / "jobscripts").glob("*.sbatch")}
    assert sorted(on_disk) == sorted(rendered)
    for name, text in rendered.items():
        assert on_disk[name] == text, f"jobscripts/{name} is stale: run `python -m prov4ml_hpc.jobscripts`"


@pytest.mark.parametrize("name", sorted(render_examples()))
def test_examples_are_valid_bash(name):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    proc = subprocess.run(["bash", "-n", str(REPO / "jobscripts" / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t != "merge"])
def test_every_template_renders(template):
    text = render_template(template, command=["train.py"], job_name="t", time="10")
    assert text.startswith("#!/bin/bash\n") and "{{" not in text
    assert "#SBATCH --job-name=t\n" in text and "#SBATCH --time=10\n" in text
    assert "srun --kill-on-bad-exit=1 python3 -m prov4ml_hpc.run train.py" in text
    assert '--dependency="afterany:$SLURM_JOB_ID"' in text


def test_command_words_are_quoted_never_split():
    evil = ["train.py", "--name", "$(rm -rf ~)", "a b", "x;y", "'q'"]
    text = render_template("single-node", command=evil)
    line = next(x for x in text.splitlines() if x.startswith("srun "))
    assert line.endswith("""train.py --name '$(rm -rf ~)' 'a b' 'x;y' ''"'"'q'"'"''""")
    with pytest.raises(ConfigError, match="list of words"):
        render_template("single-node", command="train.py --lr 1")


def test_python_prefix_and_hook_mode():
    text = render_template("single-node", command=["python3.11", "-m", "pkg.train"])
    assert "srun --kill-on-bad-exit=1 python3.11 -m prov4ml_hpc.run -m pkg.train" in text
    hooked = render_template("single-node", command=["torchrun", "--nproc-per-node=4", "t.py"], mode="hook")
    assert "export PROV4ML_HPC_HOOK=1" in hooked and "prov4ml_hpc.hook site-dir" in hooked
    assert "srun --kill-on-bad-exit=1 torchrun --nproc-per-node=4 t.py" in hooked
    with pytest.raises(ConfigError, match="no script"):
        render_template("single-node", command=["python"])
    with pytest.raises(ConfigError, match="needs a command"):
        render_template("single-node")


@pytest.mark.parametrize(
    "option, value",
    [
        ("job_name", "a b"),
        ("job_name", "x\n#SBATCH --uid=0"),
        ("partition", "gpu;rm"),
        ("account", "$(id)"),
        ("qos", ""),
        ("time", "1h"),
        ("time", "10:00:00:00"),
        ("nodes", 0),
        ("nodes", "2"),
        ("nodes", True),
        ("ntasks_per_node", -1),
        ("gpus_per_node", "4 --uid=0"),
        ("cpus_per_task", 1.5),
        ("mem", "lots"),
        ("output", "out file.txt"),
        ("output", "a'b"),
        ("signal", "KILL@60"),
        ("signal", "USR1@soon"),
        ("signal", "X:USR1"),
        ("array", "0-9;id"),
        ("mpi", "pmi2 --x"),
        ("experiment", "../up"),
        ("mode", "magic"),
        ("python", "py thon"),
        ("merge_time", "forever"),
        ("run_dir", "a\nb"),
    ],
)
def test_invalid_values_are_refused(option, value):
    with pytest.raises(ConfigError):
        render_template("array", command=["t.py"], **{option: value})


@pytest.mark.parametrize("time", ["30", "30:00", "01:00:00", "2-00", "2-12:00", "1-00:00:00", "UNLIMITED"])
def test_slurm_time_formats(time):
    assert f"#SBATCH --time={time}\n" in render_template("single-node", command=["t.py"], time=time)


def test_options_render_as_sbatch_lines():
    text = render_template(
        "multi-node",
        command=["t.py"],
        nodes=8,
        ntasks_per_node=4,
        gpus_per_node="a100:4",
        cpus_per_task=8,
        mem="200G",
        partition="booster",
        account="proj_1",
        qos="normal",
        output="logs/%x-%j.out",
        signal="USR1@90",
        requeue=True,
        mpi="pmix",
        run_dir="/scratch/my runs",
        experiment="exp-1",
    )
    for line in (
        "--nodes=8",
        "--ntasks-per-node=4",
        "--gpus-per-node=a100:4",
        "--cpus-per-task=8",
        "--mem=200G",
        "--partition=booster",
        "--account=proj_1",
        "--qos=normal",
        "--output=logs/%x-%j.out",
        "--signal=USR1@90",
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in text
    assert "export PROV4ML_HPC_RUN_DIR='/scratch/my runs'" in text
    assert "export PROV4ML_HPC_EXPERIMENT=exp-1" in text
    assert 'PROV4ML_HPC_SIGNALS="${PROV4ML_HPC_SIGNALS:-TERM,INT,USR1}"' in text
    assert "srun --kill-on-bad-exit=1 --mpi=pmix" in text
    assert "trap" not in text  # only a B: signal needs forwarding by the batch shell
    assert "trap 'kill -USR1" in render_template("single-node", command=["t.py"], signal="B:USR1@60")


def test_unknown_template_and_option():
    with pytest.raises(ConfigError, match="single-node"):
        render_template("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        render_template("single-node", command=["t.py"], gpus=4)


def test_no_gpu_line_and_no_merge_job():
    text = render_template("single-node", command=["t.py"], gpus_per_node=0, merge=False)
    assert "--gpus-per-node" not in text and "sbatch --parsable" not in text


def test_merge_template():
    text = render_template("merge", run_path="/runs/exp/slurm-7", dependency="afterany:7")
    assert "#SBATCH --dependency=afterany:7\n" in text
    assert text.rstrip().endswith("exec python3 -m prov4ml_hpc merge /runs/exp/slurm-7")
    with pytest.raises(ConfigError, match="run_path"):
        render_template("merge")


def test_submit_reports_a_missing_sbatch():
    with pytest.raises(ConfigError, match="cannot run"):
        submit("#!/bin/bash\n", sbatch="/nonexistent/sbatch")


def test_examples_cover_every_template():
    used = {opts.get("template", name) for name, opts in EXAMPLES.items()}
    assert used == set(TEMPLATES)


def test_submit_with_a_dependent_merge_job(tmp_path):
    """A stand-in sbatch records its arguments and stdin and answers like `sbatch --parsable`."""
    fake = tmp_path / "sbatch"
    log = tmp_path / "calls"
    fake.write_text(f"""#!/bin/bash
mkdir -p {log}; n=$(ls {log} | grep -c args)
echo "$@" > {log}/$n.args; cat > {log}/$n.script; echo $((100 + n))
""")
    fake.chmod(0o755)
    text = render_template("single-node", command=["t.py"], merge=False)
    ids = submit(text, sbatch=str(fake), merge_run_path="/runs/exp/slurm-{job_id}")
    assert ids == ["100", "101"]
    assert (log / "0.script").read_text() == text
    assert (log / "1.args").read_text().split() == ["--parsable", "--dependency=afterany:100"]
    assert "merge /runs/exp/slurm-100" in (log / "1.script").read_text()


# ---- command words that bash really runs -------------------------------------------------------------------
def _srun_args(text: str, env: dict[str, str]) -> list[str]:
    """Run the script's srun line in bash with `srun` replaced by a function printing its arguments."""
    line = next(x for x in text.splitlines() if x.startswith("srun "))
    proc = subprocess.run(
        ["bash", "-c", 'srun() { printf "%s\\n" "$@"; }\n' + line],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def test_array_task_id_placeholder_becomes_the_task_id():
    text = render_template(
        "array", command=["sweep.py", "--seed", "{task_id}", "--out=res-{task_id}.json", "it's {x}", "$HOME"]
    )
    args = _srun_args(text, {"SLURM_ARRAY_TASK_ID": "7", "HOME": "/root"})
    assert args[-6:] == ["sweep.py", "--seed", "7", "--out=res-7.json", "it's {x}", "$HOME"]
    hooked = render_template("array", mode="hook", command=["python3", "sweep.py", "{task_id}"])
    assert _srun_args(hooked, {"SLURM_ARRAY_TASK_ID": "3"})[-3:] == ["python3", "sweep.py", "3"]
    with pytest.raises(ConfigError, match="array template"):
        render_template("single-node", command=["t.py", "--seed", "{task_id}"])


def test_hook_mode_runs_a_python_script_with_the_interpreter():
    """`--hook -- train.py` used to exec train.py itself (Permission denied unless executable)."""
    for command, expected in (
        (["plain_train.py", "--lr", "1"], ["python3", "plain_train.py", "--lr", "1"]),
        (["-m", "pkg.train"], ["python3", "-m", "pkg.train"]),
        (["python3.12", "t.py"], ["python3.12", "t.py"]),
        (["torchrun", "--nproc-per-node=4", "t.py"], ["torchrun", "--nproc-per-node=4", "t.py"]),
        (["./run.sh"], ["./run.sh"]),
    ):
        text = render_template("single-node", mode="hook", command=command)
        assert _srun_args(text, {})[1:] == expected, command  # after --kill-on-bad-exit=1


def test_multi_node_master_port_from_the_job_id():
    text = render_template("multi-node", command=["t.py"])
    line = next(x for x in text.splitlines() if "MASTER_PORT=" in x)
    for env, port in (
        ({"SLURM_JOB_ID": "123456"}, "29956"),
        ({"SLURM_JOB_ID": "7", "MASTER_PORT": "4000"}, "4000"),
    ):
        proc = subprocess.run(
            ["bash", "-c", f'{line}\necho "$MASTER_PORT"'],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert proc.stdout.strip() == port


# ---- what the cluster has: sinfo's answer, the defaults that fit it, requests it cannot run ------------------
from prov4ml_hpc.jobscripts.cluster import fit_defaults, gpus_in_gres, parse_sinfo, problems  # noqa: E402
from prov4ml_hpc.jobscripts.render import effective_options  # noqa: E402

# `sinfo -h -o "%P|%D|%G|%c|%l|%a"`: the first line as this machine's test SLURM prints it; GPU lines in the
# documented Gres forms (gpu:COUNT, gpu:TYPE:COUNT(S:SOCKETS), several types)
SINFO = """debug*|1|(null)|8|1:00:00|up
booster|96|gpu:a100:4(S:0-1)|48|1-00:00:00|up
booster|32|gpu:a100:4(S:0-1),shard:8|48+|1-00:00:00|up
mixed|4|gpu:v100:2,gpu:t4:2|32|infinite|down
"""


def test_parse_sinfo_partitions_and_gres():
    parts = {p.name: p for p in parse_sinfo(SINFO)}
    assert parts["debug"].default and parts["debug"].gpus_per_node == 0 and parts["debug"].nodes == 1
    assert parts["debug"].cpus_per_node == 8 and parts["debug"].max_time_s == 3600
    b = parts["booster"]
    assert (b.nodes, b.gpus_per_node, b.gpu_types, b.cpus_per_node, b.max_time_s) == (
        128,
        4,
        ("a100",),
        48,
        86400,
    )
    assert parts["mixed"].gpus_per_node == 4 and parts["mixed"].max_time_s is None
    assert gpus_in_gres("(null)") == (0, ()) and gpus_in_gres("gpu:8") == (8, ())


def test_defaults_fit_the_partition():
    parts = {p.name: p for p in parse_sinfo(SINFO)}
    chosen, notes = fit_defaults("single-node", {}, parts["debug"])
    assert chosen == {"gpus_per_node": 0, "ntasks_per_node": 4} and "no GPUs" in notes[0]
    assert fit_defaults("multi-node", {}, parts["debug"])[0]["nodes"] == 1  # 2 would pend forever
    assert fit_defaults("multi-node", {}, parts["booster"])[0] == {
        "gpus_per_node": 4,
        "ntasks_per_node": 4,
        "nodes": 2,
    }
    assert fit_defaults("single-node", {"gpus_per_node": "2"}, parts["booster"])[0] == {"ntasks_per_node": 2}
    assert fit_defaults("array", {}, parts["booster"])[0] == {"gpus_per_node": 1}
    assert fit_defaults(
        "single-node", {"nodes": 1, "gpus_per_node": 4, "ntasks_per_node": 4}, parts["booster"]
    ) == (
        {},
        [],
    )


def test_requests_a_partition_cannot_run_are_named_with_a_fix():
    parts = {p.name: p for p in parse_sinfo(SINFO)}
    opts = effective_options("multi-node", command=["t.py"], nodes=2, time="02:00:00", ntasks_per_node=16)
    found = problems(opts, parts["debug"])
    assert len(found) == 4, found
    assert "--nodes=2 but partition debug has 1 node(s)" in found[0] and "pend forever" in found[0]
    assert "Invalid generic resource" in found[1] and "--gpus-per-node=0" in found[1]
    assert "16 CPUs" in found[2] and "at most 01:00:00" in found[3]
    ok = effective_options("single-node", command=["t.py"], gpus_per_node="a100:4", partition="booster")
    assert problems(ok, parts["booster"]) == []
    wrong_type = effective_options("single-node", command=["t.py"], gpus_per_node="h100:4")
    assert "GPU types a100 only" in problems(wrong_type, parts["booster"])[0]
    assert "is down" in problems(effective_options("single-node", command=["t.py"]), parts["mixed"])[-1]


def _fake_program(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_cli_fills_defaults_from_sinfo_and_refuses_what_cannot_run(tmp_path, monkeypatch):
    """A stand-in `sinfo` (a GPU cluster this machine does not have) answering in sinfo's documented
    `-o "%P|%D|%G|%c|%l|%a"` format; the real one is exercised by the slurm tier."""
    from click.testing import CliRunner

    from prov4ml_hpc.cli import main

    _fake_program(tmp_path, "sinfo", f"cat <<'EOF'\n{SINFO}EOF")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    r = CliRunner().invoke(main, ["sbatch", "single-node", "--partition", "booster", "--", "t.py"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --gpus-per-node=4\n" in r.stdout and "#SBATCH --ntasks-per-node=4\n" in r.stdout
    assert "partition booster: 128 node(s), 48 CPUs and 4 GPU(s) per node" in r.stderr
    r = CliRunner().invoke(main, ["sbatch", "single-node", "--", "t.py"])  # the default partition: debug
    assert "--gpus-per-node" not in r.stdout and "#SBATCH --ntasks-per-node=4\n" in r.stdout
    r = CliRunner().invoke(
        main, ["sbatch", "multi-node", "--nodes", "2", "--", "t.py"]
    )  # printing: a warning
    assert r.exit_code == 0 and "warning: --nodes=2 but partition debug has 1 node(s)" in r.stderr
    _fake_program(tmp_path, "sbatch", "echo SUBMITTED >&2; echo 99")
    r = CliRunner().invoke(main, ["sbatch", "multi-node", "--nodes", "2", "--submit", "--", "t.py"])
    assert r.exit_code == 1 and "nothing was submitted" in r.output and "SUBMITTED" not in r.output
    r = CliRunner().invoke(main, ["sbatch", "single-node", "--partition", "nope", "--", "t.py"])
    assert r.exit_code == 1 and "partition 'nope' does not exist" in r.output and "booster" in r.output
    r = CliRunner().invoke(main, ["sbatch", "single-node", "--no-detect", "--", "t.py"])
    assert "#SBATCH --gpus-per-node=4\n" in r.stdout  # the template's own defaults


def test_cli_submit_says_where_the_run_goes_and_how_it_is_merged(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from prov4ml_hpc.cli import main

    _fake_program(tmp_path, "sbatch", "cat > /dev/null; echo 4242")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("PROV4ML_HPC_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    args = ["sbatch", "single-node", "--no-detect", "--job-name", "tr", "--submit", "--", "t.py"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.stdout == "4242\n"  # stdout: the job id alone, for scripts
    assert f"run directory: {tmp_path}/prov4ml_runs/experiment/slurm-4242" in r.stderr
    assert "merge job: job 4242 submits it when it starts (merge-tr, --dependency=afterany:4242" in r.stderr
    r = CliRunner().invoke(main, [*args[:-2], "--no-merge", "--run-dir", "/scratch/r", "--", "t.py"])
    assert "run directory: /scratch/r/experiment/slurm-4242" in r.stderr
    assert "merge job: none (--no-merge)" in r.stderr
    r = CliRunner().invoke(main, ["sbatch", "array", "--no-detect", "--submit", "--", "t.py", "{task_id}"])
    assert f"{tmp_path}/prov4ml_runs/experiment/slurm-4242_TASK (one per array task" in r.stderr


def test_submit_explains_a_gres_refusal(tmp_path):
    fake = tmp_path / "sbatch"
    _fake_program(
        tmp_path, "sbatch", 'echo "sbatch: error: Invalid generic resource (gres) specification" >&2; exit 1'
    )
    with pytest.raises(ConfigError, match="Invalid generic resource.*use --gpus-per-node 0"):
        submit(render_template("single-node", command=["t.py"]), sbatch=str(fake))
