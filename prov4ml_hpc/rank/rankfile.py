"""The rank-file writer: one HDF5 file per rank, opened once, appended in blocks, flushed for crash safety.

Layout (see docs/format.md and schema.py): a compound ``rows`` table holding every logged value of every series
of the rank, a ``series`` table of JSON definitions (index = series id) and a ``records`` table of JSON records
(parameters, artifacts, events, problems).  Metadata lives in root attributes.  The file uses HDF5's default
(earliest) file format without SWMR: measured to survive kill -9 with exactly the rows present at the last
``flush()``.  HDF5 file locking is turned off, because it fails on some Lustre/NFS mounts (errno 38).
"""

from __future__ import annotations

import os
from typing import Any

from .. import schema
from ..h5 import encode_attr, open_h5


class RankFileWriter:
    """Appends blocks to a new rank file.  Not thread-safe: the recorder serialises calls."""

    def __init__(self, path: str, attrs: dict[str, Any]) -> None:
        import h5py

        if os.path.exists(path):
            raise FileExistsError(path)
        self.path = path
        tmp_dir = os.path.dirname(path)
        os.makedirs(tmp_dir, exist_ok=True)
        # "x" (w-) never truncates an existing file: a second writer for the same rank fails instead.
        self._f = open_h5(path, "w-")
        st = os.fstat(self._f.id.get_vfd_handle())
        self.inode = (st.st_dev, st.st_ino)
        f = self._f
        str_t = h5py.string_dtype("utf-8")
        f.create_dataset(
            schema.DS_ROWS, shape=(0,), maxshape=(None,), dtype=schema.row_dtype(), chunks=(schema.ROW_CHUNK,)
        )
        f.create_dataset(schema.DS_SERIES, shape=(0,), maxshape=(None,), dtype=str_t, chunks=(256,))
        f.create_dataset(schema.DS_RECORDS, shape=(0,), maxshape=(None,), dtype=str_t, chunks=(256,))
        f.attrs[schema.A_FORMAT] = schema.RANK_FORMAT
        f.attrs[schema.A_SCHEMA_VERSION] = schema.SCHEMA_VERSION
        self.set_attrs(attrs)
        # dataset handles are opened once and kept: no per-flush open/close, and no dataset close can fail
        # half-way after a write error (HDF5 would then crash at exit closing it a second time)
        self._ds = {name: f[name] for name in (schema.DS_ROWS, schema.DS_SERIES, schema.DS_RECORDS)}
        self.rows = 0
        self.flush()

    def fd(self) -> int:
        return self._f.id.get_vfd_handle()

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self._f.attrs[key] = encode_attr(value)

    def append_rows(self, block) -> None:
        n = len(block)
        if not n:
            return
        ds = self._ds[schema.DS_ROWS]
        start = ds.shape[0]
        ds.resize((start + n,))
        ds[start:] = block
        self.rows = start + n

    def append_strings(self, name: str, items: list[str]) -> None:
        if not items:
            return
        ds = self._ds[name]
        start = ds.shape[0]
        ds.resize((start + len(items),))
        ds[start:] = items

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def abandon(self) -> None:
        """Drop the handle after a write error without raising again and without touching the file further.

        The descriptor is first pointed at /dev/null, so that neither this close nor HDF5's own exit-time
        clean-up can write half-states into the file (or crash on a second failed write)."""
        redirect_to_devnull(self.fd_or_none())
        try:
            self._f.flush()  # lets HDF5 settle its dirty caches into /dev/null
        except Exception:  # noqa: BLE001, S110 - the error that got us here was already reported
            pass
        _ABANDONED.append(
            (self._f, self._ds)
        )  # never closed or collected: HDF5's exit-time clean-up writes to /dev/null

    def fd_or_none(self) -> int | None:
        try:
            return self._f.id.get_vfd_handle()
        except Exception:  # noqa: BLE001
            return None


_ABANDONED: list[Any] = []


def redirect_to_devnull(fd: int | None) -> None:
    """Point fd at an anonymous in-memory file (Linux memfd; /dev/null elsewhere) that accepts writes and
    truncation, so HDF5 can finish whatever it wants to do with the handle without touching the real file.

    Under a file size limit (``ulimit -f``) a memfd is limited too, and HDF5's exit-time writes past it would
    fail and crash the interpreter at exit (SIGSEGV): /dev/null, which has no size, is used then."""
    if fd is None:
        return
    sink = None
    if hasattr(os, "memfd_create") and not _size_limited():
        try:
            sink = os.memfd_create("prov4ml-hpc-detached")
        except OSError:
            sink = None
    try:
        if sink is None:
            sink = os.open(os.devnull, os.O_RDWR)
        os.dup2(sink, fd)
        os.close(sink)
    except OSError:
        pass


def _size_limited() -> bool:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):
        return False
