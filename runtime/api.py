"""The client API: remote functions, futures, get and wait (the programming model Ray users know).

    import runtime
    runtime.init()                      # the cluster `launch up` started (or the one this code runs in)

    @runtime.remote(num_cpus=1, num_gpus=0.5)
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(10)]
    print(runtime.get(refs))            # futures passed as arguments resolve before a task runs
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from core.entry_points import TUNNEL
from runtime import holding, pickling
from runtime.exceptions import (ActorDiedError, GetTimeoutError, ObjectLostError, TaskCancelledError, TaskError,
                                error_for)  # noqa: F401 (the API's)
from runtime.limits import HOLD_BATCH, INLINE_BYTES, MAX_OBJECT_BYTES, MAX_REPLY_BYTES, STORE_FULL, too_large

DEFAULT_MAX_RETRIES = 3
# The task or actor call this code runs in (set by the worker for each; "" on a driver): an actor that runs
# calls at once (threads, asyncio) has one per call
current_task: contextvars.ContextVar[str] = contextvars.ContextVar("launch_task", default="")
# How long a client waits for a head that went away (restarted by its supervisor in a second, or by
# `launch up`) before it gives up and says so.
HEAD_RETURN_S = 300.0


class ObjectRef:
    """A future: the result of a task that may not have run yet."""

    # _result: the result a `wait` brought back for this ref, so that a `get` of it fetches nothing again;
    # _local: (a value this process put) its pickle, or WRITTEN_HERE: its file on the head's disk, which
    # this process wrote, so that its `get` asks the head nothing (Ray's owner reads its own values too);
    # _direct: (an actor call sent straight to its node, runtime/direct.py) the call, whose answer comes here;
    # _owned: (a value this process put) whether its ref left this process: if not, the value is freed once
    # this object is gone (_Owned). They stay with this object (a ref sent to a task travels without them).
    __slots__ = ("id", "_result", "_local", "_direct", "_owned", "__weakref__")

    def __init__(self, id: str):
        self.id = id
        self._result = None
        self._local = None
        self._direct = None
        self._owned = None
        holding.LIVE.add(self)  # its value is kept on the head while this ref lives (runtime/holding.py)

    def __reduce__(self):
        if self._direct is not None:  # leaving this process: the head gets the call's outcome first
            _connection().direct_calls().hand_over(self._direct)
        if self._owned is not None:  # another process may ask for it: kept as the head keeps values
            self._owned.passed_on = True
        return ObjectRef, (self.id,)

    def __repr__(self) -> str:
        return f"ObjectRef({self.id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self):
        """`await ref` (in an async actor, or any asyncio code): its value, without holding the loop."""
        import asyncio

        return asyncio.get_running_loop().run_in_executor(None, get, self).__await__()


class _Owned:
    """A value this process put: freed with its ref, as Ray frees an object with its last reference, unless the
    ref was passed on (pickled: into a task's or an actor call's arguments, or into another value)."""

    __slots__ = ("id", "passed_on", "writer")

    def __init__(self, item_id: str, writer=None):
        self.id, self.passed_on = item_id, False
        self.writer = writer  # the HeadClient that wrote its file here, which may write the next value over it

    def gone(self) -> None:
        """(the ref collected: any thread, in the middle of anything) Its id waits for the next submission."""
        if not self.passed_on:
            _RELEASED.append(self.id)
            if self.writer is not None:
                self.writer.value_freed(self.id)


_RELEASED: list[str] = []  # values to free, sent with the next submission that carries every pending one
_released_lock = threading.Lock()  # (taken by senders only: `gone` appends without it, as a collection may
#                                     run while a sender holds it)


def _take_released() -> list[str]:
    with _released_lock:
        n = min(len(_RELEASED), HOLD_BATCH)
        ids = _RELEASED[:n]
        del _RELEASED[:n]
        return ids


class ObjectRefGenerator:
    """The refs of a generator task's values (a task that yields, or num_returns="streaming"), each as
    soon as it is yielded: `for ref in gen.remote(): print(get(ref))`. A task that fails after k values
    gives k refs, then one whose get raises its error."""

    def __init__(self, task: ObjectRef):
        self._task, self._index, self._over = task, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        ref = self._next_ref(None)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_ref, None)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def completed(self) -> ObjectRef:
        """A ref of the task itself: ready once it has yielded everything (its value: how many)."""
        return self._task

    def _next_ref(self, timeout: float | None) -> ObjectRef | None:
        if self._over:
            return None
        from runtime.work import yielded_id

        item = yielded_id(self._task.id, self._index)
        results = {r.id: r for r in _unknown_ids(lambda: _connection().get_results(
            [self._task.id, item], timeout, num_returns=1))}
        task = results.get(self._task.id)
        if item in results or (task is not None and task.state == "finished" and self._index < _value(task)):
            self._index += 1
            ref = ObjectRef(item)
            ref._result = results.get(item)
            return ref
        if task is None:
            raise GetTimeoutError(f"no value of {self._task.id} within {timeout}s")
        self._over = True
        return None if task.state == "finished" else self._task  # a ref whose get raises the task's error


STREAMING = "streaming"  # num_returns of a generator task: its values' refs as they are yielded


def _streaming(fn, num_returns) -> bool:
    """Whether calls of `fn` (with num_returns as num_returns_spec gives it) stream their values."""
    import inspect

    return num_returns == STREAMING or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


class _Connection:
    """A head client plus a background submitter.

    `.remote()` returns at once with an id made here; a thread ships pending submissions in batches, in
    order (so a task is always submitted after the tasks it depends on). get/wait/cancel flush first.
    A submission the head refused is raised at the next flush; while the head is away (restarting) a
    batch is sent again until it is back.
    """

    BATCH = 1000

    def __init__(self, client):
        self.client = client
        self.pending: list[tuple[str, object]] = []
        self.inflight = 0
        self.maybe_sent: set[str] = set()
        self.error: Exception | None = None
        self.closed = False
        self.cond = threading.Condition()
        self.direct = None  # actor calls sent straight to the actors' nodes (runtime/direct.py), once made
        self.far = False  # the head is reached through an SSH tunnel (its nodes' agents are not reached)
        self.thread = threading.Thread(target=self._loop, name="launch-submitter", daemon=True)
        self.thread.start()

    def enqueue(self, item_id: str, spec) -> None:
        with self.cond:
            self.pending.append((item_id, spec))
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending or self.inflight:  # one batch on the way at a time: in order
                    if self.closed and not self.pending:
                        return
                    self.cond.wait()
                batch = self._take_batch()
            self._send(batch)

    def _take_batch(self) -> list[tuple[str, object]]:
        """(under self.cond) The next batch, bounded in count and bytes like any message."""
        n, size = 0, 0
        for _, spec in self.pending[: self.BATCH]:
            size += spec.ByteSize()
            if n and size > MAX_REPLY_BYTES:
                break
            n += 1
        batch, self.pending = self.pending[:n], self.pending[n:]
        self.inflight += 1
        return batch

    def _send(self, batch: list[tuple[str, object]], deadline: float | None = None) -> None:
        import grpc

        try:
            self._submit(batch, deadline)
        except grpc.RpcError as e:
            with self.cond:  # the head away says so itself (HeadUnavailable)
                self.error = e if isinstance(e, ConnectionError) else _refused(e, len(batch))
        finally:
            with self.cond:
                self.inflight -= 1
                self.cond.notify_all()

    def _submit(self, batch: list[tuple[str, object]], deadline: float | None = None) -> None:
        import grpc

        specs, ids = [spec for _, spec in batch], [i for i, _ in batch]
        with self.cond:  # went with a `get` when the head went away: it may have taken them
            sent_before = any(i in self.maybe_sent for i in ids)
            self.maybe_sent.difference_update(ids)
            # (only with a batch of everything pending: a value is freed after its own submission, never before)
            released = _take_released() if not self.pending else []

        def send():
            nonlocal sent_before
            pause, give_up = 0.2, deadline or time.monotonic() + HEAD_RETURN_S
            while True:
                try:
                    return self.client.submit_many(specs, ids, released)
                except grpc.RpcError as e:
                    # sent again after the head came back: it had taken the batch (all or nothing) before
                    if e.code() == grpc.StatusCode.ALREADY_EXISTS and sent_before:
                        return
                    if _store_full(e) and give_up - time.monotonic() > pause:
                        # the head's disk is full: it stored none of the batch; it may have room soon
                        time.sleep(pause)
                        pause = min(pause * 2, 5.0)
                        continue
                    sent_before = sent_before or isinstance(e, ConnectionError)
                    raise

        _reconnecting(send, deadline)

    def get_results(self, ids: list[str], timeout: float | None, num_returns: int = 0) -> list:
        """Results, once every submission made so far reached the head: what is still pending goes with
        the same call when it is all of one batch (one round trip for `get(f.remote())`)."""
        import grpc

        from runtime.client import HeadUnavailable
        from runtime.proto import head_pb2 as pb

        deadline = None if timeout is None else time.monotonic() + timeout  # the head's return included
        with self.cond:
            batch = self._take_batch() if self.pending and not self.inflight else None
            if batch is not None and self.pending:  # more than one batch: the usual way, in order
                self.pending[:0] = batch
                self.inflight -= 1
                batch = None
        if batch is not None:
            try:
                return self.client.get_results(ids, timeout, num_returns, submit=pb.SubmitRequest(
                    specs=[spec for _, spec in batch], ids=[i for i, _ in batch], released=_take_released()),
                    caller_id=_caller())
            except HeadUnavailable:
                with self.cond:  # sent again first, before anything submitted after it
                    self.pending[:0] = batch
                    self.maybe_sent.update(i for i, _ in batch)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise
                if not _store_full(e):
                    raise _refused(e, len(batch)) from None
                with self.cond:  # nothing of it stored: sent again (the usual way, until there is room)
                    self.pending[:0] = batch
            finally:
                with self.cond:
                    self.inflight -= 1
                    self.cond.notify_all()
        self.flush(deadline)
        return _reconnecting(lambda: self.client.get_results(
            ids, None if deadline is None else max(0.0, deadline - time.monotonic()), num_returns,
            caller_id=_caller()), deadline)

    def direct_calls(self):
        if self.direct is None:
            from runtime.direct import DirectCalls

            with self.cond:
                if self.direct is None:
                    self.direct = DirectCalls(self, self.client._md, not self.far, _submit, _reconnecting)
        return self.direct

    def settle(self) -> None:
        """Wait until every submission made so far has been sent (what the head said of them is for flush)."""
        with self.cond:
            while self.pending or self.inflight:
                self.cond.wait()

    def flush(self, deadline: float | None = None) -> None:
        while True:
            with self.cond:
                if not self.pending and not self.inflight:
                    break
                # nothing on the way: send from here rather than wake the submitter and wait for it
                batch = self._take_batch() if not self.inflight else None
                if batch is None:
                    self.cond.wait()
                    continue
            self._send(batch, deadline)
        with self.cond:
            err, self.error = self.error, None
        if err is not None:
            raise err

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.direct is not None:
                self.direct.close()
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            self.thread.join(timeout=5)
            self.client.close()


def _store_full(e) -> bool:
    """The head refused a submission because its disk is full: nothing of it was stored."""
    import grpc

    return e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (e.details() or "").startswith(STORE_FULL)


def _refused(e, n: int) -> Exception:
    """A submission the head refused: bad input (a name taken, a malformed request) is a ValueError."""
    import grpc

    bad = e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS)
    return (ValueError if bad else ConnectionError)(
        f"the head refused {n} submission(s): {e.code().name}: {e.details()}")


_conn: _Connection | None = None


def _caller() -> str:
    """The task or job this code runs in, if any (its worker says which): a `get` there lends its CPUs."""
    return os.environ.get("LAUNCH_ITEM_ID", "")


def _discover() -> tuple[str, str]:
    """Inside a job or task: its cluster. On a node of a cluster: that cluster (from the node's runtime
    config, while its runtime runs there: one a crash left behind names a head long gone). On the machine
    that ran `launch up`: the one cluster that is up there."""
    if os.environ.get("LAUNCH_HEAD_ADDRESS") and os.environ.get("LAUNCH_CLUSTER_TOKEN"):
        return os.environ["LAUNCH_HEAD_ADDRESS"], os.environ["LAUNCH_CLUSTER_TOKEN"]
    from core.paths import HEAD_ADDRESS, NODE_CONFIG, launch_home, on_this_node

    from runtime.node import daemon_pid

    node_config = on_this_node(NODE_CONFIG)
    if node_config.exists() and daemon_pid("agent") is not None:
        cfg = json.loads(node_config.read_text())
        address = cfg.get("head_address") or on_this_node(HEAD_ADDRESS).read_text().strip()
        return address, cfg["token"]
    clusters = sorted(p for p in (launch_home() / "clusters").glob("*") if (p / "cluster.json").exists())
    if len(clusters) != 1:
        names = ", ".join(p.name for p in clusters) or "none"
        raise ConnectionError(f"runtime.init(): pass cluster=NAME (clusters that are up: {names})")
    return _read_cluster(clusters[0])


_tunnels: dict[str, tuple[subprocess.Popen, str]] = {}


def _read_cluster(path: Path) -> tuple[str, str]:
    info = json.loads((path / "cluster.json").read_text())
    token = (path / "token").read_text().strip()
    if info.get("head_reach") != "ssh":
        return info["head_address"], token
    return _tunnel(path.name), token


def _tunnel(cluster: str) -> str:
    """The head service of a remote cluster listens on its loopback and private IP only: reach it through
    a port forward on an SSH connection to the head, held by a helper process (`launcher.tunnel`) for as
    long as this process lives."""
    if cluster in _tunnels and _tunnels[cluster][0].poll() is None:
        return _tunnels[cluster][1]
    proc = subprocess.Popen([sys.executable, "-m", TUNNEL, cluster], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("address "):
        proc.wait()
        problem = (proc.stderr.read().strip().splitlines() or ["no reason given"])[-1]
        raise ConnectionError(f"runtime.init(): cannot reach the head of cluster {cluster!r} over SSH: {problem}")
    address = line.split(" ", 1)[1].strip()
    _tunnels[cluster] = (proc, address)
    atexit.register(_close_tunnels)
    return address


def _close_tunnels() -> None:
    for proc, _ in _tunnels.values():
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    _tunnels.clear()


def _check_python(client) -> None:
    """Tasks and actors are pickled by the driver's Python and run by the cluster's: the two must be the
    same minor version (as Ray requires), or a task fails deep in unpickling. Said at once, in one line."""
    from runtime.client import HeadUnavailable

    try:
        cluster = client.cluster_state().python_version
    except HeadUnavailable:
        return  # a head restarting now: the calls to come wait for it, or say it is away
    here = "%d.%d" % sys.version_info[:2]
    if cluster and cluster != here:
        raise RuntimeError(f"runtime.init(): this driver runs Python {here} but the cluster runs Python {cluster}: "
                           f"a driver must run the cluster's Python version; run it on the cluster "
                           f"(`launch submit`, `launch exec`) or with Python {cluster} here")


# Ray's init() options for a Ray it starts on this machine: launch connects to a cluster whose nodes say
# what they have, so these change nothing (said once); the logging ones are Ray's own.
_LOCAL_RAY_OPTIONS = ("num_cpus", "num_gpus", "resources", "object_store_memory", "local_mode", "_temp_dir",
                      "_system_config", "include_dashboard", "dashboard_host", "dashboard_port", "_memory")
_RAY_LOGGING_OPTIONS = ("logging_level", "logging_format", "log_to_driver", "configure_logging")
_namespace = ""
_job_runtime_env: dict = {}  # init(runtime_env=...): every task's and actor's, under its own


def packed_runtime_env(own: dict | None) -> str:
    """The runtime_env a task or actor's spec carries: the driver's (init) with its own over it."""
    from runtime.runtime_env import merged, pack

    if not own and not _job_runtime_env:
        return ""
    return pack(merged(_job_runtime_env, own), _put_archive)


def _put_archive(object_id: str, data: bytes) -> None:
    """(runtime_env) An archive put in the cluster under an id of its own (its contents' hash), once: kept on
    the head's disk, where the nodes fetch it from."""
    import grpc

    client = _require()
    try:
        if client.get_results([object_id], 0):
            return
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    put_as(object_id, data, "runtime_env", upload=True)


def namespace() -> str:
    """The namespace this driver's named actors live in (init(namespace=...))."""
    return _namespace


def init(address: str | None = None, token: str | None = None, cluster: str | None = None, *,
         namespace: str | None = None, ignore_reinit_error: bool = False, runtime_env: dict | None = None,
         **ray_options):
    """Connect to a cluster: explicit address and token, else the one this code runs on, else the one
    cluster `launch up` started on this machine (or the one named by `cluster`). Ray's spellings work:
    address="auto" (or "local"), namespace=, ignore_reinit_error=; options for starting a Ray here
    (num_cpus, ...) are ignored with a warning: the cluster's nodes say what they have."""
    global _conn, _namespace
    from runtime.client import HeadClient  # grpc is imported only by those who connect

    unknown = sorted(set(ray_options) - set(_LOCAL_RAY_OPTIONS) - set(_RAY_LOGGING_OPTIONS))
    if unknown:
        raise TypeError(f"init() got unknown option(s): {', '.join(unknown)}")
    local = sorted(set(ray_options) & set(_LOCAL_RAY_OPTIONS))
    if local:
        print(f"runtime.init(): {', '.join(local)} ignored: they describe a Ray started on this machine; "
              "a launch cluster's nodes say what they have", file=sys.stderr)
    if _conn is not None and ignore_reinit_error:
        return _conn.client
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict (got {type(runtime_env).__name__})")
    _job_runtime_env.clear()
    _job_runtime_env.update(runtime_env or {})
    if namespace is not None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a string (got {type(namespace).__name__})")
        _namespace = namespace
    if address in ("auto", "local"):
        address = None
    if isinstance(address, str) and address.startswith("ray://"):
        raise ValueError(f"address {address!r}: Ray Client addresses are Ray's; give the cluster's name "
                         "(cluster=...) or nothing (the cluster `launch up` started here)")
    if address is not None and token is None:
        token = os.environ.get("LAUNCH_CLUSTER_TOKEN")
    if address is None or token is None:
        if cluster is not None:
            from core.paths import launch_home

            address, token = _read_cluster(launch_home() / "clusters" / cluster)
        else:
            address, token = _discover()
    if _conn is not None:
        _conn.close()
    client = HeadClient(address, token, timeout_s=30)
    try:
        _check_python(client)
    except BaseException:
        client.close()
        raise
    _conn = _Connection(client)
    _conn.far = any(address == forwarded for _, forwarded in _tunnels.values())
    holding.start(lambda: _conn.client if _conn is not None else None)
    atexit.register(_disconnect_at_exit)  # once: registering again replaces nothing, and it is idempotent
    return _conn.client


_on_disconnect: list[Callable[[Any], None]] = []  # called with the client as a driver leaves the cluster


def on_disconnect(hook: Callable[[Any], None]) -> None:
    """(parts of the API built on this one: actors) `hook(client)` runs as the driver disconnects, by
    shutdown() or at exit."""
    if hook not in _on_disconnect:
        _on_disconnect.append(hook)


def _disconnect_at_exit() -> None:
    """A driver that exits without shutdown() still ends what it owns (actors, not detached ones)."""
    if _conn is not None:
        _disconnecting(_conn.client)


def _disconnecting(client) -> None:
    for hook in _on_disconnect:
        hook(client)


def shutdown() -> None:
    """Flush pending submissions and disconnect."""
    global _conn, _namespace
    _namespace = ""
    _job_runtime_env.clear()
    if _conn is not None:
        conn, _conn = _conn, None
        try:
            conn.flush()
        finally:
            _disconnecting(conn.client)
            conn.close()
    _close_tunnels()


def _connection() -> _Connection:
    if _conn is None:
        init()
    return _conn


def _require():
    """The head client, once every submission made so far has reached the head."""
    conn = _connection()
    conn.flush()
    return conn.client


def _reconnecting(call: Callable[[], Any], deadline: float | None = None) -> Any:
    """Run a call to the head; while the head is away (a restart), try again until it is back, for up to
    HEAD_RETURN_S (or to the caller's own deadline), then say it is away."""
    from runtime.client import HeadUnavailable

    deadline = time.monotonic() + HEAD_RETURN_S if deadline is None else deadline
    delay = 0.2
    while True:
        try:
            return call()
        except HeadUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)  # backoff between attempts to reach a head that is down, not a wait for work
            delay = min(delay * 2, 5.0)


