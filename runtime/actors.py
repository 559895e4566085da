"""Actors: a class made remote. Its instance lives in a worker process of its own on one node, holding
the resources it asked for until it is killed; its methods run there one at a time, in the order they
were called from each caller.

    @runtime.remote
    class Counter:
        def __init__(self):
            self.n = 0
        def incr(self, by=1):
            self.n += by
            return self.n

    c = Counter.remote()                     # a handle; the actor starts as soon as a node has room
    runtime.get([c.incr.remote() for _ in range(3)])   # [1, 2, 3]
    runtime.kill(c)

Named actors (`Counter.options(name="counter").remote()`) are found with `get_actor("counter")`. An actor
whose node or process dies is made again elsewhere with its constructor's arguments up to `max_restarts`
times; the calls it had are run again up to `max_task_retries` times each, or fail with ActorDiedError.
An actor made by a driver (not detached: `lifetime="detached"`) is killed when that driver calls
`runtime.shutdown()` or exits.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from runtime import api, pickling
from runtime.api import ObjectRef
from runtime.exceptions import ActorDiedError  # noqa: F401 (the API's)


ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "max_restarts", "max_task_retries", "name",
                 "lifetime", "max_concurrency", "namespace", "get_if_exists", "runtime_env", *api.PLACEMENT_OPTIONS)

_owned: list[str] = []  # actors this driver made that end with it
_owned_lock = threading.Lock()
# This driver, to the head: its actors are killed once it stops saying it is alive (kill -9, a machine
# gone), as well as when it shuts down.
OWNER_ID = f"driver-{uuid.uuid4().hex}"
KEEP_ALIVE_S = 1.0
_keep_alive: threading.Thread | None = None


def _keep_alive_loop() -> None:
    while True:
        conn = api._conn
        if conn is not None:
            try:
                conn.client.keep_alive(OWNER_ID)
            except Exception:  # noqa: BLE001 - the head away: said again next time
                pass
        time.sleep(KEEP_ALIVE_S)  # a lease renewed on a period, not a wait for anything


def _start_keep_alive() -> None:
    global _keep_alive
    with _owned_lock:
        if _keep_alive is None:
            _keep_alive = threading.Thread(target=_keep_alive_loop, name="launch-keep-alive", daemon=True)
            _keep_alive.start()


class ActorClass:
    def __init__(self, cls: type, **opts):
        unknown = set(opts) - set(ACTOR_OPTIONS)
        if unknown:
            raise TypeError(f"unknown actor option(s): {', '.join(sorted(unknown))}")
        self._cls = cls
        self._opts = {"num_cpus": 0, "num_gpus": 0, "memory": 0, "resources": None, "max_restarts": 0,
                      "max_task_retries": 0, "name": None, "lifetime": None, "placement_group": None,
                      "placement_group_bundle_index": -1, "scheduling_strategy": None, "max_concurrency": None,
                      "namespace": None, "get_if_exists": False, "runtime_env": None, **opts}
        if self._opts["lifetime"] not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be 'detached' or 'non_detached' (got {self._opts['lifetime']!r})")
        self._blob: bytes | None = None
        self.__name__ = cls.__name__
        self.__qualname__ = getattr(cls, "__qualname__", cls.__name__)
        self.__doc__ = cls.__doc__

    def options(self, **opts) -> ActorClass:
        return ActorClass(self._cls, **{**self._opts, **opts})

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} must be made with .remote(...)")

    def remote(self, *args, **kwargs) -> ActorHandle:
        from runtime.work import validate_request

        o = self._opts
        request = api._request(o["num_cpus"], o["num_gpus"], o["memory"], o["resources"])
        validate_request(request)
        name = o["name"]
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError("an actor's name must be a non-empty string")
        for key in ("max_restarts", "max_task_retries"):
            if not isinstance(o[key], int) or o[key] < -1:
                raise ValueError(f"{key} must be an int >= 0, or -1 for no limit (got {o[key]!r})")
        concurrency = o["max_concurrency"]
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ValueError(f"max_concurrency must be an int >= 1 (got {concurrency!r:.40})")
        if o["get_if_exists"] and not name:
            raise ValueError("get_if_exists needs a name")
        key = _name_key(name, o["namespace"]) if name else ""
        if o["get_if_exists"]:
            found = _find_actor(key)
            if found is not None:
                return found
        where = api._placement(o)
        if self._blob is None:
            self._blob = pickling.dumps((self._cls, {"max_concurrency": concurrency}))
        payload = pickling.dumps((self._blob, args, kwargs))
        restarts = 2**31 - 1 if o["max_restarts"] == -1 else o["max_restarts"]
        if name:  # alone in its batch: a taken name refuses it, not the work submitted before it
            api._connection().flush()
        owned = o["lifetime"] != "detached" and _is_driver()
        if owned:
            _start_keep_alive()
        actor_id = api._submit("actor", self.__qualname__, where.request(request), payload, api._deps(args, kwargs),
                               restarts, "a", actor_name=key, owner_id=OWNER_ID if owned else "",
                               runtime_env=api.packed_runtime_env(o["runtime_env"]), **where.fields())
        if owned:
            with _owned_lock:
                _owned.append(actor_id)
        if name:  # a name already taken fails now, not in the background
            try:
                api._connection().flush()
            except ValueError:
                found = _find_actor(key) if o["get_if_exists"] else None  # made by another meanwhile
                if found is None:
                    raise
                return found
        return ActorHandle(actor_id, self.__qualname__, o["max_task_retries"], _method_returns(self._cls))


def method(*, num_returns: int | str = 1):
    """Decorator of an actor's method (Ray's `@ray.method`): how many values its calls return
    ("streaming": the refs of what it yields, as they come)."""
    spec = api.num_returns_spec(num_returns)

    def wrap(fn):
        fn.__launch_num_returns__ = spec
        return fn

    return wrap


def _method_returns(cls: type) -> dict[str, int | str]:
    """The methods of `cls` declared with @method(num_returns=N), N != 1, and its generators ("streaming")."""
    out: dict[str, int | str] = {}
    for name in dir(cls):
        fn = getattr(cls, name, None)
        count = getattr(fn, "__launch_num_returns__", 1)
        if api._streaming(fn, count):
            out[name] = api.STREAMING
        elif count != 1:
            out[name] = count
    return out


def _is_driver() -> bool:
    """Code run from a machine, or a job's own process (not a task or an actor inside it)."""
    caller = api._caller()
    return not caller or caller == os.environ.get("LAUNCH_JOB_ID")


