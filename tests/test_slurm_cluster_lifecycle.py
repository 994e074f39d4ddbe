"""The multi-node test cluster cleans up after itself: a start after a killed session (daemons dead, namespaces,
veths, bridge and pid files left behind) comes up, and stop() leaves no daemon, namespace, link or process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from slurm_multinode import MultiNodeCluster
from slurmcluster import pid_alive, process_alive

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.timeout(180)]


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _processes_using(folder: Path) -> list[int]:
    """Live processes whose command line or environment names the cluster folder (SLURM_CONF, --socket=...)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            text = Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in text and process_alive(int(entry)):
            found.append(int(entry))
    return found


def _all_pids(cluster: MultiNodeCluster) -> list[int]:
    files = [cluster.munge_run / "munged.pid", *cluster._pid_files(), *cluster._service_pid_files()]
    return [pid for pid in (pid_alive(f) for f in files) if pid is not None]


def test_start_after_a_killed_session_then_stop_leaves_nothing(multinode_cluster):
    # the session's cluster proves root, binaries and namespaces are there; this one has its own short folder
    # (unix socket paths have at most 107 bytes), tag, subnet and ports
    base = Path(f"/tmp/p4mn-life-{os.getpid()}")
    first = MultiNodeCluster(base, nodes=2)
    try:
        first.start(timeout=60)
        daemons = _all_pids(first)
        assert len(daemons) == 6  # munged, slurmctld, 2 slurmd, mariadbd, slurmdbd
        for pid in daemons + [p for n in first.node_names for p in first.net.pids(n)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the session is killed: no clean-up at all
        assert {first.net.namespace(n) for n in first.node_names} <= set(_namespaces())
        assert f"{first.net.bridge}:" in _links()

        again = MultiNodeCluster(base, nodes=2)
        assert not again.is_running()
        again.start(timeout=60)  # cleans the leftovers first
        proc = again._run(["srun", "-N2", "--ntasks-per-node=1", "hostname"], timeout=30)
        assert sorted(proc.stdout.split()) == ["node01", "node02"]
        again.stop()
        assert _all_pids(again) == [] and _processes_using(base) == []
        assert not [ns for ns in _namespaces() if ns.startswith(f"p4{again.net.tag}-")]
        links = _links()
        assert again.net.bridge not in links and f"p4v{again.net.tag}" not in links
        assert multinode_cluster.node_states() == dict.fromkeys(multinode_cluster.node_names, "idle")
    finally:
        MultiNodeCluster(base, nodes=2).stop()
        shutil.rmtree(base, ignore_errors=True)
