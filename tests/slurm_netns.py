"""Compute nodes on one machine for the multi-node SLURM tier: a Linux bridge, and per node a network namespace
with its own address (a veth pair into the bridge) and, for what runs in it, its own hostname.

`NodeNetwork(tag, nodes).create()` makes bridge ``p4b<tag>`` with address ``10.A.B.1/24`` and, per node,
namespace ``p4<tag>-<node>`` whose ``eth0`` has ``10.A.B.(11+i)``; only that bridge connects them, so traffic
stays inside the namespaces and the bridge (nothing is routed out).  `exec_prefix(node)` is the command prefix
that runs a program in the node's network namespace, a new UTS namespace whose hostname is the node's name and
a new mount namespace in which the cluster's hosts file is bind-mounted over /etc/hosts and /dev/shm is a
node-local tmpfs (`nsenter --net=... unshare --uts --mount sh -c 'hostname NODE; mount --bind HOSTS /etc/hosts;
mount -t tmpfs tmpfs /dev/shm; exec "$@"'`).  The hosts file is how every node resolves every node's name
(gloo, Lightning, MPICH's hydra resolve the hostname and MASTER_ADDR).  The private /dev/shm is what a real node
has: MPICH names its shared-memory segment after the PMI job id (``mpich_shm_<hash of "1.0">_<node>``), so
ranks of job 1.0 of two test clusters on one machine (their job ids both start at 1) would attach to one
segment and hang in MPI_Init.
Not `ip netns exec`: it remounts /sys, which hides /sys/fs/cgroup, and slurmd 22.05 then refuses to start
("No filesystem mounted on /sys/fs/cgroup").  `destroy()` kills every process left in the namespaces, then
removes namespaces, veths and bridge; it never raises and also cleans what a killed session left behind
(names are derived from the cluster folder, so a restart finds them).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REQUIRED_BINARIES = ("ip", "nsenter", "unshare", "hostname", "mount")


def tag_for(folder: str | os.PathLike[str]) -> str:
    """Six hex digits naming a cluster's interfaces and namespaces (interface names have at most 15 bytes)."""
    return hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:6]


def namespaces_unavailable() -> str | None:
    """Why network/UTS/mount namespaces and a bridge cannot be made here (None when they can).

    Probed in a throw-away network namespace, so nothing of the machine's network is touched.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if unshare is None or ip is None:
        return "unshare or ip (util-linux, iproute2) is not installed"
    try:
        proc = subprocess.run(
            [unshare, "--net", "--uts", "--mount", "--", ip, "link", "add", "p4probe0", "type", "bridge"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare failed: {exc}"
    if proc.returncode != 0:
        return f"cannot make network namespaces and a bridge here: {proc.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [shutil.which("ip") or "/usr/sbin/ip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


class NodeNetwork:
    """The bridge, namespaces and veth pairs of one multi-node test cluster (see the module docstring)."""

    def __init__(self, tag: str, nodes: Sequence[str], controller: str, hosts_file: Path) -> None:
        self.tag = tag
        self.hosts_file = hosts_file
        self.nodes = list(nodes)
        self.controller = controller  # the machine's hostname: slurmctld and slurmdbd run outside
        self.bridge = f"p4b{tag}"
        number = int(tag, 16)
        self.subnet = ipaddress.ip_network(f"10.{100 + number % 100}.{(number >> 8) % 256}.0/24")
        self.host_addr = str(self.subnet.network_address + 1)

    def namespace(self, node: str) -> str:
        return f"p4{self.tag}-{node}"

    def addr(self, node: str) -> str:
        return str(self.subnet.network_address + 11 + self.nodes.index(node))

    def _veth(self, node: str) -> str:
        return f"p4v{self.tag}{self.nodes.index(node):02d}"

    def hosts_text(self) -> str:
        """The /etc/hosts every node sees: localhost, the controller and every node, on the bridge."""
        lines = ["127.0.0.1 localhost", f"{self.host_addr} {self.controller}"]
        lines += [f"{self.addr(n)} {n}" for n in self.nodes]
        return "\n".join(lines) + "\n"

    # -- create ------------------------------------------------------------------------------------------------
    def create(self) -> None:
        """Create bridge, namespaces, veths and the hosts file (call destroy() first for a clean slate).

        Raises:
            RuntimeError: an `ip` command failed (not root, no netns support) or the subnet is taken.
        """
        self._check_subnet_free()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_addr}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.hosts_file.write_text(self.hosts_text())
        for node in self.nodes:
            ns, veth = self.namespace(node), self._veth(node)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(node)}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _check_subnet_free(self) -> None:
        proc = _ip("-o", "-4", "addr", "show", check=False)
        for line in proc.stdout.splitlines():
            words = line.split()
            if "inet" not in words:
                continue
            net = ipaddress.ip_interface(words[words.index("inet") + 1]).network
            if net.overlaps(self.subnet) and words[1] != self.bridge:
                raise RuntimeError(
                    f"subnet {self.subnet} of the test cluster overlaps {net} on {words[1]}; "
                    "use another PROV4ML_HPC_SLURM_MULTINODE_DIR (the subnet is derived from it)"
                )

    def exec_prefix(self, node: str) -> list[str]:
        """Argv prefix running a command on `node`: its network namespace, hostname and /etc/hosts."""
        return [
            shutil.which("nsenter") or "/usr/bin/nsenter",
            f"--net=/run/netns/{self.namespace(node)}",
            shutil.which("unshare") or "/usr/bin/unshare",
            "--uts",
            "--mount",
            "--propagation=slave",
            "--",
            "/bin/sh",
            "-c",
            'hostname "$0" && mount --bind "$1" /etc/hosts && mount -t tmpfs -o mode=1777 tmpfs /dev/shm '
            '&& shift && exec "$@"',
            node,
            str(self.hosts_file),
        ]

    # -- processes ---------------------------------------------------------------------------------------------
    def pids(self, node: str) -> list[int]:
        """Processes in the node's network namespace (slurmd, slurmstepd, job tasks)."""
        proc = _ip("netns", "pids", self.namespace(node), check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def kill(self, node: str, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of the node, as if it lost power; return their pids once they are gone."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.pids(node) if p != os.getpid()]
            if not pids:
                return killed
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)
        raise RuntimeError(
            f"processes {self.pids(node)} of node {node} survive SIGKILL after {timeout:.0f} s"
        )

    # -- destroy -----------------------------------------------------------------------------------------------
    def _our_namespaces(self) -> list[str]:
        proc = _ip("netns", "list", check=False)
        names = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
        prefix = f"p4{self.tag}-"
        return sorted({n for n in names if n.startswith(prefix)} | {self.namespace(n) for n in self.nodes})

    def destroy(self) -> None:
        """Kill what runs in the namespaces, delete them, the veths and the bridge."""
        existing = _ip("netns", "list", check=False).stdout.split()
        for ns in self._our_namespaces():
            if ns in existing:
                with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                    self._kill_namespace(ns)
                _ip("netns", "del", ns, check=False)
        links = _ip("-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            name = line.split(":", 2)[1].strip().split("@", 1)[0] if line.count(":") >= 2 else ""
            if name.startswith(f"p4v{self.tag}"):
                _ip("link", "del", name, check=False)
        if f" {self.bridge}:" in links:
            _ip("link", "del", self.bridge, check=False)

    def _kill_namespace(self, ns: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
