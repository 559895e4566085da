"""The `local` provider: nodes as process trees on this machine, no account needed.

A node is a directory (its HOME) plus a small "machine" process that stands in for the VM: the node is
alive while that process is. Every process started for the node carries `LAUNCH_LOCAL_NODE=<id>` in its
environment, inherited by everything it spawns, so terminating the node finds and stops its whole tree,
daemons included, by reading /proc/*/environ. Node records and tags persist across CLI runs in a state
file written atomically under a lock.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.command_runner import LocalCommandRunner
from launcher.config import ClusterConfig
from providers.base import CapacityError, NodeInfo, NodeNotFound
from providers.state_file import locked_json

MARKER_ENV = "LAUNCH_LOCAL_NODE"
LOCAL_IP = "127.0.0.1"


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
    needle = f"{MARKER_ENV}={node_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


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


# --- the provider ------------------------------------------------------------------------------------


class LocalProvider:
    head_bind_host = LOCAL_IP
    # the head is on this machine, so the autoscaler there reaches the same state file
    supports_autoscaler = True

    def __init__(self, cfg: ClusterConfig, cluster_dir: Path):
        self.cfg = cfg
        self.root = cluster_dir / "local"
        self.nodes_dir = self.root / "nodes"
        self.state_path = self.root / "nodes.json"
        self.head_port = int(cfg.provider.extra.get("head_port", 0))
        # Like a cloud out of stock: creating these node types fails with CapacityError (to try fallback)
        self.capacity_errors = set(cfg.provider.extra.get("capacity_errors", []))
        self.nodes_dir.mkdir(parents=True, exist_ok=True)

    def _locked_state(self):
        """{node_id: {node_type, tags, pid, start_time, launched_at}}, under the provider's lock."""
        return locked_json(self.state_path)

    def bootstrap_config(self, cfg: ClusterConfig) -> ClusterConfig:
        return cfg  # nothing to create: no keys, networks or images on this machine

    def create_nodes(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        if node_type in self.capacity_errors:
            raise CapacityError(node_type, "local", "listed in provider.capacity_errors")
        created = []
        for _ in range(count):
            node_id = f"local-{secrets.token_hex(5)}"
            home = self.nodes_dir / node_id
            home.mkdir(parents=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
            env.update({MARKER_ENV: node_id, "HOME": str(home)})
            proc = subprocess.Popen(
                [sys.executable, "-m", "providers.local_machine"],
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            start_time = process_start_time(proc.pid)
            record = {
                "node_type": node_type,
                "tags": dict(tags),
                "pid": proc.pid,
                "start_time": start_time,
                "launched_at": time.time(),
            }
            with self._locked_state() as state:
                state[node_id] = record
            created.append(self._info(node_id, record))
        return created

    def _alive(self, record: dict) -> bool:
        st = process_start_time(record["pid"])
        return st is not None and st == record["start_time"]

    def _info(self, node_id: str, record: dict) -> NodeInfo:
        node_type = self.cfg.available_node_types.get(record["node_type"])
        return NodeInfo(
            id=node_id,
            node_type=record["node_type"],
            state="running",
            tags=dict(record["tags"]),
            internal_ip=LOCAL_IP,
            external_ip=LOCAL_IP,
            launched_at=record["launched_at"],
            spot=bool(node_type and node_type.spot),
        )

    def list_nodes(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        dead = []
        with self._locked_state() as state:
            for node_id in list(state):
                if not self._alive(state[node_id]):
                    dead.append(node_id)
                    del state[node_id]
            nodes = [
                self._info(nid, rec)
                for nid, rec in state.items()
                if all(rec["tags"].get(k) == v for k, v in tag_filters.items())
            ]
        for node_id in dead:  # a machine that died takes its processes and disk with it
            self._destroy(node_id)
        return sorted(nodes, key=lambda n: n.launched_at)

    def get_node(self, node_id: str) -> NodeInfo:
        for n in self.list_nodes({}):
            if n.id == node_id:
                return n
        raise NodeNotFound(node_id)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._locked_state() as state:
            if node_id not in state:
                raise NodeNotFound(node_id)
            state[node_id]["tags"].update(tags)

    def terminate_nodes(self, node_ids: list[str]) -> None:
        with self._locked_state() as state:
            for node_id in node_ids:
                state.pop(node_id, None)
        for node_id in node_ids:
            self._destroy(node_id)

    def _destroy(self, node_id: str) -> None:
        kill_node_processes(node_id)
        shutil.rmtree(self.nodes_dir / node_id, ignore_errors=True)

    def command_runner(self, node: NodeInfo) -> LocalCommandRunner:
        return LocalCommandRunner(
            home=self.nodes_dir / node.id, env={MARKER_ENV: node.id}, python=sys.executable
        )