class ActorHandle:
    """A reference to an actor: `handle.method.remote(...)` calls a method. Handles can be passed to tasks
    and to other actors."""

    def __init__(self, actor_id: str, class_name: str = "", max_task_retries: int = 0,
                 returns: dict[str, int] | None = None):
        self._actor_id = actor_id
        self._class_name = class_name
        self._max_task_retries = max_task_retries
        self._returns = returns or {}  # method -> num_returns, where not 1

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return ActorMethod(self, name, self._returns.get(name, 1))

    def __reduce__(self):
        return ActorHandle, (self._actor_id, self._class_name, self._max_task_retries, self._returns)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int = 1):
        self._handle, self._name, self._num_returns = handle, name, num_returns

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} must be called with .remote(...)")

    def options(self, max_task_retries: int | None = None, num_returns: int | None = None, **unknown) -> ActorMethod:
        if unknown:
            raise TypeError(f"unknown option(s) for an actor method: {', '.join(sorted(unknown))}")
        h = self._handle
        return ActorMethod(ActorHandle(h._actor_id, h._class_name,
                                       h._max_task_retries if max_task_retries is None else max_task_retries,
                                       h._returns), self._name,
                           self._num_returns if num_returns is None else api.num_returns_spec(num_returns))

    def remote(self, *args, **kwargs) -> ObjectRef | list[ObjectRef] | None:
        h = self._handle
        retries = 2**31 - 1 if h._max_task_retries == -1 else h._max_task_retries
        payload = pickling.dumps((self._name, args, kwargs))
        name = f"{h._class_name}.{self._name}"
        # straight to the actor's node where it can go (runtime/direct.py), else by the head
        item_id, pending = api._connection().direct_calls().call(h._actor_id, name, payload, api._deps(args, kwargs),
                                                                 retries, api._parent(), self._num_returns == 1)
        ref = ObjectRef(item_id)
        ref._direct = pending
        if self._num_returns == api.STREAMING:
            return api.ObjectRefGenerator(ref)
        return api.split_returns(ref, self._num_returns, name)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End an actor now: its process is killed, its resources freed, calls not run yet fail with
    ActorDiedError. no_restart=False: killed as if it had crashed, so it is made again (its
    constructor run again) while its max_restarts allow, its pending calls kept."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle (got {type(actor).__name__})")
    api._require().cancel(actor._actor_id, restart=not no_restart)
    api._connection().direct_calls().forget_place(actor._actor_id)  # (its node may not know it yet)
    if not no_restart:
        return
    with _owned_lock:
        if actor._actor_id in _owned:
            _owned.remove(actor._actor_id)


def _name_key(name: str, namespace: str | None) -> str:
    """An actor's name as the head keeps it: names are unique within a namespace (init(namespace=...) or
    the actor's own option); in none, unique in the cluster."""
    namespace = api.namespace() if namespace is None else namespace
    return f"{namespace}/{name}" if namespace else name


def _find_actor(key: str) -> ActorHandle | None:
    import grpc

    client = api._require()
    try:
        reply = api._reconnecting(lambda: client.get_actor(key))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return ActorHandle(reply.id, reply.class_name)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The live actor of that name (in this driver's namespace, or the one given); ValueError if none."""
    found = _find_actor(_name_key(name, namespace))
    if found is None:
        where = f" in namespace {namespace or api.namespace()!r}" if (namespace or api.namespace()) else ""
        raise ValueError(f"no live actor is named {name!r}{where}")
    return found


def end_owned(client) -> None:
    """(shutdown) Kill the actors this driver made that are not detached."""
    with _owned_lock:
        owned, _owned[:] = list(_owned), []
    for actor_id in owned:
        try:
            client.cancel(actor_id)
        except Exception:  # noqa: BLE001 - the head away: nothing more to do from here
            pass



api.on_disconnect(end_owned)  # a driver that leaves the cluster ends the actors it owns
