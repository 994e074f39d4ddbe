"""Source and environment capture: the script's git state and sha256, and the installed distributions.

Both functions are cheap, never raise for a missing git, a script outside any repository or a broken package
metadata entry, and never run a shell: git runs with list arguments and a timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from typing import Any

_HASH_BLOCK = 1 << 20
GIT_TIMEOUT = 5.0  # seconds per git call; a hung network file system must not stall start_run

_URL_CREDENTIALS = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<cred>[^@/]*@)")


def strip_credentials(url: str) -> str:
    """A remote URL without user/password/token: ``https://tok@host/x`` -> ``https://host/x``.

    scp-like ``git@host:repo`` keeps its user (it names an ssh account, not a secret).
    """
    url = url.strip()
    m = _URL_CREDENTIALS.match(url)
    if m:
        url = m.group("scheme") + url[m.end() :]
    return url


def _git(cwd: str, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        out = subprocess.run(  # noqa: S603 - list arguments, no shell, fixed executable
            [git, "-C", cwd, *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _sha256(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def capture_source(script_path: str | os.PathLike[str], *, git: bool = True) -> dict[str, Any]:
    """Describe a script and the git repository it lives in (if any).

    Returns a dict with ``script`` (absolute path), ``script_sha256``, ``script_size`` and, when the script is
    inside a git work tree, ``git_commit``, ``git_branch`` (None when detached), ``git_dirty`` (uncommitted
    changes to tracked files), ``git_remote_url`` (origin, or the first remote; credentials stripped) and
    ``git_root``.  Missing pieces are simply absent; this function never raises for them.  ``git=False``
    skips the git commands (start_run runs them on global rank 0 only: `git status` on 1,000 ranks would
    stat every tracked file of the repository 1,000 times on the shared file system).
    """
    path = os.path.abspath(os.fspath(script_path))
    info: dict[str, Any] = {"script": path}
    if os.path.isfile(path):
        info["script_size"] = os.path.getsize(path)
        digest = _sha256(path)
        if digest is not None:
            info["script_sha256"] = digest
    else:
        info["script_exists"] = False
    if not git:
        return info
    cwd = os.path.dirname(path) if os.path.isdir(os.path.dirname(path)) else os.getcwd()
    root = _git(cwd, "rev-parse", "--show-toplevel")
    if not root:
        return info
    info["git_root"] = root
    commit = _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD")
    if commit:
        info["git_commit"] = commit
    branch = _git(cwd, "symbolic-ref", "--quiet", "--short", "HEAD")
    info["git_branch"] = branch or None
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["git_dirty"] = bool(status)
    remote = _git(cwd, "config", "--get", "remote.origin.url")
    if not remote:
        remotes = (_git(cwd, "remote") or "").split()
        if remotes:
            remote = _git(cwd, "config", "--get", f"remote.{remotes[0]}.url")
    if remote:
        info["git_remote_url"] = strip_credentials(remote)
    return info


def installed_distributions() -> dict[str, str]:
    """Every installed distribution and its version, from importlib.metadata (nothing is imported).

    Names are normalised (PEP 503: lower case, runs of ``-_.`` become ``-``); the first entry found on
    sys.path wins, as for imports.
    """
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception:  # noqa: BLE001, S112 - one broken METADATA must not hide the others
            continue
        if not name or version is None:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        out.setdefault(key, str(version))
    return dict(sorted(out.items()))
