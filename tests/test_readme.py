"""The README's two commands are the ones that work: the demo command runs and shows the whole product in its
report (every section with real content, no warning), CI runs the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
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


def test_the_first_command_installs_what_the_demo_shows():
    """The extras of the install command bring MPI, the plots, the graph layout and energy (codecarbon)."""
    install = readme_commands()[0].split("&&")[0]
    extras = re.search(r'"\.\[([a-z,]+)\]"', install).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(names: list[str]) -> set[str]:
        out = set()
        for name in names:
            for req in declared[name]:
                inner = re.fullmatch(r"prov4ml-hpc\[([a-z,]+)\]", req)
                out |= expand(inner.group(1).split(",")) if inner else {re.split(r"[<>=\[ ;]", req)[0]}
        return out

    assert {"mpi4py", "mpich", "matplotlib", "networkx", "codecarbon"} <= expand(extras)


def _path_without(program: str, tmp: Path) -> str:
    """A PATH with every program of this one except ``program`` (a fresh machine has no graphviz)."""
    folder = tmp / f"bin-without-{program}"
    folder.mkdir()
    dirs = [os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)]
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src, dst = os.path.join(d, name), folder / name
            if name != program and not dst.exists() and os.access(src, os.X_OK) and os.path.isfile(src):
                dst.symlink_to(src)
    return str(folder)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's demo command as a newcomer runs it: defaults, system metrics on, no graphviz on PATH."""
    tmp = tmp_path_factory.mktemp("demo")
    demo = readme_commands()[0].split("&&")[-1].split()
    exe = os.path.join(os.path.dirname(sys.executable), demo[0])
    cmd = [exe if os.path.exists(exe) else demo[0], *demo[1:]]
    env = clean_env(PATH=_path_without("dot", tmp))
    env.pop("PROV4ML_HPC_SYSTEM_METRICS")  # the default: sampling on
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(re.search(r"run directory: (\S+)", proc.stdout).group(1))
    assert run_dir.is_relative_to(tmp)  # a fresh folder in the current directory
    return proc, run_dir


@pytest.mark.mpi
@pytest.mark.slow
def test_demo_command_runs_and_reports_its_files(demo):
    proc, run_dir = demo
    assert not [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line.lower()]
    ranks = sorted((run_dir / "ranks").iterdir())
    assert [r.name for r in ranks] == [f"rank-0000{i}.h5" for i in range(4)]
    for i, path in enumerate(ranks):
        rf = p4.read_rank_file(path)
        assert rf.status == "completed" and rf.global_rank == i and rf.attrs["world_size"] == 4
        loss = rf.values("loss")
        assert len(loss) == 800 and loss["value"][-100:].mean() < loss["value"][:10].mean()
        assert len(rf.values("val_accuracy", "validation")) == 8 == len(rf.values("test_loss", "testing"))
        assert rf.params["world_size"] == 4 and rf.params["epochs"] == 8
        kinds = [r["type"] for r in rf.records_of("dataset", "model", "artifact")]
        assert kinds == (["dataset"] + ["artifact"] * 8 + ["model"] if i == 0 else ["dataset"])
    assert "ranks/rank-00003.h5: completed" in proc.stdout
    assert f"report: file://{run_dir}/report/index.html" in proc.stdout


class Recorded:
    """What one saved matplotlib figure shows: per axes its labels, legend entries and the lines' points."""

    def __init__(self, fig) -> None:
        self.axes = []
        for ax in fig.axes:
            legend = ax.get_legend()
            self.axes.append(
                {
                    "title": ax.get_title(),
                    "xlabel": ax.get_xlabel(),
                    "ylabel": ax.get_ylabel(),
                    "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                    "lines": {line.get_label(): line.get_ydata() for line in ax.get_lines()},
                }
            )


