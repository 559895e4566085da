"""Large copies by several threads (runtime/bulk_copy.py): how a put copies a value into its memory file and
how a get reads one back. Real files; no fakes."""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import threading

import pytest

from runtime import bulk_copy


def test_parts_cover_the_range_once_each_and_a_short_one_ends_the_count(monkeypatch):
    monkeypatch.setattr(bulk_copy, "_threads", lambda: 3)
    monkeypatch.setattr(bulk_copy, "PART_MIN_BYTES", 10)
    seen, lock = [], threading.Lock()

    def whole(start: int, end: int) -> int:
        with lock:
            seen.append((start, end, threading.get_ident()))
        return end - start

    assert bulk_copy.in_parts(100, whole) == 100
    spans = sorted((s, e) for s, e, _ in seen)
    assert spans[0][0] == 0 and spans[-1][1] == 100 and len(spans) == 3
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    me = threading.get_ident()  # the first part on the caller's thread, the others on threads of their own
    assert [t == me for _, _, t in sorted(seen)] == [True, False, False]

    # the middle part comes up short (a file's end): only what precedes the gap counts
    assert bulk_copy.in_parts(100, lambda s, e: (e - s) if s == 0 else 0) == 33
    assert bulk_copy.in_parts(5, whole) == 5  # too small to split: one part


def test_an_error_in_any_part_is_raised_to_the_caller(monkeypatch):
    monkeypatch.setattr(bulk_copy, "_threads", lambda: 2)
    monkeypatch.setattr(bulk_copy, "PART_MIN_BYTES", 1)

    def fails_late(start: int, end: int) -> int:
        if start > 0:
            raise OSError(28, "No space left on device")
        return end - start

    with pytest.raises(OSError, match="No space"):
        bulk_copy.in_parts(10, fails_late)


@pytest.mark.parametrize("make", [bytes, bytearray, lambda b: memoryview(b)[3:]])
def test_copy_from_any_contiguous_buffer(make, monkeypatch):
    monkeypatch.setattr(bulk_copy, "PART_MIN_BYTES", 1 << 10)
    data = make(os.urandom(1 << 16))
    out = (ctypes.c_char * len(data))()
    assert bulk_copy.copy_from(ctypes.addressof(out), data)
    assert bytes(out) == bytes(data)


def test_copy_from_a_strided_buffer_copies_nothing_and_says_so():
    data = memoryview(os.urandom(64))[::2]
    out = (ctypes.c_char * 32)()
    assert not bulk_copy.copy_from(ctypes.addressof(out), data)
    assert bytes(out) == bytes(32)


def _pickle_file(tmp_path, value):
    path = tmp_path / "value.pkl"
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=5)
    return path


def test_a_large_pickle_read_through_a_bulk_reader_is_the_value(tmp_path, monkeypatch):
    """Large values read by threads at their offsets, what comes after each one read from the right place;
    from a file and from a stream that is not one (read as it comes)."""
    monkeypatch.setattr(bulk_copy, "BULK_BYTES", 1 << 20)
    monkeypatch.setattr(bulk_copy, "PART_MIN_BYTES", 1 << 18)
    value = (os.urandom(3 << 20), {"small": [1, 2, 3]}, bytearray(os.urandom((2 << 20) + 7)), "end")
    path = _pickle_file(tmp_path, value)
    with bulk_copy.BulkReader(open(path, "rb")) as reader:
        assert reader.fd is not None
        assert pickle.load(reader) == value
    stream = bulk_copy.BulkReader(io.BytesIO(path.read_bytes()))
    assert stream.fd is None and pickle.load(stream) == value


def test_a_truncated_file_fails_to_load_rather_than_give_a_wrong_value(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk_copy, "BULK_BYTES", 1 << 20)
    monkeypatch.setattr(bulk_copy, "PART_MIN_BYTES", 1 << 18)
    path = _pickle_file(tmp_path, os.urandom(4 << 20))
    os.truncate(path, path.stat().st_size - (1 << 20))
    with bulk_copy.BulkReader(open(path, "rb")) as reader, pytest.raises((pickle.UnpicklingError, EOFError)):
        pickle.load(reader)
