"""Pickling of code for the nodes: cloudpickle, with each function keeping its file's name.

cloudpickle 3.1.3 and later name the file of every function pickled by value `<dynamic-code>` (so that
its payload does not depend on where it was defined); a task's remote traceback would then name no file
and show no source line. Here a code object keeps its co_filename, as it did before 3.1.3."""

from __future__ import annotations

import io
import types
from collections import ChainMap

import cloudpickle

_ANONYMOUS = "<dynamic-code>"


def _code_reduce(code: types.CodeType):
    rebuild, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    return rebuild, tuple(code.co_filename if a == _ANONYMOUS else a for a in args)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj) -> bytes:
    """cloudpickle.dumps, code objects keeping their file's name."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


class _TooLarge(Exception):
    pass


class _Within:
    """A file the pickle goes to while it stays within `limit` bytes (then _TooLarge stops the pickler)."""

    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size, self.limit = 0, limit

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLarge
        self.parts.append(bytes(data))
        return len(data)


def dumps_within(obj, limit: int) -> bytes | None:
    """The pickle of obj if it is at most `limit` bytes; None (stopped as soon as it is larger) if not:
    then `dump` writes it to a file, no copy of it in memory."""
    out = _Within(limit)
    try:
        _Pickler(out, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    except _TooLarge:
        return None
    return b"".join(out.parts)


class _Counted:
    def __init__(self, file, limit: int, too_large):
        self.file, self.size, self.limit, self.too_large = file, 0, limit, too_large

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise ValueError(self.too_large(self.size))
        return self.file.write(data)  # (a large value's buffer is handed over whole: no copy here)


def dump(obj, file, limit: int, too_large) -> None:
    """Pickle obj straight to `file`; a pickle over `limit` bytes raises ValueError(too_large(size))."""
    _Pickler(_Counted(file, limit, too_large), protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
