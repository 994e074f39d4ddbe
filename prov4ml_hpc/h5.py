"""The HDF5 helpers every file of a run shares: opening without file locking, and attribute encoding/decoding."""

from __future__ import annotations

import json
import os
from typing import Any


def open_h5(path: str, mode: str):
    """h5py.File with HDF5 file locking off: locking fails on some Lustre/NFS mounts (errno 38)."""
    import h5py

    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # h5py < 3.5 has no locking= argument
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, mode)


def encode_attr(value: Any) -> Any:
    """HDF5 attribute value: numbers and strings as they are, None as "", everything else as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def decode_attr(value: Any, as_json: bool = False) -> Any:
    """The inverse of :func:`encode_attr` for one attribute read back with h5py.

    Bytes become str, numpy scalars Python scalars; with ``as_json`` (the attribute is one of
    ``schema.JSON_ATTRS``) a string is parsed as JSON: ``""`` gives ``{}`` and text that is not JSON stays as
    it is.  ``""`` of other attributes is kept (callers that know the attribute can be None map it).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if as_json and isinstance(value, str):
        if value == "":
            return {}
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
