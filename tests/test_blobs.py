"""Where the head keeps large values (runtime/blobs.py, core/shm.py): in memory on the machine's tmpfs while
there is room, named in its blobs folder; on disk otherwise. Real files, a real tmpfs (a small one mounted
for the test where that needs root)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from core import shm
from runtime import blobs
from runtime.store import Store


def _write(data: bytes):
    return lambda f: f.write(data)


def test_a_value_goes_to_memory_named_by_a_link_and_goes_with_it(tmp_path):
    store = Store(tmp_path / "state")
    assert store.memory is not None and store.memory.is_relative_to(shm.MEMORY_ROOT)
    final = store.result_path("o-1")
    assert blobs.write_blob(final, store.memory, _write(b"x" * 5000)) == 5000
    target = os.readlink(final)
    assert final.read_bytes() == b"x" * 5000 and target.startswith(str(store.memory))
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    store.write([("o-1", "object", "put", {}, 0, b"", time.time(), "finished", 0, "", [], 0.0)], [], [])
    store.write([], [], [("o-1", "finished", 0, "", time.time() - 2 * 86400, 0, "", b"", b"", 5000, True)])
    assert store.sweep(time.time()) == 1  # retention over: the link and the memory it names go
    assert not os.path.lexists(final) and not os.path.exists(target)
    store.close()
    blobs.forget_memory(store.blobs)
    assert not store.memory.exists()


def test_a_local_nodes_memory_folder_goes_with_the_node(tmp_path):
    """The local provider removes a node with its folder: the memory folder of a store under it goes too,
    another's stays."""
    gone, kept = Store(tmp_path / "node-a" / "state"), Store(tmp_path / "node-b" / "state")
    blobs.write_blob(gone.result_path("o-2"), gone.memory, _write(b"y"))
    shm.forget_memory_under(tmp_path / "node-a")
    assert not gone.memory.exists() and kept.memory.exists()
    for store in (gone, kept):
        store.close()
    blobs.forget_memory(kept.blobs)


def test_a_memory_folder_no_head_renewed_for_a_day_is_removed_by_the_next_head(tmp_path):
    """A store whose head is gone for good without `stop`: its folder is removed once a day unrenewed, not
    because its path is missing here (a head in another mount namespace, a twin or a container, has a
    path this process does not see)."""
    elsewhere = shm.memory_dir(tmp_path / "seen-only-by-another-namespace" / "blobs")
    elsewhere.mkdir(mode=0o700)
    (elsewhere / shm.OWNER_FILE).write_text("/root/.launch-runtime/nodes/a-twin/head-state/blobs")
    stale = Store(tmp_path / "stale")
    day_ago = time.time() - shm.STALE_S - 60
    os.utime(stale.memory / shm.OWNER_FILE, (day_ago, day_ago))
    stale.close()
    fresh = Store(tmp_path / "fresh")
    assert not stale.memory.exists() and elsewhere.exists() and fresh.memory.exists()
    fresh.tend_memory(time.time())  # a running head renews its own (each sweep tick)
    assert time.time() - (fresh.memory / shm.OWNER_FILE).stat().st_mtime < 60
    fresh.close()
    for folder in (elsewhere, fresh.memory):
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_what_a_writer_that_died_before_linking_left_goes_with_the_hourly_sweep(tmp_path):
    """A memory file no blob names is removed once it is over an hour old (a younger one may be linked a
    moment from now, by a driver writing while the head starts)."""
    store = Store(tmp_path / "state")
    (store.memory / "res.o-3").write_bytes(b"z")  # written, never linked
    (store.memory / "res.o-5").write_bytes(b"z")  # just written: its link is coming
    old = time.time() - blobs.WRITE_MAX_S - 60
    os.utime(store.memory / "res.o-3", (old, old))
    blobs.write_blob(store.result_path("o-4"), store.memory, _write(b"w"))
    os.utime(store.memory / "res.o-4", (old, old))  # (linked: kept however old)
    store.tend_memory(time.time())
    assert sorted(p.name for p in store.memory.iterdir()) == [shm.OWNER_FILE, "res.o-4", "res.o-5"]
    assert store.result_path("o-4").read_bytes() == b"w"
    store.close()
    blobs.forget_memory(store.blobs)


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "shm"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_value_larger_than_the_room_in_memory_is_written_on_disk(tmp_path, small_tmpfs):
    (tmp_path / "blobs").mkdir()
    final = tmp_path / "blobs" / "res.o-5"
    data = os.urandom(3 << 20)  # the tmpfs fills as it is written: written again, on disk
    assert blobs.write_blob(final, small_tmpfs, _write(data)) == len(data)
    assert not final.is_symlink() and final.read_bytes() == data
    assert list(small_tmpfs.iterdir()) == []  # the part written in memory is gone
    (small_tmpfs / "filler").write_bytes(b"f" * (600 << 10))  # over MEMORY_SHARE: straight to disk
    assert blobs.write_blob(final.with_name("res.o-6"), small_tmpfs, _write(b"v")) == 1
    assert not final.with_name("res.o-6").is_symlink()


