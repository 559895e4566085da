"""A task worker process: runs cloudpickled callables sent by its agent, one at a time, and is reused.

A task's payload is cloudpickle of (cloudpickled function, args, kwargs). A worker that holds an actor
is given its class the same way ("actor": the instance is made and kept), then its calls ("call":
(method name, args, kwargs)). An actor that takes one call at a time is sent several ahead
(runtime/executor_actors.py), which it runs in order. A cancel of one comes on a pipe of its own
(LAUNCH_CANCEL_FD, a call id per frame), read by a thread that answers ("cancelled", b"") at once if the
call has not started, so that it never does; one that started runs to its end. An actor's replies name
their call: (call id, status, data).

Frames on the pipes are an 8-byte length then a cloudpickle. In: (op, payload, dep_values, item id); out:
("ok", value bytes), ("ok-file", path of a file holding them) or ("err", pickled (exception, traceback
text)). A value is pickled as it is written: up to INLINE_BYTES into memory, beyond that into a file in
LAUNCH_RESULT_DIR that the agent uploads from and removes, so that a result of gigabytes is never held
twice (or three times: the bytes, then the frame) by the worker or the agent. The protocol keeps the
original stdout to itself; the task's own prints go to stderr (the agent's log).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys
import tempfile
import threading
import traceback
import types
from collections import deque

import cloudpickle

from runtime import preemption
from runtime.api import ObjectRef, current_task
from runtime.limits import INLINE_BYTES

RESULT_DIR_ENV = "LAUNCH_RESULT_DIR"
CANCEL_FD_ENV = "LAUNCH_CANCEL_FD"
_results = itertools.count()


def read_frame(f) -> bytes | None:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack(">Q", head)
    return f.read(n)


def write_frame(f, data: bytes) -> None:
    f.write(struct.pack(">Q", len(data)))
    f.write(data)  # not joined to the header: a result may be gigabytes
    f.flush()


def _resolve(value, deps: dict[str, bytes], cache: dict):
    if isinstance(value, ObjectRef):
        if value.id not in cache:
            cache[value.id] = cloudpickle.loads(deps[value.id])
        return cache[value.id]
    return value


_functions: dict[bytes, object] = {}  # a worker runs the same function many times: unpickle it once


_instance: list = []  # the actor this worker holds, if it holds one


def _function(fn_blob: bytes):
    fn = _functions.get(fn_blob)
    if fn is None:
        fn = _functions[fn_blob] = cloudpickle.loads(fn_blob)
    return fn


ASYNC_ACTOR_CONCURRENCY = 1000  # Ray's default for an actor with async methods


def _construct(cls, options: dict):
    """Makes the actor; its result tells the agent how many calls it may be given at once (an actor with
    async methods runs its calls on an asyncio loop, one with max_concurrency > 1 on threads)."""
    import inspect

    def make(*args, **kwargs):
        _instance[:] = [cls(*args, **kwargs)]
        is_async = any(inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
                       for fn in (getattr(cls, name, None) for name in dir(cls) if not name.startswith("__")))
        concurrency = options.get("max_concurrency") or (ASYNC_ACTOR_CONCURRENCY if is_async else 1)
        return {"concurrency": concurrency, "async": is_async}
    return make


def _method(name: str):
    if not _instance:
        raise RuntimeError("this worker holds no actor")
    return getattr(_instance[0], name)


class _ResultSink:
    """What the pickler writes: memory up to INLINE_BYTES, then a file (written as it is pickled)."""

    def __init__(self, item_id: str):
        self.item_id = item_id
        self.buf = bytearray()
        self.file = None
        self.path = ""

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.file is None and len(self.buf) + n <= INLINE_BYTES:
            self.buf += data
            return n
        if self.file is None:
            folder = os.environ.get(RESULT_DIR_ENV) or tempfile.gettempdir()
            self.path = os.path.join(folder, f"{self.item_id or 'result'}.{os.getpid()}.{next(_results)}")
            self.file = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            self.file.write(self.buf)
            self.buf = bytearray()
        self.file.write(data)  # the pickler hands a large bytes or array payload over as it is: no copy
        return n

    def outcome(self) -> tuple[str, bytes | str]:
        if self.file is None:
            return "ok", bytes(self.buf)
        self.file.close()
        return "ok-file", self.path

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.path)


def _pickled(value, item_id: str) -> tuple[str, bytes | str]:
    sink = _ResultSink(item_id)
    try:
        cloudpickle.dump(value, sink)
    except BaseException:
        sink.discard()
        raise
    return sink.outcome()


def _call_of(payload: bytes, deps: dict[str, bytes], op: str):
    """(the callable, its args, its kwargs) of a frame."""
    target, args, kwargs = cloudpickle.loads(payload)
    if op == "call":
        fn = _method(target)
    elif op == "actor":
        cls, options = cloudpickle.loads(target)
        fn = _construct(cls, options)
    else:
        fn = _function(target)
    cache: dict = {}
    return fn, [_resolve(a, deps, cache) for a in args], {k: _resolve(v, deps, cache) for k, v in kwargs.items()}


def _error(e: BaseException) -> tuple[str, bytes]:
    tb = traceback.format_exc()
    try:
        return "err", cloudpickle.dumps((e, tb))
    except Exception:
        return "err", cloudpickle.dumps((RuntimeError(f"{type(e).__name__}: {e}"), tb))


def _yielded(task_id: str, index: int, value) -> None:
    """A generator task's value, put in the cluster as it is made (id "<task>.y<n>": its caller waits on it);
    one put by an earlier attempt of the task is kept."""
    from runtime import api, pickling
    from runtime.work import yielded_id

    api.put_as(yielded_id(task_id, index), pickling.dumps(value), "yield")


def _streamed(values, task_id: str) -> int:
    """Each value of a generator task put as it comes; the task's own value is how many there were."""
    count = 0
    for value in values:
        _yielded(task_id, count, value)
        count += 1
    return count


