"""The `prov4ml-hpc` command line: one click group; each command parses, calls the library and prints.

Data goes to stdout, messages to stderr.  Errors: ClickException (exit 1), UsageError (exit 2).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time

import click

from ._version import __version__
from .errors import Prov4mlHpcError


class _Group(click.Group):
    """Turns our own errors into clean one-line messages (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Prov4mlHpcError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prov4ml-hpc")
def main() -> None:
    """Provenance and metrics for ML training jobs on SLURM clusters with MPI."""


def _run_dir_arg():
    return click.argument("run_dir", type=click.Path(exists=True, file_okay=False, dir_okay=True))


# ---- demo ----------------------------------------------------------------------------------------------
def find_mpiexec() -> str | None:
    """mpiexec of the active environment first (the `mpich` wheel installs one next to python), then PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


@main.command()
@click.option(
    "--ranks",
    "-n",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="number of MPI ranks to start on this machine",
)
@click.option(
    "--run-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="RUN_ROOT for the demo [default: a fresh ./prov4ml-demo-<time> folder]",
)
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1, 1000))
@click.option("--steps-per-epoch", default=100, show_default=True, type=click.IntRange(1, 10**6))
@click.option(
    "--report/--no-report", default=True, show_default=True, help="write the HTML report at the end"
)
@click.option(
    "--timeout",
    default=600,
    show_default=True,
    type=click.IntRange(10, 86400),
    help="seconds before the mpiexec job is stopped",
)
def demo(
    ranks: int, run_dir: str | None, epochs: int, steps_per_epoch: int, report: bool, timeout: int
) -> None:
    """Run the embedded demo: a small data-parallel training on N local MPI ranks, then merge and report.

    With the defaults the training takes about 15-30 s on 2 cores (8 epochs of an MLP on 4 ranks).
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise click.ClickException('mpiexec not found: install an MPI, e.g. pip install "prov4ml-hpc[mpich]"')
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    root = os.path.abspath(run_dir or f"prov4ml-demo-{stamp}")
    run_id = f"demo-{stamp}"
    env = dict(os.environ, PROV4ML_HPC_RUN_DIR=root, PROV4ML_HPC_RUN_ID=run_id, MPIEXEC_TIMEOUT=str(timeout))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")  # N ranks on a few cores: one BLAS thread each, no oversubscription
    env.setdefault("PROV4ML_HPC_ENERGY_INTERVAL", "2")  # a short run: an energy reading every 2 s, not 10
    cmd = [
        mpiexec,
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "prov4ml_hpc.demo",
        "--train",
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        str(steps_per_epoch),
    ]
    click.echo(f"prov4ml-hpc demo: {ranks} ranks with {os.path.basename(mpiexec)}, run root {root}", err=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, timeout=timeout + 30, check=False)
    click.echo(f"prov4ml-hpc demo: the training took {time.monotonic() - t0:.1f} s", err=True)
    run_path = os.path.join(root, "demo", run_id)
    if proc.returncode != 0:
        raise click.ClickException(
            f"the demo job failed with exit code {proc.returncode}; "
            f"what it recorded is in {run_path} (try `prov4ml-hpc merge {run_path}`)"
        )
    _finish_demo(run_path, report)


def _finish_demo(run_path: str, report: bool) -> None:
    from . import schema

    merged = os.path.exists(os.path.join(run_path, schema.PROV_FILE))
    if not merged:
        result = _do_merge(run_path, strict=False, query_slurm=True, quiet=True)
        merged = result is not None
    if report:
        try:
            from .view.report import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            write_report(run_path)
    _print_run_files(run_path)


def _print_run_files(run_path: str) -> None:
    from . import schema
    from .merge.reader import read_rank_file

    click.echo(f"run directory: {run_path}")
    ranks_dir = os.path.join(run_path, schema.RANKS_DIR)
    for name in sorted(os.listdir(ranks_dir)):
        if schema.parse_rank_file_name(name) is None:
            continue
        rf = read_rank_file(os.path.join(ranks_dir, name))
        metrics = sorted({f"{s.context}/{s.name}" for s in rf.series if s.kind == schema.KIND_METRIC})
        click.echo(
            f"  ranks/{name}: {rf.status}, {rf.nrows} rows, {len(rf.series)} series "
            f"({', '.join(metrics)}), {len(rf.params)} params, "
            f"{len(rf.records_of(schema.REC_ARTIFACT, schema.REC_MODEL, schema.REC_DATASET))} files"
        )
    for out in (schema.RUN_FILE, schema.PROV_FILE, os.path.join(schema.REPORT_DIR, "index.html")):
        path = os.path.join(run_path, out)
        if os.path.exists(path):
            click.echo(f"  {out}: {os.path.getsize(path):,} bytes")
    index = os.path.join(run_path, schema.REPORT_DIR, "index.html")
    if os.path.exists(index):
        click.echo(f"report: file://{index}")
    click.echo(f"next: prov4ml-hpc inspect {run_path}")


# ---- merge ---------------------------------------------------------------------------------------------
def _do_merge(
    run_dir: str,
    *,
    strict: bool,
    query_slurm: bool,
    quiet: bool = False,
    comm=None,
    block_rows: int | None = None,
    progress: bool | None = None,
    graph: str | None = None,
):
    from .merge import merge_run

    kwargs = {} if block_rows is None else {"block_rows": block_rows}
    show = _progress_printer("merge") if (progress is None or progress) and not quiet else None
    return merge_run(
        run_dir, strict=strict, query_slurm=query_slurm, comm=comm, progress=show, graph=graph, **kwargs
    )


GRAPH_LEVELS = ("auto", "job", "node", "rank")
_GRAPH_HELP = (
    "detail of the PROV graph: rank (one activity per rank), node (ranks grouped by node), job (one entity "
    "per series across ranks), auto (rank level within 5,000 records, else node, else job) "
    "[default: PROV4ML_HPC_GRAPH, else auto]"
)


@main.command()
@_run_dir_arg()
@click.option(
    "--strict", is_flag=True, help="fail (exit 1, nothing written) if any rank is partial, missing or corrupt"
)
@click.option(
    "--slurm/--no-slurm",
    default=True,
    show_default=True,
    help="ask scontrol/sacct about the job (unknown when they do not answer)",
)
@click.option("--mpi", is_flag=True, help="split the rank files over the processes of `mpiexec -n K`/`srun`")
@click.option(
    "--progress/--no-progress", default=None, help="progress bar [default: when stderr is a terminal]"
)
@click.option(
    "--block-rows",
    type=click.IntRange(1000, 10**9),
    default=None,
    help="rows read per block (memory bound) [default: 1000000]",
)
@click.option("--graph", type=click.Choice(GRAPH_LEVELS), default=None, help=_GRAPH_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.pass_context
def merge(
    ctx: click.Context,
    run_dir: str,
    strict: bool,
    slurm: bool,
    mpi: bool,
    progress: bool | None,
    block_rows: int | None,
    graph: str | None,
    as_json: bool,
) -> None:
    """Merge a run's rank files into run.h5 and ONE provenance.json (also for crashed or killed jobs).

    Exit status: 0 every rank complete; 1 some rank partial, missing or corrupt (outputs still written,
    unless --strict).
    """
    comm = None
    if mpi:
        try:
            from mpi4py import MPI
        except ImportError:
            raise click.UsageError('--mpi needs mpi4py: pip install "prov4ml-hpc[mpi]"') from None
        comm = MPI.COMM_WORLD
    result = _do_merge(
        run_dir,
        strict=strict,
        query_slurm=slurm,
        comm=comm,
        block_rows=block_rows,
        progress=progress,
        graph=graph,
    )
    if comm is not None and comm.Get_rank() != 0:
        ctx.exit(result.exit_code)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_dir": result.run_dir,
                    "outputs": result.outputs,
                    "ranks": result.ranks,
                    "problems": result.problems,
                    "exit_code": result.exit_code,
                    "values": result.values,
                    "seconds": result.seconds,
                    "processes": result.processes,
                },
                indent=2,
            )
        )
    else:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(result.ranks.items()) if v)
        click.echo(
            f"merged {result.values:,} values of {counts} in {result.seconds:.1f} s "
            f"({result.processes} process{'es' if result.processes > 1 else ''})"
        )
        for name, path in sorted(result.outputs.items()):
            click.echo(f"  {name}: {path}")
        for problem in result.problems:
            click.echo(f"  problem: {problem}", err=True)
    ctx.exit(result.exit_code)


