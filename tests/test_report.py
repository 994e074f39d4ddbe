"""The report: plots and index.html of real runs, opened in headless Chromium; thinning and big inputs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from test_inspect import make_run

from prov4ml_hpc.view.report import write_report
from prov4ml_hpc.view.report.data import MetricData, PlotData, SystemSeries
from prov4ml_hpc.view.report.plots import band, plot_energy, plot_gpus, plot_metric, plot_nodes
from prov4ml_hpc.view.report.thin import decimate

# read at import: the autouse fixture of conftest.py removes PROV4ML_HPC_* variables from each test's environment
REQUIRE_CHROMIUM = bool(os.environ.get("PROV4ML_HPC_REQUIRE_CHROMIUM"))
KEEP_SCREENSHOT = os.environ.get("PROV4ML_HPC_KEEP_SCREENSHOT")  # copy the screenshot there, to look at it


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables += 1


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _check_page(index: str, text: str) -> _Imgs:
    parser = _Imgs()
    parser.feed(text)
    assert parser.imgs and parser.tables >= 5
    for src in parser.imgs:
        if not src.startswith("data:"):
            assert "/" not in src and os.path.isfile(os.path.join(os.path.dirname(index), src)), src
    assert not re.search(
        r"(?i)(src|href)\s*=\s*['\"]?\s*(https?:)?//", text
    )  # nothing fetched from a network
    assert "http://" not in text and "https://" not in text
    return parser


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory):
    from prov4ml_hpc.merge import merge_run

    root = str(tmp_path_factory.mktemp("runs"))
    run_dir = make_run(root, "rep", fail_rank=3)
    merge_run(run_dir, query_slurm=False)
    return run_dir


def test_report_of_merged_run(merged_run):
    t0 = time.perf_counter()
    index = write_report(merged_run)
    took = time.perf_counter() - t0
    assert index == os.path.join(merged_run, "report", "index.html")
    text = _read(index)
    parser = _check_page(index, text)
    names = os.listdir(os.path.dirname(index))
    assert sum(n.startswith("metric-") for n in names) == 3  # accuracy, loss, val_loss
    assert "no GPU samples" in text and "no node samples" in text
    assert "lr" in text and "train-data" in text and "failed" in text
    assert any(s.endswith(".svg") for s in parser.imgs)  # graphviz, or the pure-Python layout without it
    print(f"report of a 4-rank run: {took:.2f} s")


def test_report_unmerged_embedded(tmp_path):
    run_dir = make_run(str(tmp_path), "u", ranks=2)
    out = tmp_path / "elsewhere"
    index = write_report(run_dir, out, embed=True)
    text = _read(index)
    parser = _check_page(index, text)
    assert all(src.startswith("data:image/") for src in parser.imgs)
    assert "not merged" in text or "graphviz" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_in_headless_chromium(merged_run, tmp_path):
    exe = _chromium()
    if exe is None:
        if REQUIRE_CHROMIUM:
            pytest.fail("PROV4ML_HPC_REQUIRE_CHROMIUM is set but no chromium is installed")
        pytest.skip(
            "chromium is not installed (apt-get install chromium); set PROV4ML_HPC_REQUIRE_CHROMIUM to fail"
        )
    index = write_report(merged_run)
    url = "file://" + index
    base = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,2000", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20000
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    parser = _check_page(index, dom)
    assert len(parser.imgs) >= 4
    if KEEP_SCREENSHOT:
        shutil.copy(shot, KEEP_SCREENSHOT)


# ---- plots on synthetic arrays -------------------------------------------------------------------------
def test_decimate_keeps_extremes():
    x = np.arange(1_000_000, dtype=float)
    y = np.sin(x / 1000.0)
    y[123_457] = 50.0
    y[765_432] = -50.0
    xs, ys = decimate(x, y, 500)
    assert len(xs) <= 1000 and ys.max() == 50.0 and ys.min() == -50.0
    assert np.all(np.diff(xs) > 0)
    assert decimate(x[:10], y[:10], 500)[0].shape == (10,)
    xb, lo, mid, hi = band(x, y - 1, y, y + 1, 100)
    assert len(xb) == 100 and hi.max() == 51.0 and lo.min() == -51.0


def test_ten_million_points_plot_fast(tmp_path):
    n = 10_000_000
    steps = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    mean = 1.0 / np.sqrt(steps + 1.0) + rng.normal(0, 0.01, n)
    from prov4ml_hpc.merge.runfile import agg_dtype

    agg = np.empty(n, dtype=agg_dtype())  # the stored form of /aggregates
    agg["step"], agg["count"], agg["nonfinite"] = steps, 1000, 0
    agg["mean"], agg["min"], agg["max"], agg["std"] = mean, mean - 0.05, mean + 0.05, 0.02
    t0 = time.perf_counter()
    plot_metric(MetricData("training", "loss", {0: agg}), str(tmp_path / "m.png"))
    took = time.perf_counter() - t0
    print(f"metric plot of 10^7 steps (mean + band, 1000 ranks): {took:.2f} s")
    assert took < 30


def _gpu_data(nodes: int, gpus: int, samples: int) -> PlotData:
    t = 1.7e9 + np.arange(samples, dtype=float)
    rng = np.random.default_rng(1)
    system = []
    for n in range(nodes):
        for g in range(gpus):
            for field, scale in (("utilization", 100), ("memory_used", 40 * 2**30), ("power", 400)):
                v = scale * rng.random(samples)
                system.append(SystemSeries(f"gpu.{g}.{field}", f"node{n:03d}", n * gpus + g, 0, t, v))
        system.append(
            SystemSeries("node.cpu_percent", f"node{n:03d}", n * gpus, 0, t, 100 * rng.random(samples))
        )
        system.append(
            SystemSeries("node.memory_used", f"node{n:03d}", n * gpus, 0, t, 2**35 * rng.random(samples))
        )
        system.append(
            SystemSeries("energy.consumed", f"node{n:03d}", n * gpus, 0, t, np.linspace(0, 2, samples))
        )
        system.append(
            SystemSeries("energy.emissions", f"node{n:03d}", n * gpus, 0, t, np.linspace(0, 1, samples))
        )
    return PlotData([], system, float(t[0]), nodes * gpus)


def test_system_plots_few_and_many(tmp_path):
    few = _gpu_data(2, 2, 600)
    assert plot_gpus(few, str(tmp_path / "g.png")) and plot_nodes(few, str(tmp_path / "n.png"))
    assert plot_energy(few, str(tmp_path / "e.png"))
    many = _gpu_data(250, 4, 3600)  # 1000 GPUs, an hour at 1 s: 3.6 million samples per field
    t0 = time.perf_counter()
    assert plot_gpus(many, str(tmp_path / "g2.png"))
    assert plot_nodes(many, str(tmp_path / "n2.png")) and plot_energy(many, str(tmp_path / "e2.png"))
    took = time.perf_counter() - t0
    print(f"GPU/node/energy plots of 1000 GPUs x 3600 samples: {took:.2f} s")
    assert took < 60
    assert plot_gpus(PlotData([], [], None, 0), str(tmp_path / "none.png")) is None
