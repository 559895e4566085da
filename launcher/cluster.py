"""Cluster lifecycle: up, down, status and exec, driven by one config and one provider.

`up` is idempotent: it compares each node's tags (status, launch hash, runtime hash) with the config
and redoes only what differs: a changed launch hash replaces the node, a changed runtime hash re-runs
file sync, setup and start on it, a dead runtime is restarted, and an unchanged cluster is left alone.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from launcher.bootstrap import NodeUpdateFailed, NodeUpdater, UpdatePlan
from launcher.config import ClusterConfig
from launcher.errors import LaunchError
from launcher.hashing import launch_hash, mounts_digest, runtime_hash
from launcher.node_status import NodeStatus
from launcher.state import ClusterDir
from providers import get_provider
from providers.base import (
    KIND_HEAD,
    KIND_WORKER,
    TAG_CLUSTER,
    TAG_KIND,
    TAG_LAUNCH_HASH,
    TAG_NODE_TYPE,
    TAG_RUNTIME_HASH,
    TAG_STATUS,
    NodeInfo,
)
from runtime.client import HeadClient
from runtime.node_config import NodeRuntimeConfig

Say = Callable[[str], None]
Confirm = Callable[[str], bool]

REGISTER_TIMEOUT_S = 60.0


@dataclass
class UpResult:
    head_address: str
    actions: list[str] = field(default_factory=list)
    failures: list[NodeUpdateFailed] = field(default_factory=list)


AUTOSCALER_CONFIG = "~/.launch-runtime/autoscaler.json"
AUTOSCALER_STATUS = "~/.launch-runtime/autoscaler-status.json"


class Cluster:
    def __init__(self, cfg: ClusterConfig, say: Say = lambda msg: None, home: Path | None = None):
        self.cfg = cfg
        self.dir = ClusterDir(cfg.cluster_name, home)
        self.provider = get_provider(cfg, self.dir.path)
        self.say = say

    # --- observation ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        return self.provider.list_nodes({TAG_CLUSTER: self.cfg.cluster_name})

    def head(self) -> NodeInfo | None:
        heads = [n for n in self.nodes() if n.kind == KIND_HEAD]
        return heads[0] if heads else None

    def require_head(self) -> NodeInfo:
        head = self.head()
        if head is None:
            raise LaunchError(f"cluster {self.cfg.cluster_name!r} is not up (no head node); run `launch up` first")
        return head

    # --- up -----------------------------------------------------------------------------------------

    def up(self, *, confirm: Confirm, restart_runtime: bool = False) -> UpResult:
        # from here on, the config as the provider completed it (keys, networks, resources of types)
        cfg = self.cfg = self.provider.bootstrap_config(self.cfg)
        token = self.dir.token()
        mounts = mounts_digest(cfg)
        restart = restart_runtime and not cfg.no_restart
        actions: list[str] = []

        head = self._ensure_head(cfg, confirm, actions)
        self._pause_monitor(head)  # one writer at a time: the autoscaler waits while `up` works
        head_rhash = runtime_hash(cfg, head.node_type, True, mounts)
        saved_port = int(self.dir.read_info().get("head_port", 0) or 0)
        head_port = self.provider.head_port or saved_port
        head_updater = self._updater(head, cfg, token, True, "", head_port, head_rhash)
        plan = self._plan(head, head_updater, head_rhash, restart)
        if plan is not None:
            self.say(f"head {head.id}: {'setting up' if plan.full else 'starting the runtime'}")
            head_updater.update(plan)  # a failed head fails `up`: nothing works without it
            actions.append(f"head {head.id}: {'set up' if plan.full else 'runtime started'}")
        head_address = head_updater.head_address or self._read_head_address(head_updater)
        self.dir.write_info(head_node_id=head.id, head_address=head_address,
                            head_port=int(head_address.rsplit(":", 1)[1]))

        workers = self._ensure_workers(cfg, confirm, actions)
        failures = self._update_workers(cfg, workers, token, head_address, mounts, restart, actions)
        failed = {f.node_id for f in failures}
        expected = {head.id} | {w.id for w in workers if w.id not in failed}
        self._wait_registered(head_address, token, expected)
        self._start_monitor(head, head_updater.runner)
        return UpResult(head_address, actions, failures)

    # --- the autoscaler on the head ------------------------------------------------------------------

    @property
    def autoscales(self) -> bool:
        """The monitor runs on the head where the provider's state is reachable from there."""
        return self.cfg.autoscaler.enabled and bool(getattr(self.provider, "supports_autoscaler", False))

    def _pause_monitor(self, head: NodeInfo) -> None:
        if self.autoscales and head.status == NodeStatus.UP_TO_DATE.value:
            runner = self.provider.command_runner(head)
            try:
                runner.run(f"{runner.python} -m runtime.node stop-monitor", timeout=60)
            except LaunchError:
                pass  # an unreachable head is handled by the update that follows

    def _start_monitor(self, head: NodeInfo, runner) -> None:
        if not self.autoscales:
            return
        settings = {
            "config": self.cfg.model_dump(mode="json"),
            "base_dir": str(self.cfg.base_dir),
            "launch_home": str(self.dir.path.parent.parent),
            "head_node_id": head.id,
        }
        runner.put_file(json.dumps(settings).encode(), AUTOSCALER_CONFIG, mode=0o600)
        runner.run(f"{runner.python} -m runtime.node start-monitor", check=True, timeout=60)

    def set_up_worker(self, node: NodeInfo, token: str, head_address: str, mounts: dict[str, str] | None = None,
                      restart: bool = False) -> str | None:
        """Bring a worker up to date (what `up` and the autoscaler both do). Returns what was done."""
        cfg = self.cfg
        rhash = runtime_hash(cfg, node.node_type, False, mounts, head_address=head_address)
        updater = self._updater(node, cfg, token, False, head_address, 0, rhash)
        plan = self._plan(node, updater, rhash, restart)
        if plan is None:
            return None
        updater.update(plan)
        return "set up" if plan.full else "runtime started"

    def _ensure_head(self, cfg: ClusterConfig, confirm: Confirm, actions: list[str]) -> NodeInfo:
        lhash = launch_hash(cfg, cfg.head_node_type)
        head = self.head()
        if head is not None and (head.tags.get(TAG_LAUNCH_HASH) != lhash or head.node_type != cfg.head_node_type):
            if not confirm(f"The head node {head.id} is outdated (its node config changed). Replace it?"):
                raise LaunchError("the head node is outdated and was not replaced; nothing changed")
            self.say(f"replacing outdated head {head.id}")
            self.provider.set_tags(head.id, {TAG_STATUS: NodeStatus.TERMINATING.value})
            self.provider.terminate_nodes([head.id])
            actions.append(f"head {head.id}: terminated (outdated)")
            head = None
        if head is None:
            self.say(f"creating head node ({cfg.head_node_type})")
            head = self.provider.create_nodes(cfg.head_node_type, 1, self._tags(KIND_HEAD, cfg.head_node_type, lhash))[0]
            actions.append(f"head {head.id}: created")
        return head

    def _ensure_workers(self, cfg: ClusterConfig, confirm: Confirm, actions: list[str]) -> list[NodeInfo]:
        """Replace outdated workers, drop those of removed types, and launch up to min_workers per type."""
        workers = [n for n in self.nodes() if n.kind == KIND_WORKER]
        stale = [
            w for w in workers
            if w.node_type not in cfg.available_node_types
            or w.tags.get(TAG_LAUNCH_HASH) != launch_hash(cfg, w.node_type)
        ]
        if stale:
            ids = ", ".join(w.id for w in stale)
            if not confirm(f"{len(stale)} worker(s) are outdated or of a removed node type ({ids}). Replace them?"):
                raise LaunchError("outdated workers were not replaced; stopping here")
            for w in stale:
                self.provider.set_tags(w.id, {TAG_STATUS: NodeStatus.TERMINATING.value})
            self.provider.terminate_nodes([w.id for w in stale])
            actions.append(f"{len(stale)} outdated worker(s) terminated")
            workers = [w for w in workers if w not in stale]
        for name, nt in cfg.available_node_types.items():
            have = sum(1 for w in workers if w.node_type == name)
            missing = nt.min_workers - have
            if missing > 0:
                self.say(f"creating {missing} worker(s) of type {name}")
                created = self.provider.create_nodes(name, missing, self._tags(KIND_WORKER, name, launch_hash(cfg, name)))
                workers.extend(created)
                actions.append(f"{len(created)} worker(s) of type {name}: created")
        return workers

    def _update_workers(self, cfg, workers, token, head_address, mounts, restart, actions) -> list[NodeUpdateFailed]:
        """Check and update every worker in parallel: a check is a round trip to the node, too."""
        if not workers:
            return []
        failures: list[NodeUpdateFailed] = []

        def run(w: NodeInfo):
            try:
                done = self.set_up_worker(w, token, head_address, mounts, restart)
                return (f"worker {w.id}: {done}" if done else None), None
            except NodeUpdateFailed as e:
                return None, e

        with ThreadPoolExecutor(max_workers=min(32, len(workers))) as pool:
            for done, err in pool.map(run, workers):
                if err is not None:
                    failures.append(err)
                    self.say(f"[red]worker {err.node_id} failed[/red]: {err} (log: {self.dir.node_log(err.node_id)})")
                elif done:
                    actions.append(done)
        return failures

    def _tags(self, kind: str, node_type: str, lhash: str) -> dict[str, str]:
        return {
            TAG_CLUSTER: self.cfg.cluster_name,
            TAG_KIND: kind,
            TAG_NODE_TYPE: node_type,
            TAG_LAUNCH_HASH: lhash,
            TAG_STATUS: NodeStatus.PENDING.value,
        }

    def _updater(self, node, cfg, token, is_head, head_address, head_port, rhash) -> NodeUpdater:
        nt = cfg.node_type(node.node_type)
        runtime_cfg = NodeRuntimeConfig(
            node_id=node.id,
            node_type=node.node_type,
            is_head=is_head,
            token=token,
            address=node.internal_ip or "127.0.0.1",
            head_address=head_address,
            bind_host=self.provider.head_bind_host,
            head_port=head_port,
            resources=dict(nt.resources),
            labels=dict(nt.labels),
            node_types={name: dict(t.resources) for name, t in cfg.available_node_types.items()} if is_head else {},
            heartbeat_interval_s=cfg.runtime.heartbeat_interval_s,
            node_timeout_s=cfg.runtime.node_timeout_s,
        )
        return NodeUpdater(
            self.provider, node, cfg, runtime_cfg,
            launch_hash=launch_hash(cfg, node.node_type), runtime_hash=rhash,
            log_path=self.dir.node_log(node.id),
        )

    @staticmethod
    def _plan(node: NodeInfo, updater: NodeUpdater, rhash: str, restart: bool) -> UpdatePlan | None:
        if node.status != NodeStatus.UP_TO_DATE.value:
            return UpdatePlan(full=True, restart_runtime=restart)
        if node.tags.get(TAG_RUNTIME_HASH) != rhash:
            # Setup changed on a running node: Ray's semantics, the runtime restarts unless no_restart.
            return UpdatePlan(full=True, restart_runtime=True)
        if restart:
            return UpdatePlan(full=False, restart_runtime=True)
        if not updater.runtime_running():
            return UpdatePlan(full=False, restart_runtime=False)
        return None

    @staticmethod
    def _read_head_address(updater: NodeUpdater) -> str:
        raw = updater.runner.read_file("~/.launch-runtime/head.address")
        if not raw:
            raise LaunchError(f"the head node {updater.node.id} runs no head service; run `launch up --restart-runtime`")
        return raw.decode().strip()

    def _wait_registered(self, head_address: str, token: str, node_ids: set[str]) -> None:
        self.say(f"waiting for {len(node_ids)} node(s) to register with the head")
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        missing = set(node_ids)
        with HeadClient(head_address, token, timeout_s=5) as client:
            while time.monotonic() < deadline:
                try:
                    alive = {n.node_id for n in client.cluster_state().nodes if n.state == "alive"}
                    missing = node_ids - alive
                    if not missing:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        logs = ", ".join(str(self.dir.node_log(n)) for n in sorted(missing))
        raise LaunchError(f"node(s) {', '.join(sorted(missing))} did not register with the head "
                          f"within {REGISTER_TIMEOUT_S:.0f}s; setup logs: {logs}")

    # --- down ---------------------------------------------------------------------------------------

    def down(self) -> int:
        nodes = self.nodes()
        workers = [n for n in nodes if n.kind != KIND_HEAD]
        heads = [n for n in nodes if n.kind == KIND_HEAD]
        for group in (workers, heads):  # workers first: the head is the last to know about them
            for n in group:
                self.provider.set_tags(n.id, {TAG_STATUS: NodeStatus.TERMINATING.value})
            if group:
                self.provider.terminate_nodes([n.id for n in group])
        left = self.nodes()
        if left:
            raise LaunchError(f"nodes still listed after terminate: {', '.join(n.id for n in left)}")
        self.dir.forget_runtime()
        return len(nodes)

    # --- status -------------------------------------------------------------------------------------

    def status(self) -> dict:
        nodes = self.nodes()
        info = self.dir.read_info()
        token = self.dir.existing_token()
        runtime: dict[str, object] = {}
        runtime_error = None
        if any(n.kind == KIND_HEAD for n in nodes) and info.get("head_address") and token:
            try:
                with HeadClient(info["head_address"], token, timeout_s=3) as client:
                    runtime = {n.node_id: n for n in client.cluster_state().nodes}
            except grpc.RpcError as e:
                runtime_error = f"head service at {info['head_address']} unreachable ({e.code().name})"
        now = time.time()
        rows = []
        for n in nodes:
            r = runtime.get(n.id)
            rows.append(
                {
                    "id": n.id,
                    "kind": n.kind,
                    "node_type": n.node_type,
                    "status": n.status,
                    "ip": n.external_ip or n.internal_ip,
                    "runtime": r.state if r is not None else "not registered",
                    "resources_total": dict(r.total.amounts) if r is not None else {},
                    "resources_available": dict(r.available.amounts) if r is not None else {},
                    "launched_at": n.launched_at,
                    "age_s": round(now - n.launched_at, 1),
                }
            )
        autoscaler = None
        head = next((n for n in nodes if n.kind == KIND_HEAD), None)
        if head is not None and self.autoscales:
            try:
                raw = self.provider.command_runner(head).read_file(AUTOSCALER_STATUS)
                autoscaler = json.loads(raw) if raw else None
            except (LaunchError, ValueError):
                autoscaler = None
        return {
            "cluster": self.cfg.cluster_name,
            "provider": self.cfg.provider.kind,
            "head_address": info.get("head_address") if nodes else None,
            "runtime_error": runtime_error,
            "nodes": rows,
            "autoscaler": autoscaler,
        }

    def head_client(self) -> HeadClient:
        """A client of the head service, with this cluster's token."""
        self.require_head()
        info, token = self.dir.read_info(), self.dir.existing_token()
        if not info.get("head_address") or not token:
            raise LaunchError(f"cluster {self.cfg.cluster_name!r} has no known head service; run `launch up` again")
        return HeadClient(info["head_address"], token, timeout_s=30)

    # --- commands on nodes --------------------------------------------------------------------------

    def node(self, node_id: str | None) -> NodeInfo:
        """The node with this id, or the head when None."""
        if node_id is None:
            return self.require_head()
        nodes = self.nodes()
        for n in nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in nodes) or "none"
        raise LaunchError(f"no node {node_id!r} in cluster {self.cfg.cluster_name!r} (nodes: {known})")

    def runner(self, node_id: str | None = None):
        return self.provider.command_runner(self.node(node_id))

    def exec(self, cmd: str, on_output: Callable[[str], None], *, node_id: str | None = None,
             session: str | None = None) -> int:
        """Run `cmd` on a node (the head by default); in a detached tmux/screen session if asked."""
        if session == "tmux":
            cmd = f"tmux new-session -d -s launch-{int(time.time())} {shlex.quote(cmd + '; exec bash')}"
        elif session == "screen":
            cmd = f"screen -dmS launch-{int(time.time())} bash -c {shlex.quote(cmd + '; exec bash')}"
        return self.runner(node_id).run(cmd, on_output=on_output).exit_code

    def attach(self, *, node_id: str | None = None, session: str | None = None, new: bool = False) -> int:
        if session == "tmux":
            command = "tmux new-session" if new else "tmux attach || tmux new-session"
        elif session == "screen":
            command = "screen -L" if new else "screen -D -R"
        else:
            command = None
        return self.runner(node_id).interactive(command)

    def rsync_up(self, source: Path, target: str, *, node_id: str | None = None, all_nodes: bool = False) -> int:
        from launcher.file_sync import sync_up

        if not source.exists():
            raise LaunchError(f"{source}: no such file or directory")
        nodes = self.nodes() if all_nodes else [self.node(node_id)]
        return sum(sync_up(self.provider.command_runner(n), source, target, self.cfg.rsync_exclude,
                           self.cfg.rsync_filter) for n in nodes)

    def rsync_down(self, source: str, target: Path, *, node_id: str | None = None) -> int:
        return self.runner(node_id).download(source, target)

    def head_ip(self) -> str:
        head = self.require_head()
        return head.external_ip or head.internal_ip or ""

    def worker_ips(self) -> list[str]:
        return [n.internal_ip or "" for n in self.nodes() if n.kind == KIND_WORKER]

    def monitor(self, on_output: Callable[[str], None], *, lines: int = 50, follow: bool = True) -> int:
        """The head's runtime log and, where the autoscaler runs, its event log (JSON lines)."""
        logs = "~/.launch-runtime/logs/head.log"
        if self.autoscales:
            logs += " ~/.launch-runtime/logs/autoscaler.log"
        cmd = f"tail -n {int(lines)} {'-F ' if follow else ''}{logs} 2>/dev/null"
        return self.runner(None).run(cmd, on_output=on_output).exit_code

    def setup_log(self, node_id: str) -> str:
        path = self.dir.node_log(node_id)
        if not path.exists() or not path.stat().st_size:
            raise LaunchError(f"no setup log for node {node_id!r} (expected {path})")
        return path.read_text(errors="replace")
