"""The HDF5 helpers every file of a run shares: opening without file locking, and encoding and decoding text and attributes.

HDF5 variable-length strings cannot hold every Python ``str``: they are UTF-8 (a lone surrogate such as the
``'\\udce9'`` that ``os.listdir`` returns for a latin-1 file name has no UTF-8 form) and end at the first NUL.
Everything we store goes through :func:`json_text` (JSON datasets: exact for any ``str``) or
:func:`encode_attr` (attributes), so no user string can stop a write.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_ONLY = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogates that surrogateescape cannot write


def open_h5(path: str, mode: str):
    """h5py.File with HDF5 file locking off: locking fails on some Lustre/NFS mounts (errno 38)."""
    import h5py

    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # h5py < 3.5 has no locking= argument
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, mode)


def json_text(value: Any, **kw: Any) -> str:
    """JSON text that an HDF5 UTF-8 string can hold, for any value ``json.dumps`` accepts.

    Non-ASCII text is kept readable (``ensure_ascii=False``); only when the text holds a lone surrogate is it
    written with ``\\uXXXX`` escapes, which every JSON reader turns back into the same ``str``.  NUL and the
    other control characters are always escaped by JSON.
    """
    text = json.dumps(value, ensure_ascii=False, **kw)
    if _SURROGATE.search(text) is None:
        return text
    return json.dumps(value, ensure_ascii=True, **kw)


def attr_text(value: str) -> Any:
    """A ``str`` as an HDF5 attribute value.

    Most strings are stored as they are.  One with lone surrogates from ``surrogateescape`` (non-UTF-8 bytes in
    a path, an environment value or a command line, as Python decodes them) is stored as those original bytes in
    a UTF-8 string attribute: h5py reads it back as the same ``str``.  What HDF5 cannot hold at all (NUL, other
    lone surrogates) is stored with Python backslash escapes (``\\x00``, ``\\ud800``): readable, never an error.
    """
    if "\x00" not in value and _SURROGATE.search(value) is None:
        return value
    if "\x00" not in value and _ESCAPED_ONLY.search(value) is None:
        import h5py
        import numpy as np

        return np.array(value.encode("utf-8", "surrogateescape"), dtype=h5py.string_dtype("utf-8"))
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def encode_attr(value: Any) -> Any:
    """HDF5 attribute value: numbers and strings as they are, None as "", everything else as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        return attr_text(value)
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