def _amount(name: str, value) -> float:
    """An amount the user gave, checked before anything is dropped: a negative or NaN one is an error,
    not a zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number (got {value!r:.40})")
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name}: must be a finite number >= 0 (got {value!r})")
    return float(value)


def _request(num_cpus: float, num_gpus: float, memory: float, resources: dict[str, float] | None) -> dict:
    from runtime.work import InvalidRequest, validate_request

    if resources is not None and not isinstance(resources, dict):
        raise ValueError(f"resources: must be a dict of name to amount (got {type(resources).__name__})")
    req = {"CPU": _amount("num_cpus", num_cpus), "GPU": _amount("num_gpus", num_gpus),
           "memory": _amount("memory", memory)}
    for k, v in (resources or {}).items():
        req[k] = _amount(f"resources[{str(k)[:40]!r}]", v)
    try:
        validate_request(req)  # names, and how many
    except InvalidRequest as e:
        raise ValueError(str(e)) from None
    return {k: v for k, v in req.items() if v > 0}


def _timeout(timeout) -> float | None:
    if timeout is None:
        return None
    return _amount("timeout", timeout)


def _refs(refs, call: str) -> list[ObjectRef]:
    if isinstance(refs, ObjectRef):
        return [refs]
    if isinstance(refs, (list, tuple)) and all(isinstance(r, ObjectRef) for r in refs):
        return list(refs)
    raise TypeError(f"{call}() takes an ObjectRef or a list of them (got {type(refs).__name__})")


def _unknown_ids(fn: Callable, *args):
    """A call on ids the head does not know: one clear error, not the gRPC object."""
    import grpc

    try:
        return fn(*args)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise ValueError(f"{e.details()}: no task, actor or job of this cluster has it (never submitted, "
                             "or its result expired)") from None
        raise


PLACEMENT_OPTIONS = ("placement_group", "placement_group_bundle_index", "scheduling_strategy")


@dataclass(frozen=True)
class Placement:
    """Where work may go: a placement group's bundle, one node (affinity), or spread over the nodes."""

    pg_id: str = ""
    bundle_index: int = -1
    spread: bool = False
    node_id: str = ""  # hard affinity: it runs there or nowhere

    def fields(self) -> dict:
        return {"pg_id": self.pg_id, "bundle_index": self.bundle_index, "strategy": "SPREAD" if self.spread else ""}

    def request(self, request: dict[str, float]) -> dict[str, float]:
        if not self.node_id:
            return request
        from runtime.work import node_resource

        return {**request, node_resource(self.node_id): 0.001}