def test_an_upload_no_submit_claimed_goes_after_an_hour(tmp_path):
    """A client that died between uploading a value and submitting it: the head drops the upload (and the
    memory it holds) once it is an hour old; a claimed one, and a fresh one, stay."""
    from runtime.store import UNCLAIMED_S

    store = Store(tmp_path / "state")
    for item_id in ("o-old", "o-claimed", "o-new"):
        blobs.write_blob(store.arg_path(item_id), store.memory, _write(b"v" * 10))
    store.write([("o-claimed", "task", "f", {}, 0, b"", time.time(), "queued", 0, "", [], 0.0)], [], [])
    old = time.time() - UNCLAIMED_S - 60
    for item_id in ("o-old", "o-claimed"):
        os.utime(store.arg_path(item_id), (old, old), follow_symlinks=False)
    target = os.readlink(store.arg_path("o-old"))
    found = store.unclaimed_uploads(time.time())
    assert sorted(p.name for p in found) == ["arg.o-claimed", "arg.o-old"]
    assert store.drop_unclaimed(found) == 1
    assert not os.path.lexists(store.arg_path("o-old")) and not os.path.exists(target)
    assert store.arg_path("o-claimed").read_bytes() == store.arg_path("o-new").read_bytes() == b"v" * 10
    store.close()
    blobs.forget_memory(store.blobs)


def test_a_folder_another_user_put_in_the_memory_folders_place_is_not_used(tmp_path):
    """/dev/shm is everyone's: a link (or a folder) made where this store's memory folder goes, pointing
    at a folder of this user's, is not taken for it: values stay on disk."""
    blobs_path = tmp_path / "state" / "blobs"
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    shm.memory_dir(blobs_path).symlink_to(decoy)
    try:
        store = Store(tmp_path / "state")
        assert store.memory is None and blobs.usable_memory_dir(store.blobs) is None
        assert list(decoy.iterdir()) == []
        store.close()
    finally:
        shm.memory_dir(blobs_path).unlink()


def test_a_value_that_cannot_be_pickled_leaves_no_part_of_it(tmp_path):
    """The pickler fails half way (a lock at the end of a large list): its error is the caller's, and
    what was written of it is gone, in memory and on disk."""
    import threading

    from runtime import pickling

    store = Store(tmp_path / "state")
    value = [os.urandom(1 << 20), threading.Lock()]
    for memory in (store.memory, None):
        with pytest.raises(TypeError, match="lock"):
            blobs.write_blob(store.arg_path("o-7"), memory, lambda f: pickling.dump(value, f, 1 << 30, str))
        assert [p.name for p in store.memory.iterdir()] == [shm.OWNER_FILE]
        assert [p.name for p in store.blobs.iterdir()] == []
    store.close()
    blobs.forget_memory(store.blobs)


