"""merge_run: rank files -> run.h5 + provenance.json, serial or split over the processes of an MPI communicator.

Phases (the same code for one process and for K): (1) the root lists ranks/; (2) each process reads the headers
of its share of the rank files (every K-th) and the root decides the verdicts (``merge.verdict``: partial,
missing, corrupt) and, under strict=True, stops before anything is written; (3) each process streams the rows of
its share into its own file (serial: the temporary run file; parallel: a temporary part file), with each rank's
per-step statistics (a function of the rank file alone); (4) the root folds those statistics in rank order (the
same bits for any K: in parallel they travel through the part files), assembles the temporary run file and the
temporary provenance.json, and commits both: provenance.json is renamed first, run.h5 last, and run.h5 records
the sha256 of the provenance.json it belongs to, so a reader can tell a complete pair from an interrupted one.
A failure before the renames leaves both files as they were.
Temporary files carry host and pid in their names; a later merge removes those of dead processes.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from . import runfile, verdict
from .load import assemble, job_of
from .model import BAD_STATUSES, GRAPH_CURRENT, SOURCE_RUN_FILE, STATE_MERGED, RankSummary, RunSummary
from .stats import StepStats
from .stream import stream_rank

BLOCK_ROWS = 1_000_000
_PARTIALS = "_partials"  # in part files: per-rank statistics, /_partials/<stem>/<series id>
Progress = Callable[[int, int, str], None]
_TMP_RE = re.compile(r"^\.(?:run\.h5|run\.part-\d+|provenance\.json)\.(?P<host>.+)\.(?P<pid>\d+)\.tmp$")


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
        MergeError: no rank files, strict mode found problems, building the outputs failed (then run.h5 and
            provenance.json are as they were), or an output could not be renamed into place.
        ConfigError: ``graph`` (or PROV4ML_HPC_GRAPH) is not a graph level.
    """
    from .. import settings

    t0 = time.perf_counter()
    level = settings.get(settings.GRAPH, override=graph)
    run_dir = os.path.realpath(os.fspath(run_dir))  # the graph names it: the same whatever path led here
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
        self.tmp_prov = os.path.join(run_dir, f".provenance.json.{tag}")
        self.part = os.path.join(run_dir, f".run.part-{self.rank}.{tag}")
        self.mine: list[tuple[RankSummary, Any]] = []
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

    def discover(self) -> list[tuple[int, int, str]]:
        if not os.path.isdir(self.run_dir):
            raise MergeError(
                f"{self.run_dir} is not a directory: give the run directory "
                "(RUN_ROOT/EXPERIMENT/RUN_ID, the folder that holds ranks/)"
            )
        _remove_stale_temporaries(self.run_dir)
        found = verdict.discover(self.run_dir)
        if not found:
            raise MergeError(
                f"no rank files (ranks/rank-NNNNN.h5) in {self.run_dir}: is it a run directory "
                "(RUN_ROOT/EXPERIMENT/RUN_ID)?"
            )
        return found

    def open_share(self, share: list[tuple[int, int, str]]) -> list[RankSummary]:
        self.mine = [verdict.open_rank(self.run_dir, g, a, rel) for g, a, rel in share]
        return [r for r, _ in self.mine]

    def verdicts(self, heads: list[list[RankSummary]]) -> dict[str, Any]:
        headers = [h for part in heads for h in part]
        headers, world, notes = verdict.add_missing(headers)
        problems = verdict.problem_lines(headers) + notes
        bad = [h for h in headers if h.status in BAD_STATUSES]
        if self.strict and bad:
            raise MergeError(
                f"--strict: {len(bad)} rank(s) are not complete, nothing was written: "
                + "; ".join(problems[:20])
            )
        self.headers = headers
        return {"world": world, "problems": problems}

    def stream_share(self) -> dict[str, Any]:
        path = self.part if self.parallel else self.tmp_run
        self.out = open_h5(path, "w")
        mine_total = sum(h.rows for h, rf in self.mine if rf is not None)
        done = 0
        results: dict[str, Any] = {}
        for h, rf in self.mine:
            if rf is None:
                continue

            def on_rows(n: int, stem: str = h.stem) -> None:
                nonlocal done
                done += n
                if self.progress is not None:
                    self.progress(done, mine_total, stem)

            def on_stats(block: int, stats: dict[int, StepStats], h: RankSummary = h, rf: Any = rf) -> None:
                if (
                    self.parallel
                ):  # the root folds them in (attempt, rank, block) order: keep them in the part
                    for sid, st in stats.items():
                        self.out.create_dataset(f"{_PARTIALS}/{h.stem}/{block:08d}/{sid}", data=st.table())
                else:  # serial: fold now, in the same order
                    self._fold(h.attempt, rf.series, stats)

            series, rows = stream_rank(
                rf, h.stem, self.out, block_rows=self.block_rows, on_rows=on_rows, on_stats=on_stats
            )
            results[h.stem] = (series, rows, path)
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
                got = self.streamed.get(h.stem)
                if got is None:
                    continue
                series, _rows, path = got
                f = files.get(path) or files.setdefault(path, open_h5(path, "r"))
                blocks = f.get(f"{_PARTIALS}/{h.stem}", {})
                for b in sorted(blocks):
                    g = blocks[b]
                    self._fold(h.attempt, series, {int(k): StepStats.of_table(g[k][()]) for k in g})
        finally:
            for f in files.values():
                f.close()
        return self.acc

    def finish(self, plan: dict[str, Any], streamed: list[dict[str, Any]]) -> MergeResult:
        try:
            summary = self.build(plan, streamed)
        except MergeError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, the old pair is still there: say so
            raise MergeError(
                f"merge of {self.run_dir} failed before anything was replaced ({type(exc).__name__}: {exc}); "
                f"{schema.RUN_FILE} and {schema.PROV_FILE} are as they were"
            ) from exc
        run_path = os.path.join(self.run_dir, schema.RUN_FILE)
        prov_path = os.path.join(self.run_dir, schema.PROV_FILE)
        commit(self.tmp_prov, prov_path, self.tmp_run, run_path)
        by_status: dict[str, list[str]] = {}
        for r in summary.ranks:
            by_status.setdefault(r.status, []).append(r.stem)
        bad = any(r.status in BAD_STATUSES for r in summary.ranks)
        for p in plan["problems"]:
            logger.warning("merge: %s", p)
        return MergeResult(
            self.run_dir,
            {schema.RUN_FILE: run_path, schema.PROV_FILE: prov_path},
            by_status,
            plan["problems"],
            1 if bad else 0,
            sum(r.rows for r in summary.ranks),
            processes=self.size,
            summary=summary,
        )

    def build(self, plan: dict[str, Any], streamed: list[dict[str, Any]]) -> RunSummary:
        """Write the temporary run file and the temporary provenance.json; rename nothing."""
        from ..provenance.export import serialize
        from ..provenance.graph import build_document

        self.streamed = {stem: v for part in streamed for stem, v in part.items()}
        job = job_of(self.headers, query=self.query_slurm)
        aggregates = self.fold()
        out = self.out if not self.parallel else open_h5(self.tmp_run, "w")
        self.out = out
        if self.parallel:
            self._copy_parts(out)
        for (attempt, ctx, name), st in sorted(aggregates.items()):
            group = runfile.require_series_group(
                out, schema.G_AGGREGATES, ctx, name, schema.KIND_METRIC, None
            )
            group.create_dataset(f"attempt-{attempt}", data=st.result())
        aggregates.clear()
        for r in self.headers:
            got = self.streamed.get(r.stem)
            if got is not None:
                r.series, r.rows = got[0], got[1]
            verdict.set_contexts(r)
        summary = assemble(
            self.run_dir,
            self.headers,
            plan["world"],
            job,
            plan["problems"],
            source=SOURCE_RUN_FILE,
            state=STATE_MERGED,
        )
        text = serialize(build_document(summary, level=self.graph), "json").encode("utf-8")
        with open(self.tmp_prov, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        summary.graph = GRAPH_CURRENT
        _write_metadata(out, summary, self.size, hashlib.sha256(text).hexdigest())
        out.close()
        self.out = None
        _fsync(self.tmp_run)
        return summary

    def _copy_parts(self, out) -> None:
        by_file: dict[str, list] = {}
        for _stem, (series, _rows, path) in self.streamed.items():
            by_file.setdefault(path, []).extend(series)
        for path, series in sorted(by_file.items()):
            with open_h5(path, "r") as src:
                for x in series:
                    group = runfile.require_series_group(
                        out, schema.G_SERIES, x.context, x.name, x.kind, x.unit
                    )
                    src.copy(src[x.dataset], group, name=x.dataset.rsplit("/", 1)[1])

    def cleanup(self) -> None:
        if self.out is not None:
            with contextlib.suppress(Exception):
                self.out.close()
        for path in (self.tmp_run, self.tmp_prov, self.part):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def commit(tmp_prov: str, prov_path: str, tmp_run: str, run_path: str) -> None:
    """Rename the two outputs into place: provenance.json first, run.h5 last (run.h5 names its graph's sha256).

    Raises:
        MergeError: a rename failed; when the first one did, nothing was replaced.
    """
    try:
        os.replace(tmp_prov, prov_path)
    except OSError as exc:
        raise MergeError(
            f"cannot write {prov_path} ({exc}); nothing was replaced: {schema.RUN_FILE} and "
            f"{schema.PROV_FILE} are as they were"
        ) from exc
    try:
        os.replace(tmp_run, run_path)
    except OSError as exc:
        raise MergeError(
            f"cannot write {run_path} ({exc}) after {schema.PROV_FILE} was replaced: the two files are not a "
            "pair (inspect says so); merge again"
        ) from exc
    _fsync_dir(os.path.dirname(run_path))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        _fsync(path)


def _write_metadata(out, s: RunSummary, processes: int, prov_sha256: str) -> None:
    import dataclasses
    import datetime as dt

    now = time.time()
    statuses: dict[str, int] = {}
    for r in s.ranks:
        statuses[r.status] = statuses.get(r.status, 0) + 1
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
            schema.A_USER: s.user,
            schema.A_STATUSES: statuses,
            schema.A_RANK_FILES: sum(1 for r in s.ranks if r.file),
            schema.A_PROBLEMS: s.problems,
            schema.A_TOTALS: s.totals,
            schema.A_PROVENANCE_SHA256: prov_sha256,
            schema.A_MERGE_TIME: dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
            schema.A_MERGE_UNIX: now,
            schema.A_MERGE_PROCESSES: processes,
            schema.A_MERGED_BY: __version__,
        },
    )
    runfile.set_attrs(out.require_group(schema.G_JOB), dataclasses.asdict(s.job))
    ranks = out.require_group(schema.G_RANKS)
    index = []
    for r in s.ranks:
        g = ranks.create_group(r.stem)
        attrs = dict(r.meta)
        attrs.update(
            {
                schema.A_FILE_STATUS: r.meta.get(schema.A_STATUS, ""),
                schema.A_FILE_STATUS_REASON: r.meta.get(schema.A_STATUS_REASON, ""),
                schema.A_STATUS: r.status,
                schema.A_STATUS_REASON: r.reason,
                schema.A_FILE: r.file,
                schema.A_ROWS: r.rows,
                schema.A_FILE_SIZE: r.file_size,
                schema.A_FILE_MTIME_NS: r.file_mtime_ns,
                schema.A_GLOBAL_RANK: r.global_rank,
                schema.A_ATTEMPT: r.attempt,
            }
        )
        runfile.set_attrs(g, attrs)
        runfile.write_records(g, r.records)
        series = [dataclasses.asdict(x) for x in r.series]
        index.append({"stem": r.stem, "attrs": attrs, "records": r.records, "series": series})
    runfile.write_json_lines(out, schema.DS_RUN_INDEX, index)


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
