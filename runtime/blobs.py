"""Where the head's large values live: files in its blobs folder, and, for values a process on the head's
machine puts (not task payloads), in memory while there is room.

The memory folder is on the head machine's tmpfs (/dev/shm), one per store. A value written there is
named in the blobs folder by a symlink, so whoever reads a blob (the head, an agent or a driver on the
head's machine) opens the same path whichever it is. A tmpfs write is a copy into memory; the same write
to a disk file can stall on the disk (measured: 100 MB in 35 ms to tmpfs, 160-330 ms to this machine's
disk). Values in memory are lost with the head machine (not with a restart of the head process): their
gets fail as lost, as Ray's objects do with their node. Task payloads stay on disk: queued work survives
the head machine.

Values fill at most MEMORY_SHARE of the tmpfs, judged by its free space when each one starts; past that,
or when the tmpfs fills while one is written, they go to disk."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.shm import OWNER_FILE, forget_stale_memory, memory_dir
from runtime.spare import Spare, discard, write_into

MEMORY_SHARE = 0.5
WRITE_MAX_S = 3600.0  # a temporary file older than this is no write in progress (its writer died)


def make_memory_dir(blobs: Path) -> Path | None:
    """(the head starting) Its memory folder, made if need be (0700); None where there is no tmpfs. The
    folders no head has renewed for a day are removed (core/shm.py)."""
    forget_stale_memory()
    folder = memory_dir(blobs)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if not _ours(folder):
            return None  # made by another user (/dev/shm is everyone's): values stay on disk
        (folder / OWNER_FILE).write_text(str(blobs.resolve()))
    except OSError:
        return None
    return folder


def _ours(folder: Path) -> bool:
    """A folder of this user's alone, itself (not a link someone put in its place)."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def renew_memory(folder: Path) -> None:
    """(the head, now and then) Its folder is in use: no other head takes it for stale."""
    try:
        os.utime(folder / OWNER_FILE)
    except OSError:
        pass


def forget_memory(blobs: Path) -> None:
    """The store is given up (the node stops for good): its values in memory go."""
    shutil.rmtree(memory_dir(blobs), ignore_errors=True)


def usable_memory_dir(blobs: Path) -> Path | None:
    """(a client sharing the head's disk) The memory folder, if the head made it and it is this user's."""
    folder = memory_dir(blobs)
    return folder if _ours(folder) else None


def _room(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    total = st.f_blocks * st.f_frsize
    return total > 0 and (st.f_blocks - st.f_bavail) * st.f_frsize < MEMORY_SHARE * total


def write_blob(final: Path, memory: Path | None, write: Callable[[BinaryIO], None], spare: Spare | None = None,
               item_id: str = "") -> int:
    """Write a blob with `write(file)`, in memory when there is room, else on disk; then `final` names
    it. Returns its size. A tmpfs that fills meanwhile: written again, on disk (`write` runs again).
    `spare`: this process's files for large values in `memory` (runtime/spare.py), written into, and told
    of the value (`item_id`)."""
    for where in ([memory] if memory is not None and _room(memory) else []) + [None]:
        folder = where if where is not None else final.parent
        tmp = folder / f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        ready = spare.take() if spare is not None and where is not None else None
        try:
            if ready is not None:
                size = write_into(ready, tmp, write)
            else:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    write(f)
                    size = f.tell()
            if where is None:
                os.replace(tmp, final)
            else:
                target = where / final.name
                os.replace(tmp, target)
                link = final.with_name(f".{final.name}.link-{os.getpid()}-{threading.get_ident()}")
                os.symlink(target, link)
                os.replace(link, final)
                if spare is not None:
                    spare.wrote(item_id, target, ready, size, lambda w=where: _room(w))
            return size
        except BaseException as e:  # (the pickler's own errors too: a value that cannot be pickled, or too large)
            tmp.unlink(missing_ok=True)
            if ready is not None:
                discard(ready)
            if where is None or not isinstance(e, OSError) or e.errno != errno.ENOSPC:
                raise
    raise AssertionError("unreachable: the disk attempt returns or raises")


def drop_blob(path: Path) -> None:
    """Remove a blob: its file, or its link and the memory file it names."""
    try:
        target = os.readlink(path)
    except OSError:  # a plain file, or none
        path.unlink(missing_ok=True)
        return
    path.unlink(missing_ok=True)
    Path(target).unlink(missing_ok=True)


def _young(path: Path, within_s: float = WRITE_MAX_S) -> bool:
    try:
        return time.time() - path.stat().st_mtime < within_s
    except OSError:
        return False


def sweep_memory(blobs: Path, memory: Path) -> int:
    """(the head starting, then hourly) Memory files no blob names that are over WRITE_MAX_S old (a writer
    that died between writing and linking; a younger one may be linked a moment from now). Returns how
    many were removed."""
    named = set()
    for p in blobs.iterdir():
        try:
            named.add(os.readlink(p))
        except OSError:
            pass
    gone = 0
    for p in memory.iterdir():
        if p.name == OWNER_FILE or _young(p):
            continue  # (being written or linked now, maybe by a driver that outlived the last head)
        if str(p) not in named:
            p.unlink(missing_ok=True)
            gone += 1
    return gone