def _node_alive(node_id: str) -> bool:
    return any(n.node_id == node_id and n.state == "alive"
               for n in _reconnecting(lambda: _require().cluster_state()).nodes)


def _placement(opts: dict) -> Placement:
    """Where the work goes, from Ray's spellings: placement_group= with placement_group_bundle_index=, or
    scheduling_strategy= PlacementGroupSchedulingStrategy(...), NodeAffinitySchedulingStrategy(node_id,
    soft), "SPREAD" or "DEFAULT"."""
    strategy = opts.get("scheduling_strategy")
    pg, index = opts.get("placement_group"), opts.get("placement_group_bundle_index", -1)
    if isinstance(strategy, str):
        if strategy not in ("DEFAULT", "SPREAD"):
            raise ValueError(f"scheduling_strategy: 'DEFAULT', 'SPREAD' or a strategy object (got {strategy!r:.40})")
        if strategy == "SPREAD":
            return Placement(spread=True)
    elif strategy is not None and hasattr(strategy, "node_id"):  # NodeAffinitySchedulingStrategy
        node_id = strategy.node_id
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"NodeAffinitySchedulingStrategy: node_id must be a node's id (got {node_id!r:.40})")
        if strategy.soft and not _node_alive(node_id):
            return Placement()  # soft: anywhere, its node being gone
        return Placement(node_id=node_id)
    elif strategy is not None:
        pg = getattr(strategy, "placement_group", None)
        index = getattr(strategy, "placement_group_bundle_index", -1)
    if pg is None or pg == "default":
        return Placement()
    pg_id = getattr(pg, "id", None)
    if not isinstance(pg_id, str):
        raise TypeError(f"placement_group must be a PlacementGroup (got {type(pg).__name__})")
    if not isinstance(index, int) or index < -1:
        raise ValueError(f"placement_group_bundle_index must be an int >= -1 (got {index!r})")
    if pg.bundle_specs and index >= len(pg.bundle_specs):
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group has "
                         f"{len(pg.bundle_specs)} bundle(s)")
    return Placement(pg_id, index)


