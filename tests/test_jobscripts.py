"""sbatch templates: validation of every value, quoting of the command, and the rendered examples kept in sync."""

from __future__ import annotations

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
