"""Files a run uses or produces: sha256 and size, and copies that can never land outside the run directory."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..job.capture import sha256_file

_BAD = re.compile(r"[^A-Za-z0-9._+-]")


def safe_component(part: str) -> str:
    """One file-name component that cannot be '', '.', '..', hidden, or contain a separator."""
    cleaned = _BAD.sub(lambda m: f"%{ord(m.group(0)) & 0xFF:02X}" if ord(m.group(0)) < 256 else "_", part)
    if cleaned.strip(".") == "" or cleaned.startswith("."):
        cleaned = "_" + cleaned
    return cleaned[:200]


def safe_relative(name: str) -> Path:
    """Turn a user-given artifact name (may contain '/', '..', absolute paths) into a safe relative path."""
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".")]
    if not parts:
        parts = ["artifact"]
    return Path(*[safe_component(p) for p in parts])


def copy_into(src: str | os.PathLike, dest_root: str | os.PathLike, name: str) -> Path:
    """Copy a file (or directory) under dest_root/<safe name>, never outside dest_root, never overwriting.

    Returns the destination path.  Raises ValueError if the destination would leave dest_root.
    """
    root = Path(dest_root).resolve()
    dest = (root / safe_relative(name)).resolve()
    if not dest.is_relative_to(root):
        raise ValueError(f"artifact name {name!r} would be copied outside {root}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    candidate, k = dest, 1
    while candidate.exists():
        candidate = dest.with_name(f"{dest.stem}.{k}{dest.suffix}")
        k += 1
    if Path(src).is_dir():
        shutil.copytree(src, candidate, symlinks=True)
    else:
        shutil.copyfile(src, candidate)
    return candidate


def describe_path(path: str | os.PathLike, hash_files: bool = True) -> dict[str, object]:
    """Size and sha256 of a file; size and file count of a directory (no hash); exists=False otherwise."""
    p = Path(path)
    info: dict[str, object] = {"path": str(p.resolve()) if p.exists() else os.path.abspath(p)}
    if p.is_file():
        info["size"] = p.stat().st_size
        if hash_files:
            info["sha256"] = sha256_file(p)
    elif p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        info["size"] = sum(f.stat().st_size for f in files)
        info["files"] = len(files)
    else:
        info["exists"] = False
    return info