def _submit(kind: str, name: str, request: dict[str, float], payload: bytes | Callable, deps: list[str],
            max_retries: int, prefix: str, item_id: str | None = None, upload: bool = False, **fields) -> str:
    """Make an item id and hand the spec to the submitter; a payload too large for a message (or one given
    as what writes it, `pickled`) goes where the head keeps it first."""
    from runtime.proto import head_pb2 as pb

    if not callable(payload) and len(payload) > MAX_OBJECT_BYTES:
        raise ValueError(f"{name}: {too_large('payload with its arguments', len(payload))}")
    given = item_id is not None
    item_id = item_id or f"{prefix}-{uuid.uuid4().hex[:20]}"
    spec = pb.WorkSpec(kind=kind, name=name, request=pb.Resources(amounts=request), depends_on=deps,
                       max_retries=max_retries, parent_id=_parent(), **fields)
    conn = _connection()
    if callable(payload):  # a pickle too large for a message, written where the head keeps it
        spec.payload_size = _reconnecting(lambda: conn.client.upload_value(item_id, payload, fresh=not given))
    elif len(payload) > INLINE_BYTES or upload:  # (upload: kept on the head's disk, which nodes fetch from)
        fresh = not given  # (an id of the caller's may be an item's already: the head says so)
        _reconnecting(lambda: conn.client.upload_args(item_id, payload, fresh=fresh))
        spec.payload_size = len(payload)
    else:
        spec.payload = payload
    conn.enqueue(item_id, spec)
    return item_id


