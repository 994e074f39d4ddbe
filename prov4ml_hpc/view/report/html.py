"""The report's one HTML page: inline CSS, no scripts, no external requests (no CDN, no web fonts).

Images are files next to index.html, referenced relatively, or data: URIs when the page is embedded.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from typing import Any

from ..inspect import fmt_value, human_bytes, human_seconds

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1f4e9c;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{max-width:1200px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:16px 0;padding:10px 18px}
h2{font-size:17px;margin:6px 0 10px;color:#1f4e9c}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e6e8ec;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:4px 24px}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#666;font-size:13px;font-style:italic}
.st-completed{color:#1e7d32}.st-partial,.st-running{color:#b26a00}
.st-failed,.st-corrupt,.st-missing,.st-cancelled,.st-signalled{color:#b71c1c}
code{font-size:12px;background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""


@dataclass
class Figure:
    title: str
    file: str | None  # file name in the report folder (None: the note says why)
    note: str = ""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img_src(folder: str, name: str, embed: bool) -> str:
    if not embed:
        return _e(name)
    mime = "image/svg+xml" if name.endswith(".svg") else "image/png"
    with open(os.path.join(folder, name), "rb") as fh:
        return f"data:{mime};base64,{base64.b64encode(fh.read()).decode('ascii')}"


def _table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def attempts_text(attempts: list[int]) -> str:
    """How many attempts ran, in words: the attempt numbers on disk are indices (0 is the first run)."""
    if attempts == [0]:
        return "1 (not requeued)"
    indices = ", ".join(map(str, attempts))
    return f"{len(attempts)} (requeued; attempt indices {indices}, 0 is the first run)"


def _job_table(d: dict[str, Any]) -> str:
    j = d["job"]
    nodes = j.get("nodes") or []
    rows = [
        ("run id", _e(d["run_id"])),
        ("experiment", _e(d["experiment"])),
        ("job id", _e(j.get("job_id") or "- (not a SLURM job)")),
        ("job name", _e(j.get("name") or "-")),
        ("state", _e(j.get("state") or "-")),
        ("user", _e(j.get("user") or "-")),
        ("partition", _e(j.get("partition") or "-")),
        ("ranks", _e(j.get("ranks"))),
        (
            "nodes",
            _e(
                f"{j.get('nnodes') or len(nodes)}: "
                + ", ".join(nodes[:8])
                + (" ..." if len(nodes) > 8 else "")
            ),
        ),
        ("GPUs", _e(j.get("gpus") or 0)),
        ("start", _e(j.get("start") or "-")),
        ("end", _e(j.get("end") or "running")),
        ("elapsed", _e(j.get("elapsed") or human_seconds(j.get("elapsed_s")))),
        ("attempts", _e(attempts_text(j.get("attempts") or [0]))),
        ("script", f"<code>{_e(d.get('script') or '-')}</code>"),
        ("read from", _e(f"{d['source']} ({d['state']})")),
        ("directory", f"<code>{_e(d['run_dir'])}</code>"),
    ]
    return _table(rows)


def _ranks_table(d: dict[str, Any]) -> str:
    out = [
        "<table><tr><th>attempt index</th><th>status</th><th class='num'>ranks</th><th>e.g.</th><th>reasons</th></tr>"
    ]
    for attempt, groups in d["ranks"]["attempts"].items():
        for status, g in groups.items():
            more = f" ... (+{g['count'] - len(g['ranks'])})" if g["count"] > len(g["ranks"]) else ""
            reasons = "<br>".join(f"{n} &times; {_e(r[:200])}" for r, n in g["reasons"].items())
            out.append(
                f"<tr><td>{_e(attempt)}</td><td class='st-{_e(status)}'>{_e(status)}</td>"
                f"<td class='num'>{g['count']}</td><td>{_e(', '.join(map(str, g['ranks'])))}{more}</td>"
                f"<td>{reasons}</td></tr>"
            )
    out.append("</table>")
    return "".join(out)


def _series_table(d: dict[str, Any], kind: str) -> str:
    rows = [s for s in d["series"] if s["kind"] == kind]
    if not rows:
        return "<p class='note'>none</p>"
    out = [
        "<table><tr><th>context</th><th>name</th><th class='num'>ranks</th><th class='num'>values</th>"
        "<th class='num'>last step</th><th class='num'>last (mean of ranks)</th><th class='num'>min</th>"
        "<th class='num'>max</th><th>best</th></tr>"
    ]
    for s in rows[:200]:
        best = f"{fmt_value(s['best'])} ({s['best_rule']})" if s.get("best_rule") else "-"
        out.append(
            f"<tr><td>{_e(s['context'])}</td><td>{_e(s['name'])}</td><td class='num'>{s['ranks']}</td>"
            f"<td class='num'>{s['count']}</td><td class='num'>{_e(fmt_value(s['last_step']))}</td>"
            f"<td class='num'>{_e(fmt_value(s['last']))}</td><td class='num'>{_e(fmt_value(s['min']))}</td>"
            f"<td class='num'>{_e(fmt_value(s['max']))}</td><td>{_e(best)}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _params_table(d: dict[str, Any]) -> str:
    if not d["params"]:
        return "<p class='note'>no parameters logged</p>"
    rows = []
    for key, value in d["params"].items():
        if isinstance(value, dict) and value.get("differs"):
            text = "differs between ranks: " + ", ".join(
                f"{v} ({n} ranks)" for v, n in value["values"].items()
            )
        else:
            text = json.dumps(value, default=str)
        rows.append((key, _e(text[:300])))
    return _table(rows)


def _artifacts_table(d: dict[str, Any]) -> str:
    if not d["artifacts"]:
        return "<p class='note'>no artifacts, models or datasets logged</p>"
    out = [
        "<table><tr><th>kind</th><th>role</th><th>name</th><th class='num'>ranks</th><th class='num'>size</th>"
        "<th>path (first)</th></tr>"
    ]
    for a in d["artifacts"][:200]:
        out.append(
            f"<tr><td>{_e(a['kind'])}</td><td>{_e(a['role'])}</td><td>{_e(a['name'])}</td>"
            f"<td class='num'>{a['ranks']}</td><td class='num'>{_e(human_bytes(a['bytes']))}</td>"
            f"<td><code>{_e((a['paths'] or ['-'])[0])}</code></td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _energy_table(d: dict[str, Any]) -> str:
    e = d["energy"]
    if not e:
        return "<p class='note'>no energy totals recorded (codecarbon/NVML/RAPL absent or sampling off)</p>"
    return _table([(k, _e(fmt_value(v))) for k, v in e.items()])


def _files_table(d: dict[str, Any]) -> str:
    rows = []
    for key, value in d["files"].items():
        if key == "total_bytes":
            continue
        if isinstance(value, dict):
            rows.append((key + "/", _e(f"{human_bytes(value['bytes'])} in {value['files']} files")))
        else:
            rows.append((key, _e(human_bytes(value))))
    rows.append(("total", _e(human_bytes(d["files"]["total_bytes"]))))
    return _table(rows)


def _figures(folder: str, figures: list[Figure], embed: bool, cls: str = "") -> str:
    out = []
    for f in figures:
        if f.file is None:
            out.append(f"<p class='note'>{_e(f.note)}</p>")
        else:
            src = _img_src(folder, f.file, embed)
            img = f'<img src="{src}" alt="{_e(f.title)}">'
            if f.file.endswith(".svg") and not embed:
                img = f'<a href="{_e(f.file)}">{img}</a>'
            note = _e(f.note)
            if "provenance-full.svg" in note and not embed:
                note = note.replace(
                    "provenance-full.svg", "<a href='provenance-full.svg'>provenance-full.svg</a>"
                )
            note = f"<p class='note'>{note}</p>" if note else ""
            out.append(f"<figure>{img}{note}</figure>")
    inner = "".join(out)
    return f"<div class='{cls}'>{inner}</div>" if cls else inner


def render_page(
    d: dict[str, Any], folder: str, sections: dict[str, list[Figure]], *, embed: bool, generated: str
) -> str:
    """The HTML text of index.html.  ``sections``: metrics, gpu, nodes, energy, graph -> figures."""
    metric_cls = "grid" if len(sections.get("metrics", [])) > 1 else ""
    problems = "".join(f"<li>{_e(p[:300])}</li>" for p in d["problems"])
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>prov4ml-hpc report: {_e(d['run_id'])}</title><style>{CSS}</style></head><body>",
        f"<header><h1>Run {_e(d['run_id'])}</h1><p>experiment {_e(d['experiment'])} &middot; "
        f"{_e(d['job'].get('ranks'))} ranks &middot; {_e(d['job'].get('state'))} &middot; report generated "
        f"{_e(generated)}</p></header><main>",
        f"<section id='job'><h2>Job</h2>{_job_table(d)}</section>",
        f"<section id='ranks'><h2>Ranks</h2>{_ranks_table(d)}</section>",
        f"<section id='metrics'><h2>Metrics</h2>{_figures(folder, sections.get('metrics', []), embed, metric_cls)}"
        f"{_series_table(d, 'metric')}</section>",
        f"<section id='gpu'><h2>GPUs</h2>{_figures(folder, sections.get('gpu', []), embed)}</section>",
        f"<section id='nodes'><h2>CPU and memory per node</h2>{_figures(folder, sections.get('nodes', []), embed)}"
        "</section>",
        f"<section id='energy'><h2>Energy and emissions</h2>{_figures(folder, sections.get('energy', []), embed)}"
        f"{_energy_table(d)}</section>",
        f"<section id='provenance'><h2>Provenance graph</h2>{_figures(folder, sections.get('graph', []), embed)}"
        "</section>",
        f"<section id='params'><h2>Parameters</h2>{_params_table(d)}</section>",
        f"<section id='artifacts'><h2>Artifacts, models and datasets</h2>{_artifacts_table(d)}</section>",
        f"<section id='system'><h2>System series</h2>{_series_table(d, 'system')}</section>",
        f"<section id='files'><h2>Files</h2>{_files_table(d)}</section>",
    ]
    if problems:
        parts.append(
            f"<section id='problems'><h2>Problems ({d['problems_total']})</h2><ul>{problems}</ul></section>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