# ---- inspect / report / compare / export ------------------------------------------------------------------
@main.command()
@_run_dir_arg()
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON instead of text")
def inspect(run_dir: str, as_json: bool) -> None:
    """What is in a run: job, ranks by status, series, parameters, artifacts, energy, sizes.

    Works on a running job, an unmerged one and a merged one.
    """
    from .view.inspect import format_summary, summarize

    d = summarize(run_dir)
    click.echo(json.dumps(d, indent=2, default=str) if as_json else format_summary(d), nl=as_json)


@main.command()
@_run_dir_arg()
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="output folder [default: RUN_DIR/report]",
)
@click.option("--embed", is_flag=True, help="put the images inside index.html as data: URIs")
def report(run_dir: str, out_dir: str | None, embed: bool) -> None:
    """Write PNG plots and one self-contained HTML page for a run; prints the page's path."""
    from .view.report import write_report

    click.echo(write_report(run_dir, out_dir, embed=embed, progress=_progress_printer("report")))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--metric", default=None, help="also draw this metric of every run in one PNG")
@click.option("--context", default="training", show_default=True, help="context of --metric")
@click.option(
    "-o",
    "--output",
    "out_png",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG path [default: compare-<metric>.png]",
)
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
def compare(
    run_dirs: tuple[str, ...], metric: str | None, context: str, out_png: str | None, as_json: bool
) -> None:
    """Parameters that differ and final/best metrics of several runs side by side."""
    from .view.compare import compare_runs, format_comparison, plot_overlay

    c = compare_runs(list(run_dirs))
    click.echo(json.dumps(c, indent=2, default=str) if as_json else format_comparison(c), nl=as_json)
    if metric:
        click.echo(
            plot_overlay(list(run_dirs), metric, context, out_png or f"compare-{metric}.png"), err=True
        )