@pytest.mark.mpi
@pytest.mark.slow
def test_demo_report_has_real_content_in_every_section(demo, tmp_path, monkeypatch):
    """Re-draws the demo's report in this process and reads every figure's content before it is saved."""
    from matplotlib.figure import Figure

    from prov4ml_hpc.view.inspect import summarize
    from prov4ml_hpc.view.report import write_report

    _, run_dir = demo
    shipped = (run_dir / "report" / "index.html").read_text()
    figures: dict[str, Recorded] = {}
    original = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        figures[os.path.basename(str(path))] = Recorded(fig)
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    monkeypatch.setenv("PATH", _path_without("dot", tmp_path))
    index = write_report(run_dir, tmp_path / "report")
    page = Path(index).read_text()
    assert page.count("<img") == shipped.count("<img")

    summary = summarize(run_dir)
    assert summary["job"]["elapsed_s"] > 5  # a real run: not 0:00:00

    # metrics: one plot per series, step on x, the name on y, mean of the 4 ranks and each rank in the legend
    metric_plots = {n: f for n, f in figures.items() if n.startswith("metric-")}
    expected = {
        "training-loss": 800,
        "training-accuracy": 800,
        "training-lr": 800,
        "validation-val_loss": 8,
        "validation-val_accuracy": 8,
        "testing-test_loss": 8,
        "testing-test_accuracy": 8,
    }
    assert {re.sub(r"^metric-\d+-|\.png$", "", n) for n in metric_plots} == set(expected)
    for name, rec in metric_plots.items():
        (ax,) = rec.axes
        key = re.sub(r"^metric-\d+-|\.png$", "", name)
        assert ax["xlabel"] == "step" and ax["ylabel"] == key.split("-", 1)[1]
        assert {"mean of 4 ranks", "rank 0", "rank 3"} <= set(ax["legend"])
        assert len(ax["lines"]["mean of 4 ranks"]) == expected[key]
        assert all(len(ax["lines"][f"rank {r}"]) == expected[key] for r in range(4))
        assert f'src="{name}"' in page

    # CPU and memory of the node: one line each, a sample about every second
    nodes = figures["nodes.png"].axes
    assert [a["ylabel"] for a in nodes] == ["CPU busy (% of node)", "memory used (GiB)"]
    assert nodes[-1]["xlabel"] == "seconds since job start"
    for ax in nodes:
        (points,) = ax["lines"].values()
        assert len(points) >= 10 and ax["legend"] == [summary["job"]["nodes"][0]]
    mem = next(iter(nodes[1]["lines"].values()))
    assert mem.min() > 0 and mem.max() < 4096  # GiB: plausible values, not bytes

    # energy: codecarbon's cumulative kWh rising over the run, several readings
    energy = figures["energy.png"].axes
    assert energy[0]["ylabel"] == "energy (kWh, cumulative)" and energy[0]["legend"] == ["total of 1 node(s)"]
    kwh = energy[0]["lines"]["total of 1 node(s)"]
    assert kwh[-1] > kwh[0] >= 0 and (kwh[1:] >= kwh[:-1]).all()
    readings = next(s for s in summary["series"] if s["name"] == "energy.consumed")
    assert readings["count"] >= 4
    assert summary["energy"]["energy_kwh"] > 0
    assert energy[1]["ylabel"] == "g CO2eq per hour" and energy[1]["legend"] == ["emission rate, all nodes"]

    # no GPU here: said plainly; the provenance picture drawn without graphviz, with the run's nodes in it
    assert "gpus.png" not in figures and "has no GPU (NVML:" in page
    svg = (tmp_path / "report" / "provenance.svg").read_text()
    assert "drawn by prov4ml-hpc's layered layout" in svg
    for label in (f"run {run_dir.name}", "dataset: teacher-labels", "model: mlp", "artifact: checkpoint"):
        assert f">{label}</text>" in svg
    assert svg.count("<text") >= 10 and 'marker-end="url(#arrow)"' in svg
    assert "attempts</th><td>1 (not requeued)" in page
