"""merge_run: rank files -> run.h5 + provenance.json, serial or split over the processes of an MPI communicator.

Phases (the same code for one process and for K): (1) the root lists ranks/; (2) each process reads the headers
of its share of the rank files (every K-th) and the root decides the verdicts (partial, missing, corrupt) and,
under strict=True, stops before anything is written; (3) each process streams the rows of its share into its
own file (serial: the temporary run file; parallel: a temporary part file), with each rank's per-step
statistics (a function of the rank file alone); (4) the root folds those statistics in rank order (the same
bits for any K: in parallel they travel through the part files), assembles the temporary run file, renames it
to run.h5 and writes provenance.json atomically.
Temporary files carry host and pid in their names; a later merge removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import schema
from .._version import __version__
from ..errors import MergeError
from ..h5 import open_h5
from ..log import logger
from . import runfile
from . import summary as sm
from .model import RunSummary
from .stats import StepStats
from .stream import stream_rank

BLOCK_ROWS = 1_000_000
_PARTIALS = "_partials"  # in part files: per-rank statistics, /_partials/<stem>/<series id>
Progress = Callable[[int, int, str], None]
_TMP_RE = re.compile(r"^\.run\.(?:h5|part-\d+)\.(?P<host>.+)\.(?P<pid>\d+)\.tmp$")


@dataclass
class MergeResult:
    """What a merge did.  ``exit_code``: 0 all ranks complete, 1 some rank partial, missing or corrupt."""

    run_dir: str
    outputs: dict[str, str]  # file name -> absolute path (run.h5, provenance.json)
    ranks: dict[str, list[str]]  # verdict -> rank stems (rank-00003, rank-00003.attempt-1)
    problems: list[str]
    exit_code: int
    values: int = 0  # rows merged
    seconds: float = 0.0
    processes: int = 1
    summary: RunSummary | None = field(default=None, repr=False)


class _Solo:
    """The communicator of a serial merge."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]


def merge_run(
    run_dir: str | os.PathLike,
    *,
    strict: bool = False,
    query_slurm: bool = True,
    progress: Progress | None = None,
    comm: Any = None,
    block_rows: int = BLOCK_ROWS,
    graph: str | None = None,
) -> MergeResult:
    """Merge the rank files of a run directory into run.h5 and provenance.json (see docs/merge.md).

    Args:
        run_dir: the run directory (RUN_ROOT/EXPERIMENT/RUN_ID, the one holding ``ranks/``).
        strict: raise MergeError, before writing anything, when a rank is partial, missing or corrupt.
        query_slurm: ask scontrol/sacct about the job (when installed); False uses the rank files alone.
        progress: called as progress(rows_done, rows_total, what) while rows are copied (per process).
        comm: an mpi4py communicator; with more than one process, the rank files are split among them.
            Every process of ``comm`` must call merge_run with the same arguments.
        block_rows: rows read at a time (memory is bounded by a few blocks).
        graph: detail level of provenance.json: ``auto``, ``job``, ``node`` or ``rank`` (docs/provenance.md);
            default PROV4ML_HPC_GRAPH, else ``auto``.

    Returns:
        The MergeResult (the same on every process of ``comm``).

    Raises:
        MergeError: no rank files, strict mode found problems, or an output could not be written.
        ConfigError: ``graph`` (or PROV4ML_HPC_GRAPH) is not a graph level.
    """
    from .. import settings

    t0 = time.perf_counter()
    level = settings.get(settings.GRAPH, override=graph)
    run_dir = os.path.abspath(os.fspath(run_dir))
    c = comm if comm is not None and comm.Get_size() > 1 else _Solo()
    m = _Merge(run_dir, c, strict, query_slurm, progress, block_rows)
    m.graph = level
    try:
        result = m.run()
    finally:
        m.cleanup()
    result.seconds = time.perf_counter() - t0
    return result


