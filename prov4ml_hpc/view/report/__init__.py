"""The report of a run: PNG plots (matplotlib, headless) and one HTML page, ``RUN_DIR/report/index.html``.

``write_report(run_dir)`` works on merged runs (run.h5) and, before a merge, on the rank files; see
docs/report.md for what each plot shows.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
import time
from collections.abc import Callable

from ... import schema

__all__ = ["write_report"]

Progress = Callable[[int, int, str], None]


def stderr_progress(min_total: int = 50) -> Progress:
    """A progress callback printing to stderr about every 5% of a long task (nothing for short ones)."""
    state = {"next": 0.0}

    def report(done: int, total: int, what: str) -> None:
        if total < min_total:
            return
        frac = done / max(total, 1)
        if frac >= state["next"] or done == total:
            print(f"report: reading {done}/{total} ({what})", file=sys.stderr, flush=True)
            state["next"] = frac + 0.05

    return report


def _slug(*parts: str) -> str:
    text = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "metric"


def no_gpu_note(ranks: list) -> str:
    """Why the GPU section has no plot, from what the ranks' GPU samplers recorded (``gpu_status``)."""
    seen: dict[str, set[str]] = {}  # reason -> nodes
    for r in ranks:
        attrs = getattr(r, "meta", None) or getattr(r, "attrs", None) or {}  # the rank file's attributes
        hw = attrs.get(schema.A_HARDWARE)
        status = hw.get("gpu_status") if isinstance(hw, dict) else None
        if isinstance(status, str) and status.startswith("no GPU"):
            seen.setdefault(status.removeprefix("no GPU").lstrip(": "), set()).add(r.node or "?")
    if not seen:
        return "no GPU samples (no gpu.* series: GPU sampling was off, or the ranks recorded no GPU status)"
    parts = []
    for reason, nodes in seen.items():
        where = ", ".join(sorted(nodes)[:8]) + (" ..." if len(nodes) > 8 else "")
        if "nvidia-ml-py is not installed" in reason:
            parts.append(f"GPUs were not looked for on {where}: {reason}")
        else:
            parts.append(f"{where} {'has' if len(nodes) == 1 else 'have'} no GPU (NVML: {reason})")
    return "; ".join(parts) + ". On GPU nodes this section shows utilisation, memory and power per GPU."


def write_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    embed: bool = False,
    progress: Progress | None = None,
) -> str:
    """Write the plots and index.html of a run; return the path of index.html.

    Args:
        run_dir: the run directory (merged or not, running or finished).
        out_dir: where to write (default RUN_DIR/report); created when missing; its old PNG/SVG files of
            earlier reports are replaced.
        embed: put the images into index.html as data: URIs (one file to send around) instead of files next
            to it referenced relatively.
        progress: called as progress(done, total, what) while series are read; default: a line on stderr
            about every 5% for runs with 50 or more ranks or series groups.

    Raises:
        ConfigError: run_dir is not a run directory.
    """
    from ...merge.load import load_run
    from ..inspect import summarize_run
    from .data import load_plot_data
    from .graph import render_graph
    from .html import Figure, render_page
    from .plots import plot_energy, plot_gpus, plot_metric, plot_nodes

    t_start = time.perf_counter()
    run_dir = os.path.abspath(os.fspath(run_dir))
    run = load_run(run_dir)
    summary = summarize_run(run)
    out = (
        os.path.abspath(os.fspath(out_dir))
        if out_dir is not None
        else os.path.join(run_dir, schema.REPORT_DIR)
    )
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # files of an earlier report
        if name.endswith((".png", ".svg")) and (
            name.startswith(("metric-", "gpus", "nodes", "energy", "provenance"))
        ):
            os.unlink(os.path.join(out, name))
    data = load_plot_data(run, progress=progress or stderr_progress())
    sections: dict[str, list[Figure]] = {"metrics": [], "gpu": [], "nodes": [], "energy": [], "graph": []}
    for i, md in enumerate(data.metrics):
        name = f"metric-{i:03d}-{_slug(md.context, md.name)}.png"
        plot_metric(md, os.path.join(out, name))
        sections["metrics"].append(Figure(f"{md.name} ({md.context})", name))
    if not data.metrics:
        sections["metrics"].append(Figure("metrics", None, "no metrics logged"))
    for key, fn, name, none in (
        ("gpu", plot_gpus, "gpus.png", no_gpu_note(run.ranks)),
        ("nodes", plot_nodes, "nodes.png", "no node samples (node.* series; system metrics were off)"),
        (
            "energy",
            plot_energy,
            "energy.png",
            "no energy samples (energy.* series need codecarbon, on local rank 0)",
        ),
    ):
        made = fn(data, os.path.join(out, name))
        sections[key].append(Figure(key, name) if made else Figure(key, None, none))
    svg, what = render_graph(run_dir, summary, os.path.join(out, "provenance.svg"))
    sections["graph"].append(Figure("provenance graph", os.path.basename(svg) if svg else None, what))
    generated = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    page = render_page(summary, out, sections, embed=embed, generated=generated)
    index = os.path.join(out, "index.html")
    tmp = f"{index}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, index)
    if data.nranks >= 50:
        print(f"report: {index} written in {time.perf_counter() - t_start:.1f} s", file=sys.stderr)
    return index