def run_one(payload: bytes, deps: dict[str, bytes], op: str = "task", item_id: str = "") -> tuple[str, bytes | str]:
    try:
        fn, args, kwargs = _call_of(payload, deps, op)
        value = fn(*args, **kwargs)
        if isinstance(value, types.GeneratorType):
            value = _streamed(value, current_task.get())
        return _pickled(value, item_id)
    except BaseException as e:  # noqa: BLE001 - everything a task raises goes back to its caller
        return _error(e)


class _Replies:
    """The pipe to the agent, written by more than one thread (an actor's)."""

    def __init__(self, out):
        self.out, self.lock = out, threading.Lock()

    def send(self, message: tuple) -> None:
        frame = cloudpickle.dumps(message)
        with self.lock:
            write_frame(self.out, frame)


class _InTurn:
    """An actor that runs its calls one at a time, on the main thread, in the order they come (several are
    sent ahead). A thread reads the cancels: a call that has not started is answered as cancelled at once
    (however long the call running now takes) and skipped when its turn comes."""

    STARTED_KEPT = 256  # the calls started last (an agent has at most IN_TURN_AHEAD unanswered)
    CANCELLED_KEPT = 1024  # cancels of calls not come yet (one whose inputs failed never comes)

    def __init__(self, cancels_fd: int, replies: _Replies):
        self.replies = replies
        self.lock = threading.Lock()
        self.started: deque[str] = deque(maxlen=self.STARTED_KEPT)
        self.cancelled: dict[str, None] = {}
        if cancels_fd >= 0:
            threading.Thread(target=self._read, args=(cancels_fd,), name="actor-cancels", daemon=True).start()

    def start(self, call_id: str) -> bool:
        """The call's turn: False if it was cancelled (answered already), else it counts as started."""
        with self.lock:
            if call_id in self.cancelled:
                del self.cancelled[call_id]
                return False
            self.started.append(call_id)
            return True

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            while (frame := read_frame(f)) is not None:
                call_id = frame.decode()
                with self.lock:
                    if call_id in self.started:
                        continue  # it runs to its end (or ended)
                    self.cancelled[call_id] = None
                    while len(self.cancelled) > self.CANCELLED_KEPT:
                        del self.cancelled[next(iter(self.cancelled))]
                self.replies.send((call_id, "cancelled", b""))