EXPORT_FORMATS = ("json", "provn", "xml", "jsonld", "ttl", "trig", "dot", "svg", "rocrate")
_SUFFIX = {
    "json": "json",
    "provn": "provn",
    "xml": "provx",
    "jsonld": "jsonld",
    "ttl": "ttl",
    "trig": "trig",
    "dot": "dot",
    "svg": "svg",
}


@main.command()
@_run_dir_arg()
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(EXPORT_FORMATS),
    help="PROV serialisation, a graph picture, or a Workflow Run RO-Crate",
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(),
    default=None,
    help="output path [default: RUN_DIR/provenance.<ext>; rocrate: RUN_DIR/ro-crate-metadata.json "
    "in place, PATH.zip for a zip, another PATH for a new directory crate]",
)
@click.option(
    "--graph",
    type=click.Choice(GRAPH_LEVELS[1:]),
    default=None,
    help="the level provenance.json must have (it is written by merge --graph) [default: as it is]",
)
@click.option(
    "--license",
    "license_",
    default=None,
    help="rocrate: the crate's license, an SPDX id (CC-BY-4.0) or a URL [default: PROV4ML_HPC_LICENSE]",
)
def export(run_dir: str, fmt: str, out: str | None, graph: str | None, license_: str | None) -> None:
    """Export the run's provenance graph (from provenance.json) or the run as an RO-Crate."""
    from . import schema

    if fmt == "rocrate":
        from .provenance.crate import write_crate

        click.echo(write_crate(run_dir, out, license=license_))
        return
    from .provenance.export import graph_level, load_prov_json, write_export

    prov_path = os.path.join(run_dir, schema.PROV_FILE)
    if not os.path.exists(prov_path):
        raise click.ClickException(f"{prov_path} does not exist: run `prov4ml-hpc merge {run_dir}` first")
    doc = load_prov_json(prov_path)
    level = graph_level(doc)
    if graph is not None and level != graph:
        raise click.ClickException(
            f"{prov_path} holds the {level or 'unknown'}-level graph, not the {graph} level: "
            f"`prov4ml-hpc merge --graph {graph} {run_dir}` rewrites it (merging again changes nothing else)"
        )
    target = out or os.path.join(run_dir, f"provenance.{_SUFFIX[fmt]}")
    write_export(doc, target, fmt)
    click.echo(target)


