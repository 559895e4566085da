"""A head restart loses nothing (a local cluster, as a user runs it): the head's store keeps queued and
running work, job records, logs and results not yet fetched; the node supervisor restarts a head that was
killed; agents register again saying what they still run, and the head adopts it; a client's `get` that
was waiting when the head died completes."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

import runtime
from tests.infra import RunningCluster, cli, local_cluster, node_dir, wait_for

MARKS_ENV = "RESTART_TEST_MARKS"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restart")
    data = local_cluster("rs", runtime={"heartbeat_interval_s": 0.2, "node_timeout_s": 3},
                         autoscaler={"enabled": False})
    c = RunningCluster(tmp, data)
    yield {"path": c.path, "home": c.home, "head": c.head_home}
    c.down()


def _head_pid(cluster) -> int:
    return int((node_dir(cluster["head"]) / "pids" / "head.pid").read_text())


@runtime.remote(num_cpus=1, max_retries=0)
def square_once(i: int, marks: str, sleep_s: float) -> int:
    """Leaves a mark per run: a task run twice leaves two."""
    import time
    import uuid

    time.sleep(sleep_s)
    with open(os.path.join(marks, f"{i}.{uuid.uuid4().hex}"), "w"):
        pass
    return i * i


@runtime.remote(num_cpus=0)
def size_of(data: bytes) -> tuple[int, bytes]:
    return len(data), data[-8:]


def test_killing_the_head_loses_no_work_result_or_log(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    fetched_later = square_once.remote(100, str(marks), 0.0)
    runtime.wait([fetched_later], timeout=30)  # done, its result not fetched yet
    value = os.urandom(3 << 20)
    put_before = runtime.put(value)  # kept in the head machine's memory (runtime/blobs.py)
    script = tmp_path / "count.sh"
    script.write_text("for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.5; done\n")
    r = cli("submit", str(cluster["path"]), str(script), "--no-follow", home=cluster["home"])
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    # max_retries=0: a task the restart requeued instead of adopting would fail, not run again quietly
    refs = [square_once.remote(i, str(marks), 1.5) for i in range(8)]  # 2 run (the job has the head's CPU)
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(values=runtime.get(refs, timeout=120)))
    waiter.start()
    wait_for(lambda: "line 2" in cli("job", "logs", str(cluster["path"]), job, home=cluster["home"]).stdout,
             timeout=30, what="the job to log")

    old = _head_pid(cluster)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _head_pid(cluster) != old, timeout=20, what="the supervisor to restart the head")

    waiter.join(timeout=120)
    assert got.get("values") == [i * i for i in range(8)]  # the get that was waiting completed
    runs = sorted(p.name.split(".")[0] for p in marks.iterdir())
    assert runs == sorted([str(i) for i in range(8)] + ["100"])  # each ran exactly once
    assert runtime.get(fetched_later, timeout=10) == 10000  # a result from before the restart
    assert runtime.get(size_of.remote(put_before), timeout=30) == (len(value), value[-8:])  # and a value
    r = cli("job", "logs", str(cluster["path"]), job, home=cluster["home"])  # follows to the end
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("line")] == [f"line {i}" for i in range(1, 9)]
    listed = json.loads(cli("job", "list", str(cluster["path"]), "--json", home=cluster["home"]).stdout)
    assert [j["state"] for j in listed if j["id"] == job] == ["finished"]


@runtime.remote
class Tally:
    def __init__(self):
        self.seen: list[int] = []
        self.pid = os.getpid()

    def add(self, i: int, sleep_s: float = 0.0):
        import time

        time.sleep(sleep_s)
        self.seen.append(i)
        return list(self.seen), self.pid


def test_an_actor_lives_through_a_head_restart_with_its_calls_in_order(cluster):
    a = Tally.options(name="tally").remote()
    _, pid = runtime.get(a.add.remote(0), timeout=30)
    slow = [a.add.remote(i, 0.3) for i in range(1, 6)]  # given to the actor, most still in its line
    old = _head_pid(cluster)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _head_pid(cluster) != old, timeout=20, what="the supervisor to restart the head")
    later = [a.add.remote(i) for i in range(6, 9)]
    values = runtime.get(slow + later, timeout=120)
    seen, pid_after = values[-1]
    assert seen == list(range(9)) and pid_after == pid  # the same instance, every call once, in order
    assert runtime.get_actor("tally") == a  # its name survived the restart
    runtime.kill(a)


def test_store_commits_never_checkpoint_the_log_the_heads_clock_does(tmp_path):
    """A checkpoint (the log copied into the database, with an fsync) falling on a commit would hold a
    reply up for milliseconds: commits only append to the log, and Store.checkpoint copies it all."""
    from runtime.store import Store

    store = Store(tmp_path)
    spec = b"s" * 2000
    for i in range(1500):  # SQLite's own checkpoint would run at 1,000 pages
        store.write([(f"t{i}", "task", "f", {"CPU": 1}, 0, spec, 1.0, "queued", 0, "", [], 0.0)], [], [])
    logged, copied = store.checkpoint()
    assert logged > 1000 and copied == logged
    assert store.known([f"t{i}" for i in range(1500)]) == {f"t{i}" for i in range(1500)}
    store.close()


def test_store_log_starts_over_under_constant_writes(tmp_path, monkeypatch):
    """Under constant load a commit always lands while the clock's checkpoint runs, so that checkpoint
    never copies the whole log and the log never starts over: it grew by 7 MB/s at 500 round trips a
    second. The checkpoint holding the writers' lock for what came meanwhile lets the next commit start
    it over: the log stays a fraction of what was written."""
    import runtime.store as store_mod

    monkeypatch.setattr(store_mod, "LOG_RESTART_FRAMES", 200)
    store = store_mod.Store(tmp_path)
    lock, written, stop = threading.Lock(), threading.Condition(), threading.Event()
    count = [0]
    spec = b"s" * 3000  # a page of the log or more per commit

    def writer():
        while not stop.is_set():
            with lock:
                store.write([(f"t{count[0]}", "task", "f", {"CPU": 1}, 0, spec, 1.0, "queued", 0, "", [], 0.0)],
                            [], [])
            with written:
                count[0] += 1
                written.notify_all()

    class Writers:
        """The writers' lock, noting how many commits were done when the checkpoint took it."""
        def __enter__(self):
            lock.acquire()
            self.at = count[0]

        def __exit__(self, *exc):
            lock.release()

    writers = Writers()
    t = threading.Thread(target=writer)
    t.start()
    try:
        checkpoints = []  # (commits before it, frames in the log it found, commits when it held the lock)
        for k in range(1, 21):
            with written:
                assert written.wait_for(lambda: count[0] >= 400 * k, timeout=60)
            before = count[0]
            writers.at = None
            logged = store.checkpoint(writers=writers)[0]
            checkpoints.append((before, logged, writers.at))
    finally:
        stop.set()
        t.join()
    wal = tmp_path / "head.db-wal"
    assert count[0] >= 8000
    # A checkpoint holding the lock copies the whole log, so the first commit after it starts the log over:
    # the log a later checkpoint finds holds only what came since (plus a commit or two the count had not
    # yet seen). A log that never started over would hold every commit so far, and growing.
    per_commit = checkpoints[0][1] / checkpoints[0][0]  # the first checkpoint's log holds every commit
    for k, (before, logged, at) in enumerate(checkpoints):
        restarts = [i for _, _, i in checkpoints[:k] if i is not None and before >= i + 2]
        if at is not None and restarts:
            assert logged <= per_commit * (at + 2 - restarts[-1]) * 1.5, (per_commit, checkpoints)
    assert wal.stat().st_size < count[0] * 4096, (count[0], wal.stat().st_size)
    assert len(store.known([f"t{i}" for i in range(count[0])])) == count[0]
    store.close()


