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
