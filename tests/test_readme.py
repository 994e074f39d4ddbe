"""The README's two commands are the ones that work: the demo command runs, CI runs the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

import prov4ml_hpc as p4

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_has_exactly_two_commands_and_ci_runs_the_second():
    install_and_demo, tests = readme_commands()
    assert install_and_demo.startswith("pip install") and install_and_demo.endswith("prov4ml-hpc demo")
    assert tests == "bash scripts/test.sh"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.mpi
def test_demo_command_runs_and_reports_its_files(tmp_path):
    demo = readme_commands()[0].split("&&")[-1].split()
    exe = os.path.join(os.path.dirname(sys.executable), demo[0])
    cmd = [exe if os.path.exists(exe) else demo[0], *demo[1:], "--epochs", "2", "--steps-per-epoch", "50"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(re.search(r"run directory: (\S+)", proc.stdout).group(1))
    assert run_dir.is_relative_to(tmp_path)  # a fresh folder in the current directory
    ranks = sorted((run_dir / "ranks").iterdir())
    assert [r.name for r in ranks] == [f"rank-0000{i}.h5" for i in range(4)]
    for i, path in enumerate(ranks):
        rf = p4.read_rank_file(path)
        assert rf.status == "completed" and rf.global_rank == i and rf.attrs["world_size"] == 4
        loss = rf.values("loss")
        assert len(loss) == 100 and loss["value"][-1] < loss["value"][0]
        assert rf.params["world_size"] == 4
        assert {r["type"] for r in rf.records_of("dataset", "model")} == {"dataset", "model"}
    assert "ranks/rank-00003.h5: completed" in proc.stdout
