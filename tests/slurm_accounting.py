"""Real SLURM accounting for a test cluster: a private MariaDB server and slurmdbd, so that `sacct` answers with
job steps, states, exit codes, elapsed times and MaxRSS as on a production cluster.

`Accounting(folder, ...)` keeps everything under ``folder`` (``mysql/`` data, ``slurmdbd.conf``, pid and log
files).  `start()` makes a fresh database (job ids restart at 1 with every fresh cluster, so old records must
not answer for new jobs), starts ``mariadbd`` on 127.0.0.1 at a free port (``--skip-grant-tables``: nothing
but this machine can reach it) and ``slurmdbd``, then registers the cluster, an account and root with
`sacctmgr`.  `slurm_conf_lines()` are the slurm.conf lines that send slurmctld's records there;
``AccountingStoragePass`` must name the private munge socket, or slurmctld's and sacct's connections to
slurmdbd fail authentication (they would use the system socket).  `stop()` never raises.
Debian packages: ``slurmdbd mariadb-server`` (scripts/test.sh installs them as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from slurmcluster import pid_alive

REQUIRED_BINARIES = ("setsid", "mariadbd", "mariadb-install-db", "mariadb-admin", "slurmdbd", "sacctmgr")
ACCOUNT = "prov4ml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path}: no log)"


class Accounting:
    """MariaDB + slurmdbd under one folder (see the module docstring).

    Args:
        folder: where the database, configuration, pid and log files go.
        cluster: the ClusterName of slurm.conf.
        dbd_addr: the address slurmdbd is reached at by slurmctld and by sacct (also from inside the nodes).
        munge_socket: the private munged socket.
        etc: the folder of slurm.conf, where slurmdbd.conf must be.
        run: runs a client command (sacctmgr) with the cluster's SLURM_CONF: ``run(argv, timeout)``.
        find: finds a binary (also in sbin folders).
    """

    def __init__(
        self,
        folder: Path,
        *,
        cluster: str,
        dbd_host: str,
        dbd_addr: str,
        munge_socket: Path,
        etc: Path,
        run: Callable[..., subprocess.CompletedProcess[str]],
        find: Callable[[str], str | None],
    ) -> None:
        self.folder = folder
        self.cluster = cluster
        self.dbd_host = dbd_host
        self.dbd_addr = dbd_addr
        self.munge_socket = munge_socket
        self._run = run
        self._find = find
        self.datadir = folder / "mysql"
        self.db_socket = folder / "mysqld.sock"
        self.db_pid = folder / "mysqld.pid"
        self.db_log = folder / "mysqld.log"
        self.dbd_conf = (
            etc / "slurmdbd.conf"
        )  # slurmdbd reads it beside $SLURM_CONF (it has no option for it)
        self.dbd_pid = folder / "slurmdbd.pid"
        self.dbd_log = folder / "slurmdbd.log"
        self.port_file = folder / "ports"
        self.db_port, self.dbd_port = self._ports()

    def _ports(self) -> tuple[int, int]:
        with contextlib.suppress(OSError, ValueError):
            db, dbd = (int(x) for x in self.port_file.read_text().split())
            return db, dbd
        return 0, 0

    def missing_binaries(self) -> list[str]:
        return [name for name in REQUIRED_BINARIES if self._find(name) is None]

    def pid_files(self) -> list[Path]:
        return [self.db_pid, self.dbd_pid]

    def new_ports(self) -> None:
        """Pick free ports for mariadbd and slurmdbd (before slurm.conf is written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_port, self.dbd_port = free_port(), free_port()
        self.port_file.write_text(f"{self.db_port} {self.dbd_port}\n")

    def slurm_conf_lines(self) -> list[str]:
        """slurm.conf lines for this accounting (with jobacct_gather/linux, which measures MaxRSS)."""
        return [
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={self.dbd_addr}",
            f"AccountingStoragePort={self.dbd_port}",
            f"AccountingStoragePass={self.munge_socket}",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=task=1",
        ]

    # -- start -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Fresh database, mariadbd, slurmdbd, then the cluster, account and user (about 5-10 s).

        Raises:
            RuntimeError: a daemon did not come up (the message holds its log's tail).
        """
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir.mkdir(parents=True)
        self._check(
            [
                self._exe("mariadb-install-db"),
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            "mariadb-install-db",
            self.db_log,
        )
        # setsid --fork: mariadbd does not daemonize, and a Popen of ours would outlive the test that made it
        subprocess.run(
            [
                self._exe("setsid"),
                "--fork",
                self._exe("mariadbd"),
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                f"--socket={self.db_socket}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.db_pid}",
                f"--log-error={self.db_log}",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-lock-wait-timeout=900",
                "--innodb-flush-log-at-trx-commit=0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=True,
        )
        self._wait(
            lambda: (
                subprocess.run(
                    [self._exe("mariadb-admin"), "--no-defaults", f"--socket={self.db_socket}", "ping"],
                    capture_output=True,
                    timeout=5,
                    check=False,
                ).returncode
                == 0
            ),
            timeout,
            "mariadbd",
            self.db_log,
        )
        self.dbd_conf.write_text(self.slurmdbd_conf())
        self.dbd_conf.chmod(0o600)  # slurmdbd refuses a readable file (it holds the storage password)
        proc = self._run(["slurmdbd"], timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"slurmdbd failed ({proc.returncode}): {proc.stderr}\n{_tail(self.dbd_log)}")
        self._wait(self._dbd_answers, timeout, "slurmdbd", self.dbd_log)
        for args in (
            ["sacctmgr", "-i", "add", "cluster", self.cluster],
            ["sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={self.cluster}", "Description=tests"],
            ["sacctmgr", "-i", "add", "user", "root", f"account={ACCOUNT}", f"cluster={self.cluster}"],
        ):
            proc = self._run(args, timeout=30, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr or proc.stdout}")

    def _dbd_answers(self) -> bool:
        proc = self._run(["sacctmgr", "-n", "-P", "list", "cluster"], timeout=5, check=False)
        return proc.returncode == 0

    def slurmdbd_conf(self) -> str:
        return "\n".join(
            [
                "AuthType=auth/munge",
                f"AuthInfo=socket={self.munge_socket}",
                f"DbdHost={self.dbd_host}",
                f"DbdAddr={self.dbd_addr}",
                f"DbdPort={self.dbd_port}",
                "SlurmUser=root",
                "DebugLevel=info",
                f"LogFile={self.dbd_log}",
                f"PidFile={self.dbd_pid}",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={self.db_port}",
                "StorageUser=root",
                "StorageLoc=slurm_acct_db",
                "",
            ]
        )

    def _exe(self, name: str) -> str:
        return self._find(name) or name

    @staticmethod
    def _check(args: Sequence[str], what: str, log: Path) -> None:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}\n{_tail(log)}"
            )

    @staticmethod
    def _wait(ready: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not answer within {timeout:.0f} s\n{_tail(log)}")

    # -- stop --------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM slurmdbd, shut MariaDB down; SIGKILL what is left.  Never raises."""
        for pid_file in (self.dbd_pid, self.db_pid):
            pid = pid_alive(pid_file)
            if pid is None:
                continue
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and pid_alive(pid_file) == pid:
                    time.sleep(0.1)
                if pid_alive(pid_file) != pid:
                    break
