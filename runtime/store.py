"""The head's durable record of work: SQLite in WAL mode on the head's disk, plus files beside it for
payloads and results too large for a message.

Every item submitted is a row from the moment the head accepts it until its retention ends: its spec
while it waits or runs (the head's memory keeps only what scheduling needs), its state as it moves,
its result once done. A head restarted after a crash reads the rows that are not done and carries on;
results not yet fetched are still here. SQLite commits survive the process being killed at any
point (WAL, synchronous=NORMAL: a commit is in the log before the call returns).

Writes go through one connection, under the head's lock. Reads (results, listings) take a connection of
their own from a pool and need no lock: WAL lets them read committed rows while a write goes on, and a
done item's row no longer changes.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runtime.blobs import WRITE_MAX_S, drop_blob, make_memory_dir, renew_memory, sweep_memory
from runtime.limits import RETAIN_FETCHED_S, RETAIN_JOBS_S, RETAIN_UNFETCHED_S

DONE = ("finished", "failed", "cancelled")

# an upload no submit claimed this long after it was written is dropped (its client died in between)
UNCLAIMED_S = WRITE_MAX_S
KEY_FILE = ".key"  # in the blobs folder: see Store.local_key

# Item ids name files on the head's disk: a client-made id is held to this before it is used.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# A log this long (in 4 KiB pages; 16 MiB) is made to start over (Store.checkpoint).
LOG_RESTART_FRAMES = 4096
# what a log that started over keeps of its file
JOURNAL_LIMIT_BYTES = 4 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  seq INTEGER PRIMARY KEY,  -- the rowid: grows with each item (submission order)
  id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  request TEXT NOT NULL,
  max_retries INTEGER NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  node_id TEXT NOT NULL DEFAULT '',
  gpu_ids TEXT NOT NULL DEFAULT '',
  spec BLOB,
  submitted_at REAL NOT NULL,
  started_at REAL NOT NULL DEFAULT 0,
  finished_at REAL NOT NULL DEFAULT 0,
  exit_code INTEGER NOT NULL DEFAULT 0,
  message TEXT NOT NULL DEFAULT '',
  value BLOB,
  error BLOB,
  value_size INTEGER NOT NULL DEFAULT 0,
  stored INTEGER NOT NULL DEFAULT 0,
  fetched_at REAL
);
-- the last id number the head gave: a restarted head goes on from it, never giving an id twice (the
-- items table cannot tell: retention removes old items)
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- values some process still holds refs to: kept past their retention until `until`
CREATE TABLE IF NOT EXISTS held (id TEXT PRIMARY KEY, until REAL NOT NULL);
"""


@dataclass
class Row:
    """An item as the store has it (a done item has left the head's memory; this is all there is)."""

    id: str
    kind: str
    name: str
    state: str
    request: dict[str, float]
    max_retries: int
    attempt: int
    node_id: str
    gpu_ids: list[str]
    spec: bytes | None
    submitted_at: float
    started_at: float
    finished_at: float
    exit_code: int
    message: str
    value: bytes | None
    error: bytes | None
    value_size: int
    stored: bool


_COLUMNS = ("id, kind, name, state, request, max_retries, attempt, node_id, gpu_ids, spec, submitted_at, "
            "started_at, finished_at, exit_code, message, value, error, value_size, stored")
_RESULT = "id, state, message, exit_code, node_id, value, error, value_size, stored"
_BRIEF = _COLUMNS.replace("spec,", "NULL,").replace("value,", "NULL,").replace("error,", "NULL,")


def _row(t: tuple) -> Row:
    (id_, kind, name, state, request, max_retries, attempt, node_id, gpu_ids, spec, submitted_at, started_at,
     finished_at, exit_code, message, value, error, value_size, stored) = t
    return Row(id_, kind, name, state, json.loads(request), max_retries, attempt, node_id,
               gpu_ids.split(",") if gpu_ids else [], spec, submitted_at, started_at, finished_at, exit_code,
               message, value, error, value_size, bool(stored))


