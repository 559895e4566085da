"""Files made ready ahead for the large values a process puts (runtime/blobs.py).

Writing 100 MB into a fresh tmpfs file costs more in the kernel finding, zeroing and mapping pages than in
the copy (measured here: 35 ms by write(); 10 ms copied by two threads into pages allocated and mapped
before, runtime/bulk_copy.py). Ray's object store is warm the same way (an arena mapped once). Two sources:
- The last value's own file, once it is free: the common loop (put, get, drop; Ray's benchmark) writes each
  value over the one before, its pages and mapping warm, at no cost but the copy. Free means read by no one:
  its ref was collected and never passed on (pickled), and the head took its submission (before that, the
  head would look for an upload that is gone). The head's drop of the value, when its release comes, finds
  no file there: as it should.
- Otherwise a spare: after a process writes a large value into the memory folder, a thread makes the next
  file ready, its pages allocated (fallocate) and mapped (MAP_POPULATE: 35 ms of a thread for 100 MB, off
  the put's path), while the process goes on.
The next value is copied in; what does not fit goes on at the end of the file with plain writes. One spare
and one kept value per process, in the memory folder, where the store's share of the tmpfs counts them; the
spare is removed when the process exits (one a killed process leaves is swept after an hour, as any unnamed
memory file). The kept value's mapping holds its pages until the next large value, or the process's exit,
even if the head drops the value first.
"""

from __future__ import annotations

import atexit
import ctypes
import mmap
import os
import threading
from pathlib import Path

from runtime.bulk_copy import BULK_BYTES, copy_from

SPARE_MIN_BYTES = 16 << 20  # smaller values are written as they come (the kernel's work is small then)


class _MappedWriter:
    """A file-like writer over a spare: copies into its mapping while they fit (a large piece by threads,
    runtime/bulk_copy.py), then writes past its end."""

    def __init__(self, fd: int, mm: mmap.mmap):
        self.fd, self.mm, self.pos = fd, mm, 0
        self.anchor = ctypes.c_char.from_buffer(mm)  # (the mapping's address; released before it is closed)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        room = max(0, len(self.mm) - self.pos)
        if room:
            k = min(room, n)
            if k < BULK_BYTES or not copy_from(ctypes.addressof(self.anchor) + self.pos, view[:k]):
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

    def release(self) -> None:
        self.anchor = None


Mapped = tuple  # (its path now, an open descriptor, its mapping)


class _Kept:
    """The last value written through a spare, its mapping still open. Its file may be written over once no
    one reads the value (its ref is gone, never passed on) and the head has its submission (the head would
    otherwise look for an upload that is no longer there)."""

    __slots__ = ("path", "fd", "mm", "item_id", "freed", "sent")

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, item_id: str):
        self.path, self.fd, self.mm, self.item_id = path, fd, mm, item_id
        self.freed = self.sent = False  # (set without the lock: each only ever goes from False to True)


class Spare:
    """This process's spare in one memory folder, and the last value it wrote through one."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.ready: Mapped | None = None
        self.making = False
        self.closed = False
        self.kept: _Kept | None = None
        self.recycled = False  # the last take gave a freed value's file
        self.count = 0
        atexit.register(self.close)

    def take(self) -> Mapped | None:
        """A file ready to write into, now the caller's: the last value's, once free (its pages and mapping
        warm: no cost at all), else the one made ahead; None if there is neither."""
        with self.lock:
            kept = self.kept
            self.recycled = False
            if kept is not None and kept.freed and kept.sent:
                self.kept = None
                reused = self._reuse(kept)
                if reused is not None:
                    self.recycled = True
                    return reused
            ready, self.ready = self.ready, None
            return ready

    def _reuse(self, kept: _Kept) -> Mapped | None:
        self.count += 1
        spare = self.folder / f".spare-{os.getpid()}-r{self.count}"
        try:
            os.replace(kept.path, spare)  # (the head's drop of the value, now or later, finds no file: as it should)
            os.utime(kept.fd)  # (young: the head's sweep of unnamed memory files leaves it)
            if os.fstat(kept.fd).st_size < len(kept.mm):  # (cut to its value's size when written)
                os.posix_fallocate(kept.fd, 0, len(kept.mm))
            return spare, kept.fd, kept.mm
        except OSError:  # (dropped already: the head freed it first)
            _close_later(kept.fd, kept.mm)
            return None

    def freed(self, item_id: str) -> None:
        """(any thread, from a finalizer: takes no lock) The value `item_id` will be read by no one here."""
        kept = self.kept
        if kept is not None and kept.item_id == item_id:
            kept.freed = True

    def sent(self, item_ids: list[str]) -> None:
        """The head took these items' submissions."""
        kept = self.kept
        if kept is not None and not kept.sent and kept.item_id in item_ids:
            kept.sent = True

    def wrote(self, item_id: str, path: Path, used: Mapped | None, size: int, room) -> None:
        """The value `item_id` of `size` was written to `path`, into `used` (a file take gave) or not (None)."""
        with self.lock:
            old, self.kept = self.kept, (_Kept(path, used[1], used[2], item_id) if used is not None else None)
            recycled = self.recycled
        if old is not None:
            _close_later(old.fd, old.mm)
        if not recycled:  # (values are kept, not freed: a file made ahead for the next)
            self.refill(size, room)

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
            kept, self.kept = self.kept, None
        if ready is not None:
            discard(ready)
        if kept is not None:  # (its file is the value's: it stays)
            kept.mm.close()
            os.close(kept.fd)


def discard(spare: Mapped) -> None:
    path, fd, mm = spare
    mm.close()
    os.close(fd)
    path.unlink(missing_ok=True)


def write_into(spare: Mapped, tmp: Path, write) -> int:
    """Write with `write(file)` into the spare, renamed to `tmp` first (it is the writer's from now on);
    the file cut to what was written. Returns its size. Its mapping stays open (Spare.wrote keeps it)."""
    path, fd, mm = spare
    os.replace(path, tmp)
    writer = _MappedWriter(fd, mm)
    try:
        write(writer)
    finally:
        writer.release()
    os.ftruncate(fd, writer.pos)
    return writer.pos


def _close_later(fd: int, mm: mmap.mmap) -> None:
    """Unmapping 100 MB takes 7-8 ms, which the put need not wait for: a thread of its own does it."""
    threading.Thread(target=_close, args=(fd, mm), name="launch-unmap", daemon=True).start()


def _close(fd: int, mm: mmap.mmap) -> None:
    mm.close()
    os.close(fd)
