"""Copies of large values (BULK_BYTES and more) made by several threads: how a put writes a value into its
memory file, and how a get reads a file into the value's object.

Measured on this project's 2-core machine (a VM), 100 MB (bench/ray_api_perf.py's largest value):
- a copy into a tmpfs file already mapped: 16.6 ms by one thread, 10.3 ms by two (Ray's store copies large
  objects with several threads too);
- a read of a tmpfs file into a fresh bytes object, as an unpickler does for a large value: 55-60 ms by one
  thread, most of it the kernel faulting in 25,600 fresh 4 KiB pages of the object; 32-34 ms by two (each
  faults in its half).
- Faulting the object's pages in first, a part per thread in one call each (MADV_POPULATE_WRITE, Linux 5.14
  and later; elsewhere a no-op), then reading into them: 25 ms instead of 30.
- Huge pages for the object (MADV_HUGEPAGE) were tried and are not used: 18-20 ms by two threads when they
  came quickly, but runs of 140-160 ms came and went (fresh guest memory the VM's host had to fault in), and
  the kernel's compaction can stall them elsewhere.
Smaller values are copied as they come: a thread costs more than it saves there."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable

BULK_BYTES = 16 << 20
PART_MIN_BYTES = 8 << 20  # each thread copies at least this much
MAX_THREADS = 4  # (measured: 4 threads no faster than 2 on 2 cores; memory bandwidth bounds more)


def _threads() -> int:
    try:
        return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(MAX_THREADS, os.cpu_count() or 1))


_PAGE = 4096
_MADV_POPULATE_WRITE = 23
_madvise: list = []


def _populate(address: int, size: int) -> None:
    """Fault in the whole pages of [address, address + size) for writing, in one call (best effort)."""
    if not _madvise:
        try:
            libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
            if libc is not None:
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _madvise.append(libc.madvise if libc is not None else None)
        except (OSError, AttributeError):
            _madvise.append(None)
    start, end = (address + _PAGE - 1) & ~(_PAGE - 1), (address + size) & ~(_PAGE - 1)
    if _madvise[0] is not None and end > start:
        _madvise[0](start, end - start, _MADV_POPULATE_WRITE)  # (EINVAL on older kernels: faulted as written)


def in_parts(size: int, copy: Callable[[int, int], int]) -> int:
    """Run copy(start, end) over [0, size) split among threads (the first part on this one); returns how much
    was copied from the start on without a gap (less than size when a part came up short: a file's end)."""
    parts = max(1, min(_threads(), size // PART_MIN_BYTES))
    bounds = [size * i // parts for i in range(parts + 1)]
    done = [0] * parts
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            done[i] = copy(bounds[i], bounds[i + 1])
        except BaseException as e:  # (re-raised on the calling thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), name="launch-copy", daemon=True) for i in range(1, parts)]
    for t in threads:
        t.start()
    run(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    total = 0
    for i in range(parts):
        total += done[i]
        if done[i] < bounds[i + 1] - bounds[i]:
            break
    return total


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def copy_from(destination: int, data) -> bool:
    """Copy the bytes of `data` (any contiguous buffer: bytes, bytearray, a memoryview) to the address
    `destination`, by threads; False (nothing copied) if `data` is not one contiguous buffer."""
    view = _PyBuffer()
    try:
        _get_buffer(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes, or an error
    except (BufferError, TypeError, ValueError):
        return False
    try:
        source = view.buf

        def part(start: int, end: int) -> int:
            ctypes.memmove(destination + start, source + start, end - start)  # (no GIL held meanwhile)
            return end - start

        in_parts(view.len, part)
        return True
    finally:
        _release_buffer(ctypes.byref(view))


class BulkReader:
    """A readable stream (a file, or a stream of chunks) whose large `readinto`s from a file (an unpickler
    filling a large value's bytes) are made by threads at once, each part's pages faulted in first."""

    def __init__(self, stream):
        self.stream = stream
        try:
            self.fd = stream.fileno() if hasattr(os, "preadv") else None
        except (AttributeError, OSError, ValueError):
            self.fd = None  # (io.UnsupportedOperation is an OSError and a ValueError)

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self.stream.readline(size)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) < BULK_BYTES or view.readonly or self.fd is None:
            return self.stream.readinto(view)
        at = self.stream.tell()  # (past what the stream has buffered and not given yet)
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))

        def part(start: int, end: int) -> int:
            _populate(address + start, end - start)
            done = start
            while done < end:
                n = os.preadv(self.fd, [view[done:end]], at + done)
                if n == 0:
                    break
                done += n
            return done - start

        n = in_parts(len(view), part)
        self.stream.seek(at + n)
        return n

    def __getattr__(self, name: str):  # peek (where the stream has it), close...
        return getattr(self.stream, name)

    def __enter__(self) -> BulkReader:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()
