"""compare: parameters that differ, last/best metrics side by side, an overlay plot."""

from __future__ import annotations

import os

import pytest
from test_inspect import make_run

from prov4ml_hpc.errors import ConfigError
from prov4ml_hpc.view.compare import compare_runs, format_comparison, plot_overlay


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from prov4ml_hpc.merge import merge_run

    root = str(tmp_path_factory.mktemp("runs"))
    a = make_run(root, "a", ranks=2, lr=0.1)
    b = make_run(root, "b", ranks=3, lr=0.3, steps=30)
    merge_run(a, query_slurm=False)  # one merged, one not
    return a, b


def test_compare_runs(two_runs):
    c = compare_runs(two_runs)
    assert [r["label"] for r in c["runs"]] == ["a", "b"]
    assert c["params"]["differ"] == {"lr": [0.1, 0.3]}
    assert c["params"]["same"] == {"batch_size": 32, "rank_seed": 7}
    loss = next(m for m in c["metrics"] if m["name"] == "loss")
    assert loss["best_rule"] == "min"
    assert loss["best"] == [pytest.approx(1 / 50 + 0.1), pytest.approx(1 / 30 + 0.3)]
    assert loss["last_step"] == [49, 29]
    assert all(m["kind"] == "metric" for m in c["metrics"])
    text = format_comparison(c)
    assert "lr" in text and "training/loss min" in text and "[1]" in text


def test_plot_overlay(two_runs, tmp_path):
    out = plot_overlay(two_runs, "loss", "training", tmp_path / "cmp.png")
    assert os.path.getsize(out) > 10000
    with pytest.raises(ConfigError, match="training/loss"):
        plot_overlay(two_runs, "nope", "training", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs(two_runs[:1])
