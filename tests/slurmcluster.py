"""A real single-node SLURM (Debian's slurm-wlm + munge) started in a private folder, for the `slurm` test tier.

`SlurmCluster(base).start()` makes the folder, a munge key, a private `munged` socket, a slurm.conf with free
ports, starts slurmctld and slurmd as root and waits until the node is idle (about 1 s). It is idempotent: a
cluster already running from the same folder is reused. `env` is what client commands need (SLURM_CONF);
`submit`, `wait` and `show_job` drive jobs; `stop()` shuts everything down and never raises.
Packages come from `.ci/install-slurm.sh`; `python tests/slurmcluster.py start|stop|status [BASE]` drives it by hand.

Observed on this cluster (SLURM 22.05.8, MpiDefault=pmi2, mpich 5.0.2 wheel; asserted by test_slurm_cluster.py):
- Batch script (outside srun): SLURM_STEP_ID is NOT set (nor SLURM_STEPID, SLURM_STEP_NUM_TASKS, PMI_RANK,
  PMI_SIZE), yet SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0 and SLURM_NTASKS=4 ARE set (sbatch -n 4): a
  helper `python` in the batch script looks like rank 0 of 4 unless a step id is required.
  SLURM_JOB_NODELIST=<host>, SLURM_JOB_NUM_NODES=1, SLURM_NNODES=1, SLURM_JOB_PARTITION, SLURM_JOB_USER,
  SLURM_CLUSTER_NAME, SLURM_SUBMIT_DIR/HOST are set; SLURM_RESTART_COUNT is absent on a first run,
  SLURM_CPUS_PER_TASK only with -c, SLURM_JOB_ACCOUNT/SLURM_JOB_QOS absent without accounting.
- `srun` task: SLURM_STEP_ID = SLURM_STEPID = the step number (0 for the first srun, 1 for the second...),
  SLURM_PROCID=0..3, PMI_RANK = SLURM_PROCID, PMI_SIZE=4, SLURM_LOCALID=0..3 on one node,
  SLURM_STEP_NUM_TASKS=4, SLURM_NTASKS=4, SLURM_STEP_NODELIST=<host>, SLURM_STEP_NUM_NODES=1, PMI_FD set,
  PMI_JOBID=<job>.<step>; MPI_LOCALRANKID and PMI_LOCAL_RANK are NOT set.
- Records: `scontrol show job -o` answers for MinJobAge after the end; `scontrol write batch_script ID -`
  prints the script byte for byte (for an unknown id it exits 0 with the error on stderr); plain `sacct`
  exits 1 ("Slurm accounting storage is disabled"); `sacct -c` reads the jobcomp file (one job-level line,
  no steps) but garbles a job name with spaces (JobName cut at the space, State empty).
- tests/conftest.py's autouse fixture strips SLURM_* from os.environ in every test: pass `cluster.env` /
  `cluster.full_env()` to client commands rather than relying on SLURM_CONF in os.environ.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_BASE = Path(os.environ.get("PROV4ML_HPC_SLURM_DIR", "/tmp/prov4ml-hpc-slurm"))
REQUIRED_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "squeue",
    "sinfo",
    "sacct",
    "munged",
    "mungekey",
)
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
TERMINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
)


def find_binary(name: str) -> str | None:
    """Path of a SLURM/munge binary, also looking in sbin folders that a non-login PATH may lack."""
    extra = os.pathsep.join(SBIN_DIRS)
    return shutil.which(name) or shutil.which(name, path=extra)


def missing_binaries() -> list[str]:
    """The binaries of REQUIRED_BINARIES that are not installed (install them with .ci/install-slurm.sh)."""
    return [name for name in REQUIRED_BINARIES if find_binary(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_alive(pid: int) -> bool:
    """True for a running process; False for none and for a zombie (PID 1 of this VM does not reap orphans)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pid_alive(pid_file: Path) -> int | None:
    """The pid in `pid_file` when that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if process_alive(pid) else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """One slurmctld + one slurmd + one munged, all configured and kept under `base`."""

    def __init__(self, base: str | os.PathLike[str] | None = None, *, cpus: int = 8, memory_mb: int = 8000):
        self.base = Path(base) if base is not None else DEFAULT_BASE
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.base / "etc" / "slurm.conf"
        self.munge_dir = self.base / "munge"  # key, seed: mode 700
        self.munge_run = self.base / "munge-run"  # socket, pid: mode 755
        self.socket = self.munge_run / "munge.socket"
        self.jobcomp = self.base / "jobcomp.txt"
        self.jobs_dir = self.base / "jobs"
        self.log_dir = self.base / "log"

    # -- environment -------------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Variables to add to the environment of every client command (sbatch, squeue, scontrol, sacct...)."""
        return {"SLURM_CONF": str(self.conf)}

    def full_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ + `env` + `extra`, with the sbin folders on PATH."""
        env = dict(os.environ)
        env.update(self.env)
        path = env.get("PATH", "")
        env["PATH"] = os.pathsep.join([path, *[d for d in SBIN_DIRS if d not in path.split(os.pathsep)]])
        if extra:
            env.update(extra)
        return env

    def _run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 15.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        exe = find_binary(args[0]) or args[0]
        proc = subprocess.run(
            [exe, *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.full_env(env),
            cwd=cwd,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
            )
        return proc

    # -- start -------------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """True when this folder's daemons are alive and slurmctld answers."""
        if not self.conf.exists():
            return False
        pid_files = [self.munge_run / "munged.pid", *self._pid_files(), *self._service_pid_files()]
        pids = [pid_alive(p) for p in pid_files]
        if not all(pids):
            return False
        try:
            return self._run(["scontrol", "ping"], timeout=5, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        """Start (or reuse) the cluster and wait until its nodes are idle.

        Raises:
            RuntimeError: a binary is missing or a daemon did not come up (the message holds its log's tail).
        """
        missing = self.missing_binaries()
        if missing:
            raise RuntimeError(
                f"binaries missing: {', '.join(missing)}; run scripts/test.sh (or .ci/install-slurm.sh) as root"
            )
        if self.is_running():
            self.wait_idle(timeout)
            return self
        self.stop()  # leftovers of a crashed run (half-dead daemons) go first
        self._prepare()
        self._start_munge()
        self._start_services(timeout)
        ctld = self._run(["slurmctld", "-c", "-i"], check=False, timeout=timeout)
        if ctld.returncode != 0:
            raise RuntimeError(
                f"slurmctld failed ({ctld.returncode}): {ctld.stderr}\n"
                f"{_tail(self.log_dir / 'slurmctld.log')}"
            )
        self._start_slurmds(timeout)
        self.wait_idle(timeout)
        return self

    def missing_binaries(self) -> list[str]:
        """The binaries this cluster needs that are not installed."""
        return missing_binaries()

    @property
    def node_names(self) -> list[str]:
        """The SLURM node names of this cluster (here: the one node, named like this host)."""
        return [self.host]

    def _pid_files(self) -> list[Path]:
        """The pid files of the SLURM daemons (munged apart)."""
        return [self.base / "run" / "slurmctld.pid", self.base / "run" / "slurmd.pid"]

    def _service_pid_files(self) -> list[Path]:
        """The pid files of the daemons _start_services starts."""
        return []

    def _start_services(self, timeout: float) -> None:
        """Daemons slurmctld needs besides munged (none here; accounting in the multi-node cluster)."""

    def _start_slurmds(self, timeout: float) -> None:
        # slurmd (and so every job) in its own mount namespace with a private /dev/shm, as on a real node: MPICH
        # names its shared-memory segment after the PMI job id, and test clusters of others on this machine
        # also run a job 1.0; their ranks would attach to one segment and hang in MPI_Init
        slurmd = self._run(
            [
                find_binary("unshare") or "unshare",
                "--mount",
                "--propagation=slave",
                "--",
                "/bin/sh",
                "-c",
                'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$0"',
                find_binary("slurmd") or "slurmd",
            ],
            check=False,
            timeout=timeout,
        )
        if slurmd.returncode != 0:
            raise RuntimeError(
                f"slurmd failed ({slurmd.returncode}): {slurmd.stderr}\n{_tail(self.log_dir / 'slurmd.log')}"
            )

    def _prepare(self) -> None:
        for sub in ("state", "spool", "run"):
            shutil.rmtree(self.base / sub, ignore_errors=True)
        for folder, mode in (
            (self.base, 0o755),
            (self.base / "etc", 0o755),
            (self.munge_dir, 0o700),
            (self.munge_run, 0o755),
            (self.log_dir, 0o755),
            (self.base / "state", 0o755),
            (self.base / "spool", 0o755),
            (self.base / "run", 0o755),
            (self.jobs_dir, 0o755),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(mode)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            self._run(["mungekey", "-c", "-f", "-k", str(key)])
        key.chmod(0o600)
        self.jobcomp.write_text("")  # job ids restart at 1: old records would answer for new jobs
        self.conf.write_text(self.slurm_conf(_free_port(), _free_port()))

    def slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        """The slurm.conf text for this folder (see docs in tests/slurmcluster.py's module docstring)."""
        b = self.base
        lines = [
            "ClusterName=prov4ml",
            f"SlurmctldHost={self.host}({self.ctld_addr})",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmctldPidFile={b / 'run' / 'slurmctld.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=pmi2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "MinJobAge=3600",
            "KillWait=5",
            "InactiveLimit=0",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "MessageTimeout=10",
            *self._slurmd_lines(),
            *self._accounting_lines(),
            *self._node_lines(),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP",
            "",
        ]
        return "\n".join(lines)

    @property
    def ctld_addr(self) -> str:
        """The address slurmctld is reached at (by slurmd and by client commands)."""
        return "127.0.0.1"

    def _slurmd_lines(self) -> list[str]:
        b = self.base
        return [
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmdPidFile={b / 'run' / 'slurmd.pid'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
        ]

    def _accounting_lines(self) -> list[str]:
        return ["AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none"]

    def _node_lines(self) -> list[str]:
        return [
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
        ]

    def _start_munge(self) -> None:
        args = [
            "munged",
            f"--socket={self.socket}",
            f"--key-file={self.munge_dir / 'munge.key'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--pid-file={self.munge_run / 'munged.pid'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
            "--force",
        ]
        proc = self._run(args, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"munged failed ({proc.returncode}): {proc.stderr}\n{_tail(self.log_dir / 'munged.log')}"
            )

    def node_states(self) -> dict[str, str]:
        """`sinfo -N`: node name -> state (``idle``, ``down*``, ...); {} when slurmctld does not answer."""
        proc = self._run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=5)
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            name, _, state = line.strip().partition(" ")
            if name:
                states[name] = state.strip()
        return states

    def wait_idle(self, timeout: float = 30.0, nodes: Sequence[str] | None = None) -> None:
        """Poll `sinfo` until every node (or those of `nodes`) is up: idle, or mixed/allocated."""
        wanted = list(nodes) if nodes is not None else self.node_names
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(n, "").rstrip("*~#") in ("idle", "mixed", "allocated") for n in wanted):
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"SLURM nodes {wanted} are not idle after {timeout:.0f} s (sinfo: {states!r})\n"
            f"{_tail(self.log_dir / 'slurmctld.log')}\n{self._slurmd_log_tails()}"
        )

    def _slurmd_log_tails(self) -> str:
        return _tail(self.log_dir / "slurmd.log")

    # -- jobs --------------------------------------------------------------------------------------------------
    def submit(
        self,
        script: str | os.PathLike[str],
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> str:
        """Submit a batch script (its text, or the path of a file) with `sbatch --parsable`; return the job id."""
        if isinstance(script, str) and ("\n" in script or script.startswith("#!")):
            path = self.jobs_dir / f"job-{time.time_ns()}.sbatch"
            path.write_text(script)
        else:
            path = Path(script)
        proc = self._run(["sbatch", "--parsable", *args, str(path)], env=env, cwd=cwd or self.jobs_dir)
        return proc.stdout.strip().split(";")[0]

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o ID` parsed into Key -> value ({} when scontrol does not know the job)."""
        from prov4ml_hpc.job.slurm import parse_scontrol_job

        proc = self._run(["scontrol", "show", "job", "-o", job_id], check=False)
        return parse_scontrol_job(proc.stdout) if proc.returncode == 0 else {}

    def wait(self, job_id: str, timeout: float = 60.0) -> str:
        """Wait for a job to leave the queue (fast `squeue -h -j` polling); return its final JobState.

        Raises:
            TimeoutError: the job is still queued or running after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False, timeout=5)
            if proc.returncode != 0 or not proc.stdout.strip():
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"job {job_id} still queued after {timeout:.0f} s: {self.show_job(job_id)}")
        state = self.show_job(job_id).get("JobState", "")
        while state not in TERMINAL_STATES and time.monotonic() < deadline:  # COMPLETING, or a slow record
            time.sleep(0.1)
            state = self.show_job(job_id).get("JobState", "")
        return state

    def cancel_all(self, timeout: float = 30.0) -> list[str]:
        """Cancel every job still queued or running and wait until the queue is empty; return their ids."""
        proc = self._run(["squeue", "-h", "-o", "%i"], check=False, timeout=5)
        jobs = proc.stdout.split()
        if jobs:
            self._run(["scancel", *jobs], check=False, timeout=10)
        deadline = time.monotonic() + timeout
        while jobs and time.monotonic() < deadline:
            if not self._run(["squeue", "-h", "-o", "%i"], check=False, timeout=5).stdout.strip():
                break
            time.sleep(0.2)
        return jobs

    # -- stop --------------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Cancel jobs, `scontrol shutdown`, stop munged; kill what is left. Never raises.

        The daemons' pids are read before the shutdown: a slurmd removes its pid file as soon as it starts
        shutting down, and one waiting for a hung job step then lingers (it ignores SIGTERM): it gets SIGKILL.
        """
        pid_files = self._pid_files()
        pids = [pid for pid in (pid_alive(p) for p in pid_files) if pid is not None]
        if self.conf.exists() and pids:
            for args in (["scancel", "--full", "--partition=debug"], ["scontrol", "shutdown"]):
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self._run(args, check=False, timeout=5)
            self._wait_gone(pids, timeout)
        self._kill(pids)
        self._kill(self._leftover_daemons())  # of an earlier session whose pid files are gone
        munge = [pid for pid in [pid_alive(self.munge_run / "munged.pid")] if pid is not None]
        if munge:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._run(["munged", "-s", f"--socket={self.socket}"], check=False, timeout=5)
            self._wait_gone(munge, 3.0)
            self._kill(munge)
        self._stop_services()

    def _stop_services(self) -> None:
        """Stop what _start_services started, and what a crashed session left (never raises)."""

    def _leftover_daemons(self) -> list[int]:
        """SLURM daemons started for this folder (SLURM_CONF in their environment names it) that still run."""
        wanted = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if comm not in ("slurmctld", "slurmd", "slurmstepd"):
                    continue
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted in environ and process_alive(int(entry)):
                found.append(int(entry))
        return found

    @staticmethod
    def _wait_gone(pids: Sequence[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
            time.sleep(0.1)

    @classmethod
    def _kill(cls, pids: Sequence[int]) -> None:
        """SIGTERM what is still alive of `pids`, then SIGKILL what survives 3 s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [pid for pid in pids if process_alive(pid)]
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            cls._wait_gone(alive, 3.0)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str]) -> int:
    """`python tests/slurmcluster.py start|stop|status [BASE]`."""
    if not argv or argv[0] not in ("start", "stop", "status"):
        print("usage: slurmcluster.py start|stop|status [BASE]", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1] if len(argv) > 1 else None)
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    elif argv[0] == "stop":
        cluster.stop()
    else:
        print("running" if cluster.is_running() else "stopped")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(sys.argv[1:]))
