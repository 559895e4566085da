"""The head service's store keeping (runtime/head.py): what it writes, when, and what it does when it cannot."""

from __future__ import annotations

from runtime.blobs import drop_blob
from runtime.head_state import STORE_ERRORS, StoreUnavailable, item_of, log
from runtime.proto import head_pb2 as pb
from runtime.work import DONE_STATES, PG, QUEUED, RUNNING, Item


class StoreKeeping:
    """The head's store: what a previous head left is taken back, each change is written in one transaction (or
    kept in memory while the disk is full), done items leave memory, and retention sweeps the rest. Its state is
    the HeadServicer's (set in HeadServicer.__init__): a part of it, not used alone."""

    def _recover(self, now: float) -> float:
        """Take back what a previous head left in the store: queued work queues again, running work waits
        for its node to say it still runs it. Returns when the wait for those nodes ends."""
        self.sched.resume_ids(self.store.id_seq())
        rows = self.store.live()
        for row in rows:
            item = item_of(row.id, pb.WorkSpec.FromString(row.spec), row.submitted_at)
            item.attempt, item.node_id, item.gpu_ids, item.started_at = (row.attempt, row.node_id, row.gpu_ids,
                                                                         row.started_at)
            # a placement group is placed again (its bundles' places are not kept); what ran in it is adopted
            # as its node's work
            if row.state == RUNNING and row.kind != PG:
                self.sched.recover(item)
            else:
                self.sched.submit(item, now)
        self._commit()
        if rows:
            log.info("recovered %d item(s) from the store (%d were running)", len(rows), len(self.sched.recovering))
        # agents retry every few seconds at most: past this, a node that has not come back is gone
        return now + self.node_timeout_s + 10.0

    def _store_failed(self, e: Exception) -> None:
        if str(e) != self.store_error:  # said once per cause, not on every call while it lasts
            log.error("the store cannot be written: %s; new work is refused until it can", e)
        self.store_error = str(e)

    def retry_store(self) -> None:
        """(the clock) What a failed commit kept in memory goes to the store once it can be written."""
        if self.store_error:
            with self.lock:
                try:
                    self._commit()
                except StoreUnavailable:
                    return
                self._hand_out()

    def _done_item(self, item_id: str) -> tuple[str, str] | None:
        """(state, message) of a done item that has left memory (the scheduler's done_item)."""
        row = self.store.row(item_id)
        return (row.state, row.message) if row is not None and row.state in DONE_STATES else None

    def _commit(self, new: list[tuple[Item, bytes]] = ()) -> None:
        """(under self.lock) Wake the GetResults calls waiting for items now done, write what changed (and
        `new` items) to the store in one transaction, and let done items leave memory."""
        live, done = [], []
        new_ids = {i.id for i, _ in new}
        for item in self.sched.take_dirty():
            if item.state in DONE_STATES:
                done.append(item)
            elif item.id not in new_ids:  # a new item is written as it is now
                live.append((item.id, item.state, item.attempt, item.node_id, item.gpu_ids, item.started_at))
        rows = [(i.id, i.kind, i.name, i.request, i.max_retries, spec, i.submitted_at,
                 *((QUEUED, 0, "", [], 0.0) if i.state in DONE_STATES else
                   (i.state, i.attempt, i.node_id, i.gpu_ids, i.started_at))) for i, spec in new]
        # Waiters are woken first: a woken `get` replies from the results handed to it, while the store is
        # written. Nothing is lost if the head dies in between: the agent keeps a result until the head
        # acknowledges its report, which it does only once this returns.
        done_now = {item.id: item for item in done}
        for item_id in self.sched.take_finished():
            waiters = self.waiters.pop(item_id, ())
            if waiters:
                result = self._result_of(done_now[item_id])
                for waiter in waiters:
                    waiter.one_done(result)
        if live or done or rows:
            try:
                self.store.write(rows, live, [self._done_row(item) for item in done],
                                 id_seq=self.sched.id_seq if rows else None)
            except STORE_ERRORS as e:
                # kept in memory, written by a later commit (the clock retries): a report that brought
                # these is not acknowledged, so its agent sends it again
                self.sched.dirty.update([i for i, *_ in live] + [item.id for item in done])
                self._store_failed(e)
                raise StoreUnavailable(f"the head cannot write its store ({e}: its disk full?)") from None
            if self.store_error:
                log.info("the store is written again")
                self.store_error = ""
        for item in done:
            self.sched.forget(item.id)
            if item.id in self.uploaded_args:
                self.uploaded_args.discard(item.id)
                drop_blob(self.store.arg_path(item.id))

    @staticmethod
    def _result_of(item: Item) -> pb.ItemResult:
        r = item.result
        res = pb.ItemResult(id=item.id, state=item.state, message=item.message, exit_code=item.exit_code,
                            node_id=item.node_id)
        if r is not None:
            res.value, res.error, res.value_size, res.stored = r.value, r.error, r.value_size, r.stored
        return res

    @staticmethod
    def _done_row(item: Item) -> tuple:
        r = item.result
        value, error, size, stored = (r.value, r.error, r.value_size, r.stored) if r is not None else (None, None, 0, False)
        return (item.id, item.state, item.attempt, item.node_id, item.finished_at, item.exit_code, item.message,
                value, error, size, stored)

    def sweep(self) -> int:
        """Done items whose retention is over leave the store, and uploads nobody submitted."""
        self.flush_fetched()
        self.store.tend_memory(self.clock())  # (reading whole folders: not under the head's lock)
        unclaimed = self.store.unclaimed_uploads(self.clock())
        with self.lock:
            if unclaimed:
                self.store.drop_unclaimed(unclaimed)
            return self.store.sweep(self.clock())

    def _fetched(self, results) -> None:
        """Noted now, written with the next sweep tick (it only starts the retention clock)."""
        if results:
            now = self.clock()
            with self.fetched_lock:
                self.fetched.extend((r.id, now) for r in results)

    def flush_fetched(self) -> None:
        with self.fetched_lock:
            fetched, self.fetched = self.fetched, []
        if fetched:
            with self.lock:  # the store's writes are the head lock's
                self.store.mark_fetched(fetched)