def test_a_large_value_goes_into_the_spare_made_ready_before_it_and_the_next_is_made(tmp_path, monkeypatch):
    """A process's large values (runtime/spare.py): the first is written as it comes and leaves a spare of its
    size behind (allocated, mapped); the next is copied into it, whether it is smaller or larger (the rest
    written past its end); the spare goes when the process is done with it."""
    from runtime import spare as spares
    from tests.infra import wait_for

    monkeypatch.setattr(spares, "SPARE_MIN_BYTES", 1 << 20)
    store = Store(tmp_path / "state")
    spare = spares.Spare(store.memory)
    sizes = [3 << 20, 2 << 20, 5 << 20]
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        had = spare.ready is not None
        assert blobs.write_blob(store.result_path(f"o-{i}"), store.memory, _write(data), spare) == size
        assert store.result_path(f"o-{i}").read_bytes() == data and had == (i > 0)
        wait_for(lambda: spare.ready is not None, timeout=10, every=0.01, what="the next spare made ready")
        assert spare.ready[0].stat().st_size == size
    spare_file = spare.ready[0]
    spare.close()
    assert not spare_file.exists() and len([p for p in store.memory.iterdir() if p.name.startswith(".spare")]) == 0
    store.close()
    blobs.forget_memory(store.blobs)


def test_a_freed_values_file_takes_the_next_value_once_the_head_has_it_and_no_one_reads_it(tmp_path, monkeypatch):
    """The last large value a process wrote through a spare keeps its mapping: once its ref is gone (freed) and
    the head took its submission (sent), the next value is written over its file, and not before either. The
    head's own drop of the value afterwards finds no file; a file the head dropped first is not reused."""
    from runtime import spare as spares
    from tests.infra import wait_for

    monkeypatch.setattr(spares, "SPARE_MIN_BYTES", 1 << 20)
    store = Store(tmp_path / "state")
    spare = spares.Spare(store.memory)
    values: dict[str, bytes] = {}

    def put(name: str, size: int) -> os.stat_result:
        wait_for(lambda: spare.ready is not None or spare.kept is not None or not values, timeout=10, every=0.01,
                 what="a spare made ready")
        values[name] = os.urandom(size)
        blobs.write_blob(store.arg_path(name), store.memory, _write(values[name]), spare, name)
        return os.stat(store.arg_path(name))

    def intact() -> None:
        for name, data in values.items():
            if os.path.exists(store.arg_path(name)):
                assert store.arg_path(name).read_bytes() == data, name

    put("o-a", 3 << 20)  # written as it comes: nothing to reuse, a spare made for the next
    b = put("o-b", 3 << 20)  # into that spare: kept
    spare.freed("o-b")  # no one reads it here, but the head may not have it yet
    c = put("o-c", 3 << 20)
    assert c.st_ino != b.st_ino
    intact()
    spare.sent(["o-c"])  # the head has it, but its ref lives
    d = put("o-d", 2 << 20)
    assert d.st_ino != c.st_ino
    intact()
    spare.sent(["o-x", "o-d"])
    spare.freed("o-d")
    e = put("o-e", 4 << 20)  # larger than the file it reuses: the rest written past its mapping's end
    assert e.st_ino == d.st_ino and spare.recycled
    blobs.drop_blob(store.arg_path("o-d"))  # the head frees the dropped value: its link goes, E stays
    del values["o-d"]
    intact()
    spare.sent(["o-e"])
    spare.freed("o-e")
    f = put("o-f", 1 << 20)  # smaller: its file cut to it
    assert f.st_ino == e.st_ino and f.st_size == 1 << 20
    blobs.drop_blob(store.arg_path("o-e"))
    del values["o-e"]
    spare.sent(["o-f"])
    spare.freed("o-f")
    g = put("o-g", 3 << 20)  # the file cut before is whole again for a larger value
    assert g.st_ino == f.st_ino
    blobs.drop_blob(store.arg_path("o-f"))
    del values["o-f"]
    intact()
    spare.sent(["o-g"])
    spare.freed("o-g")
    blobs.drop_blob(store.arg_path("o-g"))  # the head dropped it first: not reused
    del values["o-g"]
    h = put("o-h", 3 << 20)
    assert h.st_ino != g.st_ino and not spare.recycled
    intact()
    spare.close()
    named = {os.readlink(p) for p in store.blobs.iterdir()}
    left = {str(p) for p in store.memory.iterdir() if p.name != shm.OWNER_FILE}
    assert left == named  # each memory file is a value's; no spare and no reused file left behind
    store.close()
    blobs.forget_memory(store.blobs)
