"""A memory file made ready ahead for the next large value a process puts (runtime/blobs.py).

Writing 100 MB into a fresh tmpfs file costs more in the kernel finding, zeroing and mapping pages than in
the copy (measured here: 35 ms by write(); 16 ms copied into pages allocated and mapped before). Ray's object
store is warm the same way (an arena mapped once). After a process writes a large value into the memory
folder, a thread makes the next one ready: a file of that size, its pages allocated (fallocate) and mapped
(MAP_POPULATE), while the process goes on (it reads the value back, runs the next task...). The next value
is copied into it; what does not fit goes on at the end of the file with plain writes. One spare per process,
in the memory folder, where the store's share of the tmpfs counts it; removed when the process exits (one a
killed process leaves is swept after an hour, as any unnamed memory file).
"""

from __future__ import annotations

import atexit
import mmap
import os
import threading
from pathlib import Path

SPARE_MIN_BYTES = 16 << 20  # smaller values are written as they come (the kernel's work is small then)


class _MappedWriter:
    """A file-like writer over a spare: copies into its mapping while they fit, then writes past its end."""

    def __init__(self, fd: int, mm: mmap.mmap):
        self.fd, self.mm, self.pos = fd, mm, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        room = max(0, len(self.mm) - self.pos)
        if room:
            k = min(room, n)
            self.mm[self.pos:self.pos + k] = view[:k]
        if n > room:
            done = room
            while done < n:
                done += os.pwrite(self.fd, view[done:], self.pos + done)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass


class Spare:
    """This process's spare in one memory folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.ready: tuple[Path, int, mmap.mmap] | None = None
        self.making = False
        self.closed = False
        atexit.register(self.close)

    def take(self) -> tuple[Path, int, mmap.mmap] | None:
        """The ready spare (its path, an open descriptor, its mapping), now the caller's; None if there is none."""
        with self.lock:
            ready, self.ready = self.ready, None
            return ready

    def refill(self, size: int, room) -> None:
        """Make one of `size` ready in the background, if none is and the folder has room (`room()`)."""
        with self.lock:
            if self.making or self.ready is not None or self.closed or size < SPARE_MIN_BYTES:
                return
            self.making = True
        threading.Thread(target=self._make, args=(size, room), name="launch-spare", daemon=True).start()

    def _make(self, size: int, room) -> None:
        made = None
        try:
            if room():
                path = self.folder / f".spare-{os.getpid()}-{threading.get_ident()}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, size)
                    mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
                    made = (path, fd, mm)
                except OSError:
                    os.close(fd)
                    path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            with self.lock:
                self.making = False
                if made is not None and not self.closed:
                    self.ready, made = made, None
        if made is not None:  # (closed meanwhile)
            discard(made)

    def close(self) -> None:
        atexit.unregister(self.close)
        with self.lock:
            self.closed = True
            ready, self.ready = self.ready, None
        if ready is not None:
            discard(ready)


def discard(spare: tuple[Path, int, mmap.mmap]) -> None:
    path, fd, mm = spare
    mm.close()
    os.close(fd)
    path.unlink(missing_ok=True)


def write_into(spare: tuple[Path, int, mmap.mmap], tmp: Path, write) -> int:
    """Write with `write(file)` into the spare, renamed to `tmp` first (it is the writer's from now on);
    the file cut to what was written. Returns its size."""
    path, fd, mm = spare
    try:
        os.replace(path, tmp)
        writer = _MappedWriter(fd, mm)
        write(writer)
        mm.close()
        os.ftruncate(fd, writer.pos)
        return writer.pos
    finally:
        mm.close()
        os.close(fd)
