"""The `prov4ml-hpc` command line: one click group; each command parses, calls the library and prints.

Data goes to stdout, messages to stderr.  Errors: ClickException (exit 1), UsageError (exit 2).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import sys

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
@click.option("--ranks", "-n", default=4, show_default=True, type=click.IntRange(1, 64),
              help="number of MPI ranks to start on this machine")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="RUN_ROOT for the demo [default: a fresh ./prov4ml-demo-<time> folder]")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--steps-per-epoch", default=200, show_default=True, type=click.IntRange(1, 10**6))
@click.option("--report/--no-report", default=True, show_default=True, help="write the HTML report at the end")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(10, 86400),
              help="seconds before the mpiexec job is stopped")
def demo(ranks: int, run_dir: str | None, epochs: int, steps_per_epoch: int, report: bool, timeout: int) -> None:
    """Run the embedded demo: a small data-parallel training on N local MPI ranks, then merge and report."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise click.ClickException('mpiexec not found: install an MPI, e.g. pip install "prov4ml-hpc[mpich]"')
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    root = os.path.abspath(run_dir or f"prov4ml-demo-{stamp}")
    run_id = f"demo-{stamp}"
    env = dict(os.environ, PROV4ML_HPC_RUN_DIR=root, PROV4ML_HPC_RUN_ID=run_id,
               MPIEXEC_TIMEOUT=str(timeout))
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "prov4ml_hpc.demo", "--train",
           "--epochs", str(epochs), "--steps-per-epoch", str(steps_per_epoch)]
    click.echo(f"prov4ml-hpc demo: {ranks} ranks with {os.path.basename(mpiexec)}, run root {root}", err=True)
    proc = subprocess.run(cmd, env=env, timeout=timeout + 30, check=False)
    run_path = os.path.join(root, "demo", run_id)
    if proc.returncode != 0:
        raise click.ClickException(f"the demo job failed with exit code {proc.returncode}; "
                                   f"what it recorded is in {run_path} (try `prov4ml-hpc merge {run_path}`)")
    _finish_demo(run_path, report)


def _finish_demo(run_path: str, report: bool) -> None:
    from . import schema

    merged = os.path.exists(os.path.join(run_path, schema.PROV_FILE))
    if not merged:
        result = _do_merge(run_path, strict=False, query_slurm=True, quiet=True)
        merged = result is not None
    if report:
        try:
            from .report import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            write_report(run_path)
    _print_run_files(run_path)


def _print_run_files(run_path: str) -> None:
    from . import schema
    from .reader import read_rank_file

    click.echo(f"run directory: {run_path}")
    ranks_dir = os.path.join(run_path, schema.RANKS_DIR)
    for name in sorted(os.listdir(ranks_dir)):
        if schema.parse_rank_file_name(name) is None:
            continue
        rf = read_rank_file(os.path.join(ranks_dir, name))
        metrics = sorted({f"{s.context}/{s.name}" for s in rf.series if s.kind == schema.KIND_METRIC})
        click.echo(f"  ranks/{name}: {rf.status}, {rf.nrows} rows, {len(rf.series)} series "
                   f"({', '.join(metrics)}), {len(rf.params)} params, "
                   f"{len(rf.records_of(schema.REC_ARTIFACT, schema.REC_MODEL, schema.REC_DATASET))} files")
    for out in (schema.RUN_FILE, schema.PROV_FILE, os.path.join(schema.REPORT_DIR, "index.html")):
        path = os.path.join(run_path, out)
        if os.path.exists(path):
            click.echo(f"  {out}: {os.path.getsize(path):,} bytes")


# ---- merge ---------------------------------------------------------------------------------------------
def _do_merge(run_dir: str, *, strict: bool, query_slurm: bool, quiet: bool = False):
    try:
        from .merge import merge_run
    except ImportError:
        return None
    return merge_run(run_dir, strict=strict, query_slurm=query_slurm)


# ---- import-yprov4ml ------------------------------------------------------------------------------------
@main.command("import-yprov4ml")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("--run-dir", envvar="PROV4ML_HPC_RUN_DIR", default="prov4ml_runs", show_default=True,
              type=click.Path(file_okay=False), help="RUN_ROOT to create the imported run in")
@click.option("--experiment", default=None, help="experiment name [default: the yProv4ML experiment's]")
@click.option("--merge/--no-merge", default=True, show_default=True, help="merge the imported run")
def import_yprov4ml_cmd(src_dir: str, run_dir: str, experiment: str | None, merge: bool) -> None:
    """Turn a yProv4ML run directory (PROV-JSON + metric CSV/NetCDF files) into a prov4ml-hpc run."""
    from .importer import import_yprov4ml

    new_dir = import_yprov4ml(src_dir, run_dir, experiment=experiment)
    if merge:
        _do_merge(new_dir, strict=False, query_slurm=False, quiet=True)
    click.echo(new_dir)


# ---- entry point for `python -m prov4ml_hpc` -------------------------------------------------------------
if __name__ == "__main__":  # pragma: no cover
    main()