def put_as(item_id: str, payload: bytes, name: str, upload: bool = False) -> None:
    """An object under an id of the caller's, sent at once; one already there under that id is kept (the same
    contents: an archive named by its hash, a value an earlier attempt of a generator task yielded)."""
    _submit("object", name, {}, payload, [], 0, "o", item_id=item_id, upload=upload)
    try:
        _require()
    except ValueError as e:
        if "used twice" not in str(e):
            raise


def put(value) -> ObjectRef:
    """Store a value in the cluster once; its ref can be passed to any number of tasks and actors (as an
    argument of its own it arrives as the value) and fetched with get(). Kept on the head's disk while any
    process holds a ref to it, and a day at least (runtime/holding.py)."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself, or put its value")
    payload = pickled(value, "put")
    ref = ObjectRef(_submit("object", "put", {}, payload, [], 0, "o"))
    written_here = callable(payload) and _connection().client.shared_blobs() is not None
    ref._owned = _Owned(ref.id, _connection().client if written_here else None)
    weakref.finalize(ref, ref._owned.gone)
    if callable(payload):
        ref._local = WRITTEN_HERE if written_here else None
    elif len(payload) <= LOCAL_BYTES:
        ref._local = payload
    return ref


# a value put here keeps its pickle in its ref up to this size (Ray keeps those in its owner's memory)
LOCAL_BYTES = 100 << 10
WRITTEN_HERE = "written here"


def _local_value(ref: ObjectRef):
    """(a ref of a value this process put) Its value, read here; _MISSING if its file is not to be found
    (the head moved on: a new store), then the head is asked."""
    if isinstance(ref._local, bytes):
        return cloudpickle.loads(ref._local)
    stream = _connection().client.open_own_value(ref.id)
    if stream is None:
        return _MISSING
    with stream:
        return cloudpickle.load(stream)


_MISSING = object()


def pickled(value, name: str) -> bytes | Callable:
    """The pickle of a value, or, when it is too large for a message, what writes it to a file."""
    small = pickling.dumps_within(value, INLINE_BYTES)
    if small is not None:
        return small
    return lambda f: pickling.dump(value, f, MAX_OBJECT_BYTES, lambda n: f"{name}: {too_large('value', n)}")


def _deps(args, kwargs) -> list[str]:
    return sorted({a.id for a in [*args, *kwargs.values()] if isinstance(a, ObjectRef)})


def num_returns_of(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_returns: must be a whole number >= 0 (got {value!r:.40})")
    return value


def num_returns_spec(value) -> int | str:
    """num_returns as a task or method may have it: a whole number >= 0, or STREAMING ("dynamic", Ray's
    older name, is the same)."""
    return STREAMING if value in (STREAMING, "dynamic") else num_returns_of(value)


def _element(values, index: int, count: int):
    """(a task of its own) Element `index` of what a task with num_returns=count returned."""
    if not isinstance(values, (tuple, list)) or len(values) != count:
        got = f"{len(values)} values" if isinstance(values, (tuple, list)) else f"a {type(values).__name__}"
        raise ValueError(f"the task has num_returns={count} but returned {got}: it must return a tuple of {count}")
    return values[index]


_element_blob: list[bytes] = []


def split_returns(ref: ObjectRef, count: int, name: str) -> list[ObjectRef] | ObjectRef | None:
    """The refs of a task with num_returns=count: each value a task of no resources that takes its element
    (an error of the task is each one's error, as in Ray)."""
    if count == 1:
        return ref
    if count == 0:
        return None
    if not _element_blob:
        _element_blob.append(pickling.dumps(_element))
    return [ObjectRef(_submit("task", f"{name}[{i}]", {}, pickling.dumps((_element_blob[0], (ref, i, count), {})),
                              [ref.id], DEFAULT_MAX_RETRIES, "t")) for i in range(count)]


class _Retrying:
    """A task's function with retry_exceptions: an exception it raises (of the given types) runs it again,
    up to max_retries times, before it is the task's error."""

    def __init__(self, fn: Callable, retries: int, exceptions: tuple[type, ...]):
        self.fn, self.retries, self.exceptions = fn, retries, exceptions

    def __call__(self, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return self.fn(*args, **kwargs)
            except self.exceptions:
                if attempt == self.retries:
                    raise


def _retry_policy(retry_exceptions) -> tuple[type, ...]:
    if retry_exceptions is True:
        return (Exception,)
    if retry_exceptions is False or retry_exceptions is None:
        return ()
    if isinstance(retry_exceptions, (list, tuple)) and all(isinstance(e, type) and issubclass(e, BaseException)
                                                           for e in retry_exceptions):
        return tuple(retry_exceptions)
    raise TypeError(f"retry_exceptions: True, False or a list of exception types (got {retry_exceptions!r:.60})")


class RemoteFunction:
    def __init__(self, fn: Callable, num_cpus=1, num_gpus=0, memory=0, resources=None,
                 max_retries=DEFAULT_MAX_RETRIES, name: str | None = None, placement_group=None,
                 placement_group_bundle_index=-1, scheduling_strategy=None, num_returns=1, retry_exceptions=False,
                 runtime_env=None):
        self._fn = fn
        self._opts = dict(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, resources=resources,
                          max_retries=max_retries, name=name or getattr(fn, "__qualname__", "task"),
                          placement_group=placement_group, placement_group_bundle_index=placement_group_bundle_index,
                          scheduling_strategy=scheduling_strategy, num_returns=num_returns,
                          retry_exceptions=retry_exceptions, runtime_env=runtime_env)
        self._fn_blob: bytes | None = None  # the function pickled once, not on every call
        self._checked: tuple | None = None  # its options checked once, at the first call (see _check)
        functools.update_wrapper(self, fn)

    def options(self, **opts) -> RemoteFunction:
        unknown = set(opts) - set(self._opts)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return RemoteFunction(self._fn, **{**self._opts, **opts})

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._opts['name']} must be called with .remote(...)")

    def _check(self) -> tuple:
        """Its options checked and resolved, once (an instance's options never change: .options() makes
        another): (request, max_retries, streaming, num_returns, placement or None: resolved per call)."""
        from runtime.work import validate_request

        o = self._opts
        request = _request(o["num_cpus"], o["num_gpus"], o["memory"], o["resources"])
        validate_request(request)  # a bad request fails at the call, not later in the background
        spec = num_returns_spec(o["num_returns"])
        streaming = _streaming(self._fn, spec)
        count = 1 if streaming else spec
        retried = _retry_policy(o["retry_exceptions"])
        max_retries = o["max_retries"]
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
            raise ValueError(f"max_retries: must be an int >= 0, or -1 for no limit (got {max_retries!r:.40})")
        max_retries = 2**31 - 1 if max_retries == -1 else max_retries
        where = _placement(o)
        soft = getattr(o["scheduling_strategy"], "soft", False)  # where it goes depends on its node, now
        self._fn_blob = pickling.dumps(_Retrying(self._fn, max_retries, retried) if retried else self._fn)
        return request, max_retries, streaming, count, None if soft else where

    def remote(self, *args, **kwargs) -> ObjectRef | list[ObjectRef] | None:
        if self._checked is None:
            self._checked = self._check()
        request, max_retries, streaming, count, where = self._checked
        o = self._opts
        where = where or _placement(o)
        payload = pickling.dumps((self._fn_blob, args, kwargs))
        ref = ObjectRef(_submit("task", o["name"], where.request(request), payload, _deps(args, kwargs), max_retries,
                                "t", runtime_env=packed_runtime_env(o["runtime_env"]), **where.fields()))
        return ObjectRefGenerator(ref) if streaming else split_returns(ref, count, o["name"])


def _value(res, depth: int = 0) -> Any:
    if res.state == "finished":
        if res.stored:  # too large for a message: unpickled as it comes from the head, in chunks
            def load():
                import grpc

                try:
                    with _connection().client.open_result(res.id) as stream:
                        return cloudpickle.load(stream)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    raise ObjectLostError(f"the value of {res.id} is lost: the head no longer has its file "
                                          "(its machine restarted?)") from None

            return _reconnecting(load)
        return cloudpickle.loads(res.value)
    if res.error:
        cause, tb = cloudpickle.loads(res.error)
        msg = f"task {res.id} failed: {type(cause).__name__}: {cause}\n\nRemote traceback:\n{tb}"
        try:  # an error that is also the remote exception's type, so `except ZeroDivisionError` works
            cls = type(f"RayTaskError({type(cause).__name__})", (TaskError, type(cause)), {})
            err = cls.__new__(cls)
            TaskError.__init__(err, msg, cause, tb)
            err.args = (msg,)
        except TypeError:
            err = TaskError(msg, cause, tb)
        raise err from None
    from runtime.work import failed_dependency

    failed_dep = failed_dependency(res.message)
    if failed_dep and depth < 100:  # as in Ray: the error of the value it was given, not "dependency failed"
        try:
            (dep,) = _connection().get_results([failed_dep], 0)
        except Exception:  # noqa: BLE001  gone (expired): said as the head said it
            dep = None
        if dep is not None and dep.state != "finished":
            return _value(dep, depth + 1)
    raise error_for(res.id, res.state, res.message)


def get(refs: ObjectRef | list[ObjectRef], timeout: float | None = None):
    """The values of futures, in order; raises TaskError for a failed task, GetTimeoutError on timeout."""
    single = isinstance(refs, ObjectRef)
    ref_list = _refs(refs, "get")
    timeout = _timeout(timeout)
    ids = [r.id for r in ref_list]
    deadline = None if timeout is None else time.monotonic() + timeout
    for r in ref_list:
        if r._direct is not None and r._result is None:  # an actor call sent straight: its answer comes here
            if not r._direct.event.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                raise GetTimeoutError(f"the result of {r.id} was not ready within {timeout}s")
            r._result = _direct_result(r._direct)
    results = {r.id: r._result for r in ref_list if r._result is not None}
    local = {}
    for r in ref_list:
        if r._local is not None and r.id not in results and r.id not in local:
            value = _local_value(r)
            if value is not _MISSING:
                local[r.id] = value
    if len(local) == len(set(ids)):
        return local[ids[0]] if single else [local[i] for i in ids]
    wanted = list(dict.fromkeys(i for i in ids if i not in results and i not in local))
    if wanted:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        got = _unknown_ids(_connection().get_results, wanted, left)
        results.update((r.id, r) for r in got)
        _seen_done(got)
    missing = [i for i in ids if i not in results and i not in local]
    if missing:
        raise GetTimeoutError(f"{len(missing)} of {len(ids)} result(s) not ready within {timeout}s")
    values = [local[i] if i in local else _value(results[i]) for i in ids]
    return values[0] if single else values


def wait(refs: list[ObjectRef], num_returns: int = 1, timeout: float | None = None):
    """(ready, not_ready): the first num_returns futures that are done, or those done at the timeout."""
    refs = _refs(refs, "wait")
    timeout = _timeout(timeout)
    # (0, as in Ray: nothing to wait for; `wait([], num_returns=0)` sends what is queued to the head)
    num_returns_of(num_returns)
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) exceeds the number of futures ({len(refs)})")
    if any(r._direct is not None for r in refs):  # (answered here, maybe unknown to the head yet: not asked)
        done = _wait_with_direct(refs, num_returns, timeout)
    else:
        done = {r.id: r for r in _unknown_ids(lambda: _connection().get_results([r.id for r in refs], timeout,
                                                                               num_returns=num_returns))}
        _seen_done(done.values())
    for ref in refs:  # a `get` of these needs no second fetch
        if ref.id in done:
            ref._result = done[ref.id]
    ready = [r for r in refs if r.id in done][:num_returns]
    ready_ids = {r.id for r in ready}
    return ready, [r for r in refs if r.id not in ready_ids]