def _chunks(ids: list[str], n: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


def arg_file(item_id: str) -> str:
    """An item's payload (its pickled function and arguments, or a put value) in the blobs folder."""
    return f"arg.{item_id}"


def result_file(item_id: str) -> str:
    return f"res.{item_id}"


def blobs_dir(state_dir: Path) -> Path:
    return state_dir / "blobs"


class Store:
    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.blobs = blobs_dir(state_dir)
        self.logs = state_dir / "logs"
        for d in (state_dir, self.blobs, self.logs):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)  # results, payloads and job output are the cluster user's only
        self.memory = make_memory_dir(self.blobs)  # (runtime/blobs.py: values kept in memory)
        self.memory_swept = 0.0  # (the head's clock) when sweep last looked for unlinked memory files
        self.path = state_dir / "head.db"
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        os.chmod(self.path, 0o600)
        # the pages retention frees are given back to the disk (Store.sweep): set before anything is
        # written; a store made before this is rebuilt once to take it
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("VACUUM")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (copying the log into the database, with an fsync) are the head's clock's to run:
        # left to SQLite, one would fall on a commit now and then and hold that reply up for milliseconds.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        # a burst's log is cut back to this once checkpointed (it would otherwise keep its largest size)
        self.db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}")
        self.db.executescript(_SCHEMA)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()

    @contextmanager
    def _read(self):
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            yield db
        finally:
            self._readers.put(db)

    @contextmanager
    def _tx(self):
        """One transaction (the connection is in autocommit mode: each statement alone would be one)."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        while not self._readers.empty():
            self._readers.get_nowait().close()

    # --- files --------------------------------------------------------------------------------------

    def local_key(self) -> str:
        """The key in blobs/.key (made once): a client on this machine that reads it there knows it shares
        the head's disk (runtime/client.py, SharedBlobs)."""
        path = self.blobs / KEY_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            key = secrets.token_hex(16)
            tmp = path.with_name(f"{KEY_FILE}.tmp-{os.getpid()}")
            tmp.write_text(key)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            return key

    def arg_path(self, item_id: str) -> Path:
        return self.blobs / arg_file(item_id)

    def result_path(self, item_id: str) -> Path:
        return self.blobs / result_file(item_id)

    def claim_upload(self, item_id: str, node_id: str) -> None:
        """The result `node_id` uploaded for the item becomes its result (OSError if there is none)."""
        os.replace(self.upload_path(item_id, node_id), self.result_path(item_id))

    def upload_path(self, item_id: str, node_id: str) -> Path:
        """Where a node's upload of a result goes until its report makes it the result (a node the head
        no longer counts as the item's may upload, and never overwrites the one that counts)."""
        return self.blobs / f"part.{item_id}.{node_id}"

    def log_path(self, item_id: str) -> Path:
        return self.logs / f"{item_id}.log"

    def checkpoint(self, writers=None) -> tuple[int, int]:
        """Copy what the log holds into the database (PASSIVE: writers and readers carry on meanwhile).
        Returns (frames in the log, frames copied).

        The next commit after a checkpoint that copied the whole log starts the log over; under constant
        writes there is always a commit made while the checkpoint ran, so the log would grow without end
        (7 MB/s at 500 round trips a second). So a log of LOG_RESTART_FRAMES or more is copied once more
        holding `writers` (the lock every write is made under): that copies only what came meanwhile."""
        with self._read() as db:
            _, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if writers is not None and logged >= LOG_RESTART_FRAMES:
                with writers:
                    _, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return logged, copied

    # --- writes -------------------------------------------------------------------------------------

    def write(self, new: Iterable[tuple], live: Iterable[tuple], done: Iterable[tuple],
              id_seq: int | None = None) -> None:
        """One transaction. new: (id, kind, name, request, max_retries, spec bytes, submitted_at, then its
        state now: state, attempt, node_id, gpu_ids, started_at); then state changes, live: (id, state,
        attempt, node_id, gpu_ids, started_at); done: (id, state, attempt, node_id, finished_at, exit_code,
        message, value, error, value_size, stored), whose spec goes. id_seq: the last id number given."""
        with self._tx():
            if id_seq is not None:
                self.db.execute("INSERT INTO counters (name, value) VALUES ('id_seq', ?) ON CONFLICT(name) "
                                "DO UPDATE SET value = max(value, excluded.value)", (id_seq,))
            if new:
                self.db.executemany(
                    "INSERT INTO items (id, kind, name, request, max_retries, spec, submitted_at, state, attempt, "
                    "node_id, gpu_ids, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(i, k, n, json.dumps(r, sort_keys=True), m, spec, t, s, a, node, ",".join(g), st)
                     for i, k, n, r, m, spec, t, s, a, node, g, st in new])
            if live:
                self.db.executemany(
                    "UPDATE items SET state=?, attempt=?, node_id=?, gpu_ids=?, started_at=? WHERE id=?",
                    [(s, a, n, ",".join(g), t, i) for i, s, a, n, g, t in live])
            self.db.executemany(
                "UPDATE items SET state=?, attempt=?, node_id=?, finished_at=?, exit_code=?, message=?, value=?, "
                "error=?, value_size=?, stored=?, spec=NULL WHERE id=?",
                [(s, a, n, t, c, m, v, e, z, int(st), i) for i, s, a, n, t, c, m, v, e, z, st in done])

    def mark_fetched(self, fetched: list[tuple[str, float]]) -> None:
        """(id, when) a client first took a result: its retention counts from then."""
        with self._tx():
            self.db.executemany("UPDATE items SET fetched_at=? WHERE fetched_at IS NULL AND id=?",
                                [(when, i) for i, when in fetched])

    def hold(self, ids: list[str], until: float) -> None:
        """Values some process holds refs to: kept until `until` at least (renewed while held)."""
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO held (id, until) VALUES (?, ?)", [(i, until) for i in ids])

    def sweep(self, now: float) -> int:
        """Drop the done items whose retention is over (and no ref held keeps), with their files. Returns
        how many."""
        expired = [r[0] for r in self.db.execute(
            "SELECT id FROM items WHERE finished_at > 0 AND ("
            " (kind = 'job' AND finished_at < ?) OR"
            " (kind NOT IN ('job', 'object') AND fetched_at IS NOT NULL AND fetched_at < ?) OR"
            " (kind != 'job' AND finished_at < ?))"
            " AND id NOT IN (SELECT id FROM held WHERE until >= ?)",
            (now - RETAIN_JOBS_S, now - RETAIN_FETCHED_S, now - RETAIN_UNFETCHED_S, now))]
        with self._tx():
            self.db.execute("DELETE FROM held WHERE until < ?", (now,))
            for chunk in _chunks(expired):
                self.db.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        if expired:  # the freed pages go back to the disk (at the next checkpoint), not kept for later
            # (run as a script: the module's execute would step it once, which frees one page)
            self.db.executescript("PRAGMA incremental_vacuum;")
        for item_id in expired:
            for p in (self.result_path(item_id), self.arg_path(item_id), self.log_path(item_id)):
                drop_blob(p)
        return len(expired)

    def free(self, ids: list[str]) -> list[str]:
        """Values (done objects) nobody can ask for any more, with their files: gone now, not at the end of
        their retention. Returns those it had."""
        found = [t[0] for t in self._by_ids("id, kind, finished_at", ids) if t[1] == "object" and t[2] > 0]
        with self._tx():
            for chunk in _chunks(found):
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
                self.db.execute(f"DELETE FROM held WHERE id IN ({marks})", chunk)
        for item_id in found:
            drop_blob(self.result_path(item_id))
        return found

    def tend_memory(self, now: float) -> None:
        """(no lock needed: it touches no blob a submit or a sweep may use) The memory folder renewed, and
        hourly, its files no blob names that are over WRITE_MAX_S old removed."""
        if self.memory is None:
            return
        renew_memory(self.memory)
        if now - self.memory_swept > WRITE_MAX_S:
            self.memory_swept = now
            sweep_memory(self.blobs, self.memory)

    def unclaimed_uploads(self, now: float) -> list[Path]:
        """Payloads and values uploaded over UNCLAIMED_S ago that no submit claimed (its client died
        between the two), and the parts of writes that died: candidates for drop_unclaimed."""
        found = []
        for path in self.blobs.iterdir():
            if path.name == KEY_FILE or not path.name.startswith(("arg.", "part.", ".")):
                continue
            try:
                if now - path.lstat().st_mtime > UNCLAIMED_S:
                    found.append(path)
            except FileNotFoundError:
                continue
        return found

    def drop_unclaimed(self, paths: list[Path]) -> int:
        """(holding the head's lock: no submit claims one meanwhile) Those of `paths` no item has."""
        ids = {p: p.name[len("arg."):] for p in paths if p.name.startswith("arg.")}
        known = self.known(list(ids.values())) if ids else set()
        gone = [p for p in paths if ids.get(p) not in known]
        for path in gone:
            drop_blob(path)
        return len(gone)

    # --- reads --------------------------------------------------------------------------------------

    def id_seq(self) -> int:
        """The last id number a head of this store gave (0: none); for a store of a version that kept no
        counter, the highest number among the ids it holds."""
        with self._read() as db:
            row = db.execute("SELECT value FROM counters WHERE name = 'id_seq'").fetchone()
            if row:
                return row[0]
            ids = db.execute("SELECT id FROM items WHERE id GLOB '?-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]"
                             "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]'").fetchall()
        return max((int(i[2:], 16) for (i,) in ids), default=0)

    def live(self) -> list[Row]:
        """Items not done, in the order they were submitted (a dependency before its dependents)."""
        marks = ",".join("?" * len(DONE))
        with self._read() as db:
            return [_row(t) for t in db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state NOT IN ({marks}) ORDER BY seq", DONE)]

    def _by_ids(self, cols: str, ids: list[str]) -> list[tuple]:
        """`cols` of the rows of these ids, in no order (an id the store does not have has none)."""
        if not ids:
            return []
        with self._read() as db:
            return [t for chunk in _chunks(ids) for t in db.execute(
                f"SELECT {cols} FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)]

    def specs(self, ids: list[str]) -> dict[str, bytes]:
        return dict(self._by_ids("id, spec", ids))

    def results(self, ids: list[str]) -> dict[str, tuple]:
        """Done items' results, id -> (id, state, message, exit_code, node_id, value, error, value_size,
        stored): the columns a `get` replies with and no more (a Row costs three times as much to read)."""
        return {t[0]: t for t in self._by_ids(_RESULT, ids)}

    def known(self, ids: list[str]) -> set[str]:
        """Which of these ids the store has (reads no row)."""
        return {t[0] for t in self._by_ids("id", ids)}

    def row(self, item_id: str) -> Row | None:
        """An item's record, without its spec, value or error."""
        found = self._by_ids(_BRIEF, [item_id])
        return _row(found[0]) if found else None

    @staticmethod
    def _done_where(kind: str) -> tuple[str, tuple]:
        """The WHERE clause and its arguments of done items (of a kind)."""
        where = f"state IN ({','.join('?' * len(DONE))})" + (" AND kind = ?" if kind else "")
        return where, (*DONE, *([kind] if kind else []))

    def done(self, kind: str = "", limit: int = 0) -> list[Row]:
        """Done items (of a kind), oldest first; with `limit`, only the newest `limit`."""
        where, args = self._done_where(kind)
        with self._read() as db:
            if limit > 0:
                rows = db.execute(f"SELECT {_BRIEF} FROM items WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit))
                return [_row(t) for t in reversed(rows.fetchall())]
            return [_row(t) for t in db.execute(f"SELECT {_BRIEF} FROM items WHERE {where} ORDER BY seq", args)]

    def done_counts(self, kind: str = "") -> dict[str, int]:
        where, args = self._done_where(kind)
        with self._read() as db:
            return dict(db.execute(f"SELECT state, COUNT(*) FROM items WHERE {where} GROUP BY state", args).fetchall())
