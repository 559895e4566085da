"""Files that must never be seen half-written: atomic write-then-rename, and JSON state under a lock."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def private_dir(path: Path) -> Path:
    """A folder only its user may enter (logs, pids, a node's own files): made so, or made so now."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def open_private(path: Path, mode: str = "a", **kwargs):
    """A file (a log) opened for appending or writing, readable by its user only (0600), made so if it
    was not."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, **kwargs)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write `data` to `path` through a uniquely named temporary file created with `mode`, then rename:
    readers see the old or the new content, never part of it, and a secret is never readable by others.
    Concurrent writers each use their own temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created if needed). Yields False when not blocking and held elsewhere.
    The lock goes with the process: a killed holder never leaves it stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def locked_json(path: Path) -> Iterator[dict]:
    """Yields the file's dict under an exclusive lock; what the caller changes is written back atomically."""
    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        state = json.loads(path.read_text()) if path.exists() else {}
        before = json.dumps(state, sort_keys=True)
        yield state
        after = json.dumps(state, indent=1, sort_keys=True)
        if json.dumps(state, sort_keys=True) != before:
            atomic_write(path, after)