class _Concurrent:
    """An actor given several calls at once: each runs on a thread of a pool (max_concurrency), or as a
    coroutine on the actor's asyncio loop (async methods, interleaved at their awaits; a plain method
    there runs on the loop too); each reply says which call it answers."""

    def __init__(self, replies: _Replies, concurrency: int, is_async: bool):
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self.replies = replies
        if is_async:
            self.loop = asyncio.new_event_loop()
            self.slots = asyncio.Semaphore(concurrency)
            threading.Thread(target=self.loop.run_forever, name="actor-loop", daemon=True).start()
        else:
            self.loop = None
            self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="actor")

    def submit(self, payload: bytes, deps: dict[str, bytes], call_id: str) -> None:
        if self.loop is not None:
            import asyncio

            asyncio.run_coroutine_threadsafe(self._run_async(payload, deps, call_id), self.loop)
        else:
            self.pool.submit(self._run_threaded, payload, deps, call_id)

    def _reply(self, call_id: str, outcome: tuple[str, bytes | str]) -> None:
        self.replies.send((call_id, *outcome))

    def _run_threaded(self, payload: bytes, deps: dict[str, bytes], call_id: str) -> None:
        current_task.set(call_id)
        self._reply(call_id, run_one(payload, deps, "call", call_id))

    async def _run_async(self, payload: bytes, deps: dict[str, bytes], call_id: str) -> None:
        current_task.set(call_id)
        async with self.slots:
            try:
                import asyncio
                import inspect

                fn, args, kwargs = _call_of(payload, deps, "call")
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                elif inspect.isasyncgen(value):  # each value put as it comes (off the loop: a blocking call)
                    count, loop = 0, asyncio.get_running_loop()
                    async for v in value:
                        await loop.run_in_executor(None, _yielded, call_id, count, v)
                        count += 1
                    value = count
                elif isinstance(value, types.GeneratorType):
                    value = await asyncio.get_running_loop().run_in_executor(None, _streamed, value, call_id)
                outcome = _pickled(value, call_id)
            except BaseException as e:  # noqa: BLE001 - everything a call raises goes back to its caller
                outcome = _error(e)
        self._reply(call_id, outcome)


def main() -> None:
    preemption.install()
    cancels_fd = int(os.environ.pop(CANCEL_FD_ENV, "-1"))
    if cancels_fd >= 0:  # (not to the work's own child processes, nor its variable)
        os.set_inheritable(cancels_fd, False)
    proto_in = os.fdopen(os.dup(0), "rb")
    replies = _Replies(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # print() in a task goes to the log, never into the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1)
    concurrent: _Concurrent | None = None
    in_turn: _InTurn | None = None
    given: tuple = ()  # the resources and placement group last set in the environment (most tasks repeat them)
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return
        op, payload, deps, item_id, context = cloudpickle.loads(frame)
        task_id = context.get("task_id", item_id)
        if concurrent is not None:
            concurrent.submit(payload, deps, task_id)
            continue
        if in_turn is not None and not in_turn.start(task_id):
            continue
        os.environ["LAUNCH_ITEM_ID"] = item_id  # a `get` in the task (or actor) lends its CPUs while it waits
        # for get_runtime_context(): the task or call running now; the resources of the task, or the actor's
        current_task.set(task_id)
        if "resources" in context and (context["resources"], context.get("placement_group", "")) != given:
            # ("same": as the last one: the environment already says it)
            # a task, or an actor's constructor (its methods: the actor's)
            given = (context["resources"], context.get("placement_group", ""))
            os.environ["LAUNCH_TASK_RESOURCES"] = json.dumps(given[0])
            os.environ["LAUNCH_PLACEMENT_GROUP"] = given[1]
        outcome = run_one(payload, deps, op, item_id)
        replies.send((task_id, *outcome) if in_turn is not None else outcome)
        if op == "actor" and outcome[0] == "ok":
            mode = cloudpickle.loads(outcome[1])
            if mode["concurrency"] > 1 or mode["async"]:
                concurrent = _Concurrent(replies, mode["concurrency"], mode["async"])
            else:
                in_turn = _InTurn(cancels_fd, replies)


if __name__ == "__main__":
    main()