def test_the_store_gives_back_to_the_disk_what_retention_removes(tmp_path):
    """200k items once filled 144 MiB of database and 75 MiB of log that never shrank: the pages
    retention frees go back to the disk, and a log that started over keeps 4 MiB at most."""
    import sqlite3

    from runtime.store import Store

    store = Store(tmp_path)
    value = b"v" * 4000
    for batch in range(20):
        ids = [f"t{batch}-{i}" for i in range(500)]
        store.write([(i, "task", "f", {"CPU": 1}, 0, b"s", 1.0, "queued", 0, "", [], 0.0) for i in ids], [], [])
        store.write([], [], [(i, "finished", 1, "n", 2.0, 0, "", value, None, len(value), False) for i in ids])
        store.checkpoint()
    db, log = tmp_path / "head.db", tmp_path / "head.db-wal"
    full = db.stat().st_size
    assert full > 30 << 20
    assert store.sweep(now=10**10) == 10_000  # every retention long over
    store.checkpoint()
    store.write([("x", "task", "f", {}, 0, b"s", 1.0, "queued", 0, "", [], 0.0)], [], [])  # the log starts over
    store.checkpoint()
    assert db.stat().st_size < full / 10 and log.stat().st_size <= 4 << 20
    store.close()
    # a store made before this (no auto_vacuum) is rebuilt once when opened
    old = tmp_path / "old"
    old.mkdir()
    con = sqlite3.connect(old / "head.db")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    Store(old).close()
    assert sqlite3.connect(old / "head.db").execute("PRAGMA auto_vacuum").fetchone()[0] == 2