class _Merge:
    def __init__(
        self,
        run_dir: str,
        c: Any,
        strict: bool,
        query_slurm: bool,
        progress: Progress | None,
        block_rows: int,
    ) -> None:
        self.run_dir, self.c, self.strict, self.query_slurm = run_dir, c, strict, query_slurm
        self.progress, self.block_rows = progress, max(1, int(block_rows))
        self.rank, self.size = c.Get_rank(), c.Get_size()
        self.parallel = self.size > 1
        tag = f"{_host()}.{os.getpid()}.tmp"
        self.tmp_run = os.path.join(run_dir, f".run.h5.{tag}")
        self.part = os.path.join(run_dir, f".run.part-{self.rank}.{tag}")
        self.mine: list[tuple[sm.RankHeader, Any]] = []
        self.acc: dict[tuple[int, str, str], StepStats] = {}
        self.out = None  # the open h5py file this process writes rows into (serial: the temporary run file)

    # ---- collective helpers -------------------------------------------------------------------------------
    def gather(self, fn: Callable[[], Any]) -> list[Any] | None:
        """Run fn on every process; the root gets [(ok, value or message)] per process."""
        if not self.parallel:
            return [(True, fn())]
        try:
            out = (True, fn())
        except Exception as exc:  # noqa: BLE001 - reported to the root, which stops every process
            out = (False, f"merge process {self.rank}: {type(exc).__name__}: {exc}")
        return self.c.gather(out, root=0)

    def decide(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the root and give its value (or its error, as MergeError) to every process."""
        if not self.parallel:
            return fn()
        msg = None
        if self.rank == 0:
            try:
                msg = (True, fn())
            except Exception as exc:  # noqa: BLE001
                msg = (False, str(exc) if isinstance(exc, MergeError) else f"{type(exc).__name__}: {exc}")
        ok, value = self.c.bcast(msg, root=0)
        if not ok:
            raise MergeError(value)
        return value

    @staticmethod
    def values_of(gathered: list[Any]) -> list[Any]:
        errors = [v for ok, v in gathered if not ok]
        if errors:
            raise MergeError("; ".join(errors))
        return [v for _, v in gathered]

    # ---- phases ------------------------------------------------------------------------------------------
    def run(self) -> MergeResult:
        found = self.decide(self.discover)
        share = found[self.rank :: self.size]
        heads = self.gather(lambda: self.open_share(share))
        plan = self.decide(lambda: self.verdicts(self.values_of(heads)))
        streamed = self.gather(self.stream_share)
        return self.decide(lambda: self.finish(plan, self.values_of(streamed)))

    def discover(self) -> list[sm.Found]:
        if not os.path.isdir(self.run_dir):
            raise MergeError(
                f"{self.run_dir} is not a directory: give the run directory "
                "(RUN_ROOT/EXPERIMENT/RUN_ID, the folder that holds ranks/)"
            )
        _remove_stale_temporaries(self.run_dir)
        found = sm.discover(self.run_dir)
        if not found:
            raise MergeError(
                f"no rank files (ranks/rank-NNNNN.h5) in {self.run_dir}: is it a run directory "
                "(RUN_ROOT/EXPERIMENT/RUN_ID)?"
            )
        return found

    def open_share(self, share: list[sm.Found]) -> list[sm.RankHeader]:
        self.mine = [sm.open_rank(f) for f in share]
        return [h for h, _ in self.mine]

    def verdicts(self, heads: list[list[sm.RankHeader]]) -> dict[str, Any]:
        headers = [h for part in heads for h in part]
        headers, world, notes = sm.add_missing(headers)
        problems = sm.run_problems(headers) + notes
        bad = [h for h in headers if h.status in sm.BAD_STATUSES]
        if self.strict and bad:
            raise MergeError(
                f"--strict: {len(bad)} rank(s) are not complete, nothing was written: "
                + "; ".join(problems[:20])
            )
        self.headers = headers
        return {"total": sum(h.nrows for h in headers), "world": world, "problems": problems}

    def stream_share(self) -> dict[str, Any]:
        path = self.part if self.parallel else self.tmp_run
        self.out = open_h5(path, "w")
        mine_total = sum(h.nrows for h, rf in self.mine if rf is not None)
        done = 0
        results: dict[str, Any] = {}
        for h, rf in self.mine:
            if rf is None:
                continue

            def on_rows(n: int, stem: str = h.found.stem) -> None:
                nonlocal done
                done += n
                if self.progress is not None:
                    self.progress(done, mine_total, stem)

            def on_stats(block: int, stats: dict[int, StepStats], h: sm.RankHeader = h, rf: Any = rf) -> None:
                if (
                    self.parallel
                ):  # the root folds them in (attempt, rank, block) order: keep them in the part
                    for sid, st in stats.items():
                        self.out.create_dataset(
                            f"{_PARTIALS}/{h.found.stem}/{block:08d}/{sid}", data=st.table()
                        )
                else:  # serial: fold now, in the same order
                    self._fold(h.found.attempt, rf.series, stats)

            series, rows = stream_rank(
                rf, h.found.stem, self.out, block_rows=self.block_rows, on_rows=on_rows, on_stats=on_stats
            )
            results[h.found.stem] = (series, rows, path)
        if self.parallel:
            self.out.close()
            self.out = None
        return results

    def _fold(self, attempt: int, series: list, stats: dict[int, StepStats]) -> None:
        for sid, st in sorted(stats.items()):
            x = series[sid]
            self.acc.setdefault((attempt, x.context, x.name), StepStats()).add(st)

    def fold(self) -> dict[tuple[int, str, str], StepStats]:
        """Per-step statistics across ranks, folded in (attempt, rank, block) order (parallel: from the parts)."""
        if not self.parallel:
            return self.acc
        files: dict[str, Any] = {}
        try:
            for h in self.headers:
                got = self.streamed.get(h.found.stem)
                if got is None:
                    continue
                series, _rows, path = got
                f = files.get(path) or files.setdefault(path, open_h5(path, "r"))
                blocks = f.get(f"{_PARTIALS}/{h.found.stem}", {})
                for b in sorted(blocks):
                    g = blocks[b]
                    self._fold(h.found.attempt, series, {int(k): StepStats.of_table(g[k][()]) for k in g})
        finally:
            for f in files.values():
                f.close()
        return self.acc

    def finish(self, plan: dict[str, Any], streamed: list[dict[str, Any]]) -> MergeResult:
        from ..job.jobinfo import job_info
        from ..provenance.export import write_prov_json
        from ..provenance.graph import build_document

        self.streamed = {stem: v for part in streamed for stem, v in part.items()}
        snap, job_id = sm.job_snapshot(self.headers)
        job = job_info(snap, job_id, query=self.query_slurm)
        aggregates = self.fold()
        out = self.out if not self.parallel else open_h5(self.tmp_run, "w")
        self.out = out
        if self.parallel:
            self._copy_parts(out)
        for (attempt, ctx, name), st in sorted(aggregates.items()):
            group = runfile.require_series_group(
                out, runfile.G_AGGREGATES, ctx, name, schema.KIND_METRIC, None
            )
            group.create_dataset(f"attempt-{attempt}", data=st.result())
        aggregates.clear()
        ranks = []
        for h in self.headers:
            series, rows, _ = self.streamed.get(h.found.stem, ([], 0, None))
            ranks.append(sm.rank_summary(h, series, rows))
        summary = sm.build_run_summary(
            self.run_dir, self.headers, ranks, plan["world"], job, plan["problems"]
        )
        _write_metadata(out, summary, self.headers, self.size)
        out.close()
        self.out = None
        run_path = os.path.join(self.run_dir, schema.RUN_FILE)
        os.replace(self.tmp_run, run_path)
        prov_path = os.path.join(self.run_dir, schema.PROV_FILE)
        write_prov_json(build_document(summary, level=self.graph), prov_path)
        by_status: dict[str, list[str]] = {}
        for h in self.headers:
            by_status.setdefault(h.status, []).append(h.found.stem)
        bad = any(h.status in sm.BAD_STATUSES for h in self.headers)
        for p in plan["problems"]:
            logger.warning("merge: %s", p)
        return MergeResult(
            self.run_dir,
            {schema.RUN_FILE: run_path, schema.PROV_FILE: prov_path},
            by_status,
            plan["problems"],
            1 if bad else 0,
            sum(r.rows for r in ranks),
            processes=self.size,
            summary=summary,
        )

    def _copy_parts(self, out) -> None:
        by_file: dict[str, list] = {}
        for _stem, (series, _rows, path) in self.streamed.items():
            by_file.setdefault(path, []).extend(series)
        for path, series in sorted(by_file.items()):
            with open_h5(path, "r") as src:
                for x in series:
                    group = runfile.require_series_group(
                        out, runfile.G_SERIES, x.context, x.name, x.kind, x.unit
                    )
                    src.copy(src[x.dataset], group, name=x.dataset.rsplit("/", 1)[1])

    def cleanup(self) -> None:
        if self.out is not None:
            with contextlib.suppress(Exception):
                self.out.close()
        for path in (self.tmp_run, self.part):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _write_metadata(out, s: RunSummary, headers: list[sm.RankHeader], processes: int) -> None:
    import dataclasses
    import datetime as dt

    now = time.time()
    statuses: dict[str, int] = {}
    for h in headers:
        statuses[h.status] = statuses.get(h.status, 0) + 1
    runfile.set_attrs(
        out,
        {
            schema.A_FORMAT: schema.RUN_FORMAT,
            schema.A_SCHEMA_VERSION: schema.SCHEMA_VERSION,
            schema.A_RUN_ID: s.run_id,
            schema.A_EXPERIMENT: s.experiment,
            schema.A_WORLD_SIZE: s.world_size,
            schema.A_JOB_ID: s.job.job_id,
            schema.A_PACKAGE_VERSION: s.software_version,
            "user": s.user,
            "statuses": statuses,
            "rank_files": sum(1 for h in headers if h.found.path),
            "problems": s.problems,
            "totals": s.totals,
            runfile.A_MERGE_TIME: dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
            runfile.A_MERGE_UNIX: now,
            runfile.A_MERGE_PROCESSES: processes,
            runfile.A_MERGED_BY: __version__,
        },
    )
    runfile.set_attrs(out.require_group(runfile.G_JOB), dataclasses.asdict(s.job))
    ranks = out.require_group(runfile.G_RANKS)
    for h, r in zip(headers, s.ranks, strict=True):
        g = ranks.create_group(h.found.stem)
        attrs = dict(h.attrs)
        attrs.update(
            {
                runfile.A_FILE_STATUS: h.attrs.get(schema.A_STATUS, ""),
                schema.A_STATUS: h.status,
                schema.A_STATUS_REASON: h.reason,
                runfile.A_FILE: h.found.relpath,
                runfile.A_ROWS: r.rows,
                schema.A_GLOBAL_RANK: h.found.global_rank,
                schema.A_ATTEMPT: h.found.attempt,
            }
        )
        runfile.set_attrs(g, attrs)
        runfile.write_records(g, h.records)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _remove_stale_temporaries(run_dir: str) -> None:
    """Remove temporary files of merges that died (same host, process gone); never anything else."""
    host = _host()
    for name in os.listdir(run_dir):
        m = _TMP_RE.match(name)
        if m is None or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        try:
            os.kill(pid, 0)
            continue  # still running (or not ours to judge)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(run_dir, name))
            logger.info("removed %s, left by an interrupted merge (pid %d)", name, pid)
