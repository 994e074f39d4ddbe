"""A real multi-node SLURM on this one machine, for the `multinode` test tier: one slurmctld, one slurmdbd with
MariaDB (real `sacct`), and N slurmd, each in its own network and UTS namespace (its own address on a bridge
and its own hostname, the SLURM node name).

`MultiNodeCluster(base).start()` cleans what an earlier (perhaps killed) session left, creates the bridge and
the namespaces (tests/slurm_netns.py), starts munged, MariaDB + slurmdbd (tests/slurm_accounting.py),
slurmctld on the bridge's host address, then one slurmd per node through `ip netns exec NS unshare --uts`, and
waits until every node is idle (about 10 s).  `stop()` shuts the daemons down and removes namespaces, veths
and bridge; it never raises.  `kill_node(name)` SIGKILLs every process of a node (slurmd, slurmstepd, tasks):
a node lost mid-job; `restart_node(name)` brings it back.  File systems are shared (the cluster folder and
the tests' run directories play the parallel file system), and so is munge.
By hand: `python tests/slurm_multinode.py start|stop|status [BASE]` (see docs/slurm.md).

Layout: per node ``SlurmdSpoolDir=BASE/spool/%n``, ``SlurmdPidFile=BASE/run/slurmd-%n.pid``,
``SlurmdLogFile=BASE/log/slurmd-%n.log``; every slurmd listens on the same SlurmdPort in its own namespace.
Nodes are ``node01..nodeNN`` with ``CPUs=4`` each (``SlurmdParameters=config_overrides``), so 2 nodes x 2 tasks
(and Lightning's 2 devices per node) fit on 2 real cores.  ``SlurmdTimeout=10``: a lost node is marked DOWN
and its jobs NODE_FAIL within about 10-20 s.

Observed here (SLURM 22.05.8, 3 nodes; asserted by tests/test_slurm_multinode.py and test_slurm_accounting.py):
- a task's `hostname` and SLURMD_NODENAME are its node name; SLURM_JOB_NODELIST is ``node[01-02]``,
  SLURM_NODEID 0/1, SLURM_LOCALID 0/1 on each node, SLURM_PROCID 0..3 (block distribution).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from slurm_accounting import Accounting
from slurm_netns import REQUIRED_BINARIES as NET_BINARIES
from slurm_netns import NodeNetwork, tag_for
from slurmcluster import DEFAULT_BASE, SlurmCluster, _tail, find_binary, missing_binaries, pid_alive

DEFAULT_MULTINODE_BASE = Path(os.environ.get("PROV4ML_HPC_SLURM_MULTINODE_DIR", f"{DEFAULT_BASE}-multinode"))


class MultiNodeCluster(SlurmCluster):
    """slurmctld + slurmdbd/MariaDB on the host, one slurmd per network/UTS namespace (module docstring)."""

    def __init__(
        self,
        base: str | os.PathLike[str] | None = None,
        *,
        nodes: int = 3,
        cpus: int = 4,
        memory_mb: int = 4000,
    ) -> None:
        super().__init__(base if base is not None else DEFAULT_MULTINODE_BASE, cpus=cpus, memory_mb=memory_mb)
        self._names = [f"node{i:02d}" for i in range(1, nodes + 1)]
        self.net = NodeNetwork(tag_for(self.base), self._names, self.host, self.conf.parent / "hosts")
        self.accounting = Accounting(
            self.base / "accounting",
            cluster="prov4ml",
            dbd_host=self.host,
            dbd_addr=self.net.host_addr,
            munge_socket=self.socket,
            etc=self.conf.parent,
            run=self._run,
            find=find_binary,
        )

    @property
    def node_names(self) -> list[str]:
        return list(self._names)

    @property
    def ctld_addr(self) -> str:
        return self.net.host_addr

    def missing_binaries(self) -> list[str]:
        return [
            *missing_binaries(),
            *self.accounting.missing_binaries(),
            *[name for name in NET_BINARIES if find_binary(name) is None],
        ]

    def slurmd_pid_file(self, node: str) -> Path:
        return self.base / "run" / f"slurmd-{node}.pid"

    def _pid_files(self) -> list[Path]:
        return [
            self.base / "run" / "slurmctld.pid",
            *[self.slurmd_pid_file(n) for n in self._names],
        ]

    def _service_pid_files(self) -> list[Path]:
        return self.accounting.pid_files()

    # -- configuration -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.accounting.new_ports()  # before slurm.conf, which names slurmdbd's port
        super()._prepare()
        for node in self._names:
            (self.base / "spool" / node).mkdir(parents=True, exist_ok=True)

    def _slurmd_lines(self) -> list[str]:
        b = self.base
        return [
            f"SlurmdSpoolDir={b / 'spool' / '%n'}",
            f"SlurmdPidFile={b / 'run' / 'slurmd-%n.pid'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd-%n.log'}",
            "SlurmdTimeout=10",
        ]

    def _accounting_lines(self) -> list[str]:
        return self.accounting.slurm_conf_lines()

    def _node_lines(self) -> list[str]:
        return [
            f"NodeName={n} NodeHostname={n} NodeAddr={self.net.addr(n)} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN"
            for n in self._names
        ]

    # -- daemons -----------------------------------------------------------------------------------------------
    def _start_services(self, timeout: float) -> None:
        self.net.create()
        self.accounting.start(timeout=max(timeout, 60.0))

    def _start_slurmds(self, timeout: float) -> None:
        for node in self._names:
            self.start_slurmd(node, timeout)

    def start_slurmd(self, node: str, timeout: float = 30.0) -> None:
        """Start `node`'s slurmd in its namespaces (its hostname is the node name).

        Raises:
            RuntimeError: slurmd did not start (the message holds its log's tail).
        """
        slurmd = find_binary("slurmd") or "slurmd"
        proc = self._run([*self.net.exec_prefix(node), slurmd], check=False, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"slurmd of {node} failed ({proc.returncode}): {proc.stderr}\n"
                f"{_tail(self.log_dir / f'slurmd-{node}.log')}"
            )

    def _slurmd_log_tails(self) -> str:
        return "\n".join(f"-- {n}:\n{_tail(self.log_dir / f'slurmd-{n}.log', 8)}" for n in self._names)

    def kill_node(self, node: str) -> list[int]:
        """SIGKILL every process of `node` (slurmd, slurmstepd, job tasks); return their pids."""
        return self.net.kill(node)

    def restart_node(self, node: str, timeout: float = 60.0) -> None:
        """Start a lost node's slurmd again and return it to service."""
        if pid_alive(self.slurmd_pid_file(node)) is None:
            self.start_slurmd(node)
        try:  # ReturnToService=2: a DOWN node that registers again is back at once
            self.wait_idle(10.0, nodes=[node])
        except RuntimeError:
            self._run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
            self.wait_idle(timeout, nodes=[node])

    def on_node(self, node: str, args: Sequence[str]) -> list[str]:
        """Argv running `args` on `node` (its network namespace and hostname), for ad-hoc checks."""
        return [*self.net.exec_prefix(node), *args]

    def _stop_services(self) -> None:
        self.accounting.stop()
        self.net.destroy()


def main(argv: Sequence[str]) -> int:
    """`python tests/slurm_multinode.py start|stop|status [BASE]`."""
    if not argv or argv[0] not in ("start", "stop", "status"):
        print("usage: slurm_multinode.py start|stop|status [BASE]", file=sys.stderr)
        return 2
    cluster = MultiNodeCluster(argv[1] if len(argv) > 1 else None)
    if argv[0] == "start":
        cluster.start(timeout=60)
        print(f"export SLURM_CONF={cluster.conf}")
    elif argv[0] == "stop":
        cluster.stop()
    else:
        print("running" if cluster.is_running() else "stopped")
        if cluster.is_running():
            print(cluster._run(["sinfo", "-N"], check=False).stdout, end="")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(sys.argv[1:]))