def _progress_printer(what: str):
    """A progress callback (done, total, label) drawing one line on stderr when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, label: str = "") -> None:
        width = 30
        filled = int(width * done / total) if total else width
        click.echo(
            f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}",
            err=True,
            nl=done >= total,
        )

    return show


# ---- run / sbatch --------------------------------------------------------------------------------------
@main.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_cmd(args: tuple[str, ...]) -> None:
    """Run SCRIPT|-m MODULE|-c CMD [ARGS...] with this rank recording (`prov4ml-hpc run --help` for options).

    The launcher for `srun`: options stop at the script name; the script runs as __main__; the rank file is
    always flushed and closed; SIGTERM/SIGINT are recorded; an uncaught exception is recorded and, under MPI,
    aborts the job instead of leaving other ranks waiting.
    """
    from .rank.launcher import launch

    raise SystemExit(launch(list(args)))


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("template", type=click.Choice(["single-node", "multi-node", "array", "merge"]))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--job-name", default=None, help="#SBATCH --job-name ([A-Za-z0-9_.-])")
@click.option("--nodes", type=click.IntRange(1), default=None)
@click.option("--ntasks-per-node", type=click.IntRange(1), default=None)
@click.option("--gpus-per-node", default=None, help="GPUs per node (0: none), e.g. 4 or a100:4")
@click.option("--cpus-per-task", type=click.IntRange(1), default=None)
@click.option("--mem", default=None, help="#SBATCH --mem, e.g. 64G")
@click.option("--time", default=None, help="time limit in a SLURM format, e.g. 02:00:00 or 1-00:00:00")
@click.option("--partition", default=None)
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--output", default=None, help="#SBATCH --output pattern")
@click.option("--signal", default=None, help="#SBATCH --signal, e.g. B:USR1@120")
@click.option("--requeue", is_flag=True, default=None, help="#SBATCH --requeue")
@click.option("--array", default=None, help="array indices (array template), e.g. 0-7%2")
@click.option("--run-dir", default=None, help="RUN_ROOT on a file system the compute nodes can write")
@click.option("--experiment", default=None)
@click.option(
    "--hook",
    is_flag=True,
    default=False,
    help="record with the import hook (script unchanged, no launcher in the command)",
)
@click.option("--python", default=None, help="python executable on the compute nodes [default: python3]")
@click.option("--merge/--no-merge", default=None, help="submit the dependent merge job [default: yes]")
@click.option("--merge-time", default=None, help="time limit of the merge job")
@click.option("--mpi", default=None, help="srun --mpi value, e.g. pmi2 or pmix")
@click.option("--run-path", default=None, help="merge template: the run directory to merge")
@click.option("--dependency", default=None, help="merge template: e.g. afterany:1234")
@click.option(
    "--detect/--no-detect",
    default=True,
    help="fill --gpus-per-node, --ntasks-per-node (and --nodes of multi-node) from what `sinfo` says the "
    "partition has, and check the request against it [default: when sinfo answers]",
)
@click.option("--submit", is_flag=True, help="submit with sbatch (prints the job id) instead of printing")
def sbatch(
    template: str, command: tuple[str, ...], hook: bool, detect: bool, submit: bool, **options
) -> None:
    """Render a job script from the shipped templates (print it, or --submit it).

    The training command goes after `--`: prov4ml-hpc sbatch single-node --nodes 1 -- train.py --lr 0.1
    Every value is validated and every command word shell-quoted; in the array template the word part
    {task_id} becomes the task's $SLURM_ARRAY_TASK_ID (`-- sweep.py --seed {task_id}`).  The default records
    through the launcher (`srun python3 -m prov4ml_hpc.run train.py`); --hook uses the import hook instead.
    """
    from .jobscripts.render import render_template
    from .jobscripts.render import submit as submit_job

    opts = {k: v for k, v in options.items() if v is not None}
    if hook:
        opts["mode"] = "hook"
    if command:
        opts["command"] = list(command)
    elif template != "merge":
        raise click.UsageError("give the training command after `--`, e.g. `-- train.py --epochs 10`")
    if detect and template != "merge":
        _fit_cluster(template, opts, strict=submit)
    text = render_template(template, **opts)
    if not submit:
        click.echo(text, nl=False)
        return
    job_id = submit_job(text)[0]
    click.echo(job_id)
    _say_what_was_submitted(template, job_id, opts)


def _fit_cluster(template: str, opts: dict, *, strict: bool) -> None:
    """Defaults from the partition sinfo describes, and a clear stop (or, printing only, a warning) for a job
    it cannot run."""
    from .jobscripts.cluster import fit_defaults, problems, query_partition
    from .jobscripts.render import effective_options

    part = query_partition(opts.get("partition"))
    if part is None:
        return
    chosen, notes = fit_defaults(template, opts, part)
    opts.update(chosen)
    for note in notes:
        click.echo(f"prov4ml-hpc sbatch: {note}", err=True)
    bad = problems(effective_options(template, **opts), part)
    if bad and strict:
        raise click.ClickException(
            "this job cannot run on this cluster, nothing was submitted:\n  - " + "\n  - ".join(bad)
        )
    for text in bad:
        click.echo(f"prov4ml-hpc sbatch: warning: {text}", err=True)


def _say_what_was_submitted(template: str, job_id: str, opts: dict) -> None:
    """Where the job's run directory will be and how it gets merged (on stderr; stdout has the job id)."""
    if template == "merge":
        return
    root = os.path.abspath(opts.get("run_dir") or os.environ.get("PROV4ML_HPC_RUN_DIR") or "prov4ml_runs")
    experiment = opts.get("experiment") or os.environ.get("PROV4ML_HPC_EXPERIMENT") or "experiment"
    base = os.path.join(root, experiment)
    if template == "array":
        run = os.path.join(base, f"slurm-{job_id}_TASK")
        click.echo(f"run directories: {run} (one per array task, TASK = its id)", err=True)
    else:
        run = os.path.join(base, f"slurm-{job_id}")
        click.echo(f"run directory: {run}", err=True)
    name = f"merge-{opts.get('job_name') or 'prov4ml'}"
    if opts.get("merge", True):
        who = "each array task submits its own" if template == "array" else f"job {job_id} submits it"
        click.echo(
            f"merge job: {who} when it starts ({name}, --dependency=afterany:{job_id}; `squeue --name={name}`); "
            f"if compute nodes may not submit jobs, the job's output says so: then run "
            f"`prov4ml-hpc merge {run}` after it",
            err=True,
        )
    else:
        click.echo(f"merge job: none (--no-merge); after the job run `prov4ml-hpc merge {run}`", err=True)


