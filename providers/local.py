"""The `local` provider: nodes as process trees on this machine, no account needed.

A node is a directory (its HOME) plus a small "machine" process that stands in for the VM: the node is
alive while that process is. Every process started for the node carries the node marker
(core.paths.NODE_MARKER_ENV) in its environment, inherited by everything it spawns, jobs and tasks
included, so terminating the node finds and stops its whole tree, daemons included.

Node records and tags persist in a state file (under a lock, written atomically) whose folder is the
provider's bootstrap state, so any process holding the spec (the CLI, the head's autoscaler) sees the
same nodes. A record is written *before* the machine process starts: whatever dies when, a node is
findable from the moment it exists, and one whose machine never came up is swept.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from core.config import ClusterConfig
from core.errors import CapacityError, NodeNotFound
from core.files import locked_json
from core.machine import detect_cpus, detect_memory_bytes, pids_with_env
from core.paths import NODE_MARKER_ENV
from core.shm import forget_memory_under
from core.spec import ClusterSpec
from providers.base import Bootstrapped, Capabilities, CommonSection, NodeInfo, ProviderBase, ProviderFacts

LOCAL_IP = "127.0.0.1"
# a record without a live machine process this long after creation was interrupted: swept
START_GRACE_S = 10.0


FACTS = ProviderFacts(offline_bootstrap=True)


class Section(CommonSection):
    head_port: int = Field(default=0, ge=0, le=65535)
    # like a cloud out of stock: creating these node types fails with CapacityError (tests, demos)
    capacity_errors: list[str] = Field(default_factory=list)
    # like a flaky cloud: this share of create calls fails with CapacityError (chaos benches)
    create_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)


# --- process bookkeeping ---------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (guards against pid reuse), or None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def marked_pids(node_id: str) -> list[int]:
    """Every live process whose environment carries this node's marker."""
    return pids_with_env(NODE_MARKER_ENV, node_id)


def kill_node_processes(node_id: str, grace_s: float = 3.0) -> None:
    """SIGTERM the node's processes, then SIGKILL whatever is left after the grace period."""
    pids = marked_pids(node_id)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if process_start_time(p) is not None]
    for pid in marked_pids(node_id):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- bootstrap and the provider ------------------------------------------------------------------------


def config_problems(config: ClusterConfig) -> list[str]:
    """Rules of this provider that span the config, beyond its typed section: none."""
    return []


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    """Nothing to create: the state is where the nodes' records and homes live."""
    root = state_dir / "local"
    (root / "nodes").mkdir(parents=True, exist_ok=True)
    return Bootstrapped(state={"root": str(root.resolve())})


class Provider(ProviderBase):
    capabilities = Capabilities()  # the head is on this machine: same state file
    head_bind_host = LOCAL_IP

    section_model = Section  # (a provider built on this one reads its own section)

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = section = self.section_model.of(spec.config.provider)
        self.head_port = section.head_port
        self.capacity_errors = set(section.capacity_errors)
        self.create_failure_rate = section.create_failure_rate
        self.root = Path(spec.provider_state["root"])
        self.nodes_dir = self.root / "nodes"
        self.state_path = self.root / "nodes.json"

    def node_types(self) -> dict[str, dict[str, float]]:
        # a local node has the machine's CPUs and memory unless its type declares otherwise
        machine = {"CPU": detect_cpus(), "memory": detect_memory_bytes()}
        return {name: dict(machine) for name in self.spec.config.available_node_types}

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        if node_type in self.capacity_errors:
            raise CapacityError(node_type, "local", "listed in provider.capacity_errors")
        if self.create_failure_rate and random.random() < self.create_failure_rate:
            raise CapacityError(node_type, "local", "provider.create_failure_rate")
        created = []
        for _ in range(count):
            node_id = f"local-{secrets.token_hex(5)}"
            home = self.nodes_dir / node_id
            record = {"node_type": node_type, "tags": dict(tags), "pid": None, "start_time": None,
                      "launched_at": time.time()}
            with locked_json(self.state_path) as state:  # recorded first: never a node nobody knows
                state[node_id] = record
            home.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
            env.update({NODE_MARKER_ENV: node_id, "HOME": str(home)})
            proc = subprocess.Popen(
                [sys.executable, "-m", "providers.local_machine"],
                cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                with locked_json(self.state_path) as state:
                    known = node_id in state
                    if known:
                        state[node_id].update(pid=proc.pid, start_time=process_start_time(proc.pid))
                        record = state[node_id]
            except BaseException:  # the record could not name the machine (a full disk, Ctrl-C): no machine
                self._destroy(node_id)
                raise
            if not known:  # terminated while it was being created (e.g. by `down`)
                self._destroy(node_id)
                continue
            created.append(self._info(node_id, record))
        return created

    def _alive(self, record: dict) -> bool:
        if record["pid"] is None:  # created, machine not recorded yet: alive while young
            return time.time() - record["launched_at"] < START_GRACE_S
        st = process_start_time(record["pid"])
        return st is not None and st == record["start_time"]

    def _info(self, node_id: str, record: dict) -> NodeInfo:
        node_type = self.spec.config.available_node_types.get(record["node_type"])
        return NodeInfo(
            id=node_id, node_type=record["node_type"], state="running", tags=dict(record["tags"]),
            internal_ip=LOCAL_IP, external_ip=LOCAL_IP, launched_at=record["launched_at"],
            spot=bool(node_type and node_type.spot), local_home=str(self.nodes_dir / node_id),
        )

    def read_state(self) -> dict:
        """The state file as it is now, read without the lock (it is only ever replaced whole)."""
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        # read without the lock (the file is only ever replaced whole): a thousand nodes' list each tick
        # neither waits for writers nor rewrites the file; the lock is taken only to sweep the dead
        state = self.read_state()
        dead = [n for n, rec in state.items() if not self._alive(rec)]
        if dead:
            with locked_json(self.state_path) as locked:
                dead = [n for n in dead if n in locked and not self._alive(locked[n])]
                for node_id in dead:
                    del locked[node_id]
                state = dict(locked)
            for node_id in dead:  # a machine that died takes its processes and disk with it
                self._destroy(node_id)
        nodes = [self._info(nid, rec) for nid, rec in state.items()
                 if all(rec["tags"].get(k) == v for k, v in tag_filters.items())]
        return sorted(nodes, key=lambda n: n.launched_at)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with locked_json(self.state_path) as state:
            if node_id not in state:
                raise NodeNotFound(node_id)
            state[node_id]["tags"].update(tags)

    def terminate(self, node_ids: list[str]) -> None:
        # the machine goes first, its record last: a terminate cut short (Ctrl-C) leaves a record that the
        # next `list` sweeps or the next terminate ends, never a machine that no record names
        for node_id in node_ids:
            self._destroy(node_id)
        with locked_json(self.state_path) as state:
            for node_id in node_ids:
                state.pop(node_id, None)

    def _destroy(self, node_id: str) -> None:
        kill_node_processes(node_id)
        forget_memory_under(self.nodes_dir / node_id)  # (a head's values in memory, outside its folder)
        shutil.rmtree(self.nodes_dir / node_id, ignore_errors=True)