def _direct_result(pending):
    """(answered) The outcome of an actor call sent straight, or None if it went the head's way after all."""
    if pending.result is None:
        return None
    if pending.result.stored:  # a value too large for the answer: on the head's disk, which the head names once
        _connection().direct_calls().hand_over(pending)  # it knows the call (and before anyone else asks)
        _connection().flush()
    return pending.result


def _seen_done(results) -> None:
    conn = _conn
    if conn is not None and conn.direct is not None:
        conn.direct.seen_done([r.id for r in results])


def _wait_with_direct(refs: list[ObjectRef], num_returns: int, timeout: float | None) -> dict:
    """wait() among refs some of which are actor calls sent straight (answered here, not by the head): the
    head is asked for the others a short while at a time, and the answers here looked at in between."""
    direct = _connection().direct_calls()
    deadline = None if timeout is None else time.monotonic() + timeout
    step = 0.002
    while True:
        done = {}
        for r in refs:
            if r._result is None and r._direct is not None and r._direct.event.is_set():
                r._result = _direct_result(r._direct)
            if r._result is not None:
                done[r.id] = r._result
        others = [r.id for r in refs if r.id not in done  # (answered: `moved` is read only after that)
                  and (r._direct is None or (r._direct.event.is_set() and r._direct.moved))]
        left = None if deadline is None else deadline - time.monotonic()
        if len(done) >= num_returns or (left is not None and left <= 0):
            return done
        if others:  # the head's wait is the pause between looks here
            got = _unknown_ids(lambda: _connection().get_results(
                others, step if left is None else min(step, left), num_returns=num_returns - len(done)))
            _seen_done(got)
            done.update((r.id, r) for r in got)
            if len(done) >= num_returns:
                return done
            step = min(step * 2, 0.1)
        else:
            with direct.done:
                if not any(r._direct.event.is_set() for r in refs if r._direct is not None and r._result is None):
                    direct.done.wait(left)


def _parent() -> str:
    """The task, actor call or actor constructor this code runs in, if any (what submits from it is its
    child: cancel(recursive=True) reaches it)."""
    return current_task.get()  # ("" on a driver, and in a job: what a job submits outlives a cancel of it)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> str:
    """Cancel a task: dropped if queued, stopped if running (its process is killed, so `force` changes
    nothing); `recursive`: the tasks it submitted too. Returns its state after the request."""
    (ref,) = _refs(ref, "cancel")
    pending = ref._direct  # (an actor call sent straight: its node takes it out of the actor's line)
    if pending is not None and not (pending.event.is_set() and pending.moved):
        if not pending.event.is_set():
            _connection().direct_calls().cancel(pending)
            pending.event.wait(CANCEL_ANSWER_S)
        if not pending.moved:
            return pending.result.state if pending.result is not None else "running"
    return _unknown_ids(_require().cancel, ref.id, bool(recursive))


CANCEL_ANSWER_S = 1.0  # how long cancel() waits for the node's answer of a call sent straight to it