# ---- settings ------------------------------------------------------------------------------------------
@main.command("settings")
@click.option("--markdown", is_flag=True, help="print the table of docs/settings.md instead")
@click.pass_context
def settings_cmd(ctx: click.Context, markdown: bool) -> None:
    """The PROV4ML_HPC_* variables and what each one means in this environment (exit 1 if one is unusable)."""
    from . import settings

    if markdown:
        click.echo(settings.markdown_table(), nl=False)
        return
    bad = 0
    for s, raw, meaning in settings.current():
        if raw is None and s.internal:
            continue
        bad += meaning.startswith("ERROR")
        shown = f"{s.name}={raw!r}" if raw is not None else f"{s.name} (unset)"
        click.echo(f"{shown} -> {meaning}")
    ctx.exit(1 if bad else 0)


# ---- import-yprov4ml ------------------------------------------------------------------------------------
@main.command("import-yprov4ml")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option(
    "--run-dir",
    envvar="PROV4ML_HPC_RUN_DIR",
    default="prov4ml_runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="RUN_ROOT to create the imported run in",
)
@click.option("--experiment", default=None, help="experiment name [default: the yProv4ML experiment's]")
@click.option("--merge/--no-merge", default=True, show_default=True, help="merge the imported run")
def import_yprov4ml_cmd(src_dir: str, run_dir: str, experiment: str | None, merge: bool) -> None:
    """Turn a yProv4ML run directory (PROV-JSON + metric CSV/NetCDF files) into a prov4ml-hpc run."""
    from .compat.importer import import_yprov4ml

    new_dir = import_yprov4ml(src_dir, run_dir, experiment=experiment)
    if merge:
        _do_merge(new_dir, strict=False, query_slurm=False, quiet=True)
    click.echo(new_dir)


# ---- entry point for `python -m prov4ml_hpc` -------------------------------------------------------------
if __name__ == "__main__":  # pragma: no cover
    main()
