"""The one lifecycle of a cluster's nodes: create, set up, drain, terminate; and `up`/`down` on top.

The head's monitor (autoscaler.monitor) is the cluster's one reconciler and calls these methods on the
spec `up` shipped; `up` itself only makes and sets up the head, ships the spec and waits for the monitor
to converge on it (lifecycle.reconciler). What is redone is decided from each node's tags (status,
launch hash, runtime hash, restart generation): a changed launch hash replaces the node, a changed
runtime hash re-runs file sync, setup and start on it, a dead runtime is restarted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import providers
from core.config import Container
from core.errors import LaunchError
from core.node import NodeInfo
from core.paths import HEAD_ADDRESS, for_node
from core.spec import ClusterSpec
from core.status import NodeStatus, can_transition, check_transition, initial_status_tags, status_tags
from core.tags import (
    KIND_HEAD, KIND_WORKER, TAG_CLUSTER, TAG_KIND, TAG_LAUNCH_HASH, TAG_NODE_TYPE, TAG_REQUEST_ID, TAG_RESTART_GEN,
    TAG_RUNTIME_HASH, TAG_MOUNTS,
)
from lifecycle.hashing import launch_hash, runtime_hash
from lifecycle.state import ClusterDir
from lifecycle.updater import NodeUpdateFailed, NodeUpdater, UpdatePlan
from runtime.node_config import NodeRuntimeConfig
from transport import SSHAuth, runner_for
from transport.base import CommandRunner, node_name
from transport.docker import ContainerRunner
from transport.file_sync import sync_up

Say = Callable[[str], None]
Confirm = Callable[[str], bool]

REGISTER_TIMEOUT_S = 60.0
DOWN_ROUNDS = 5  # a node created while `down` ran (by an autoscaler being stopped) is found next round


@dataclass
class UpResult:
    head_address: str
    actions: list[str] = field(default_factory=list)
    failures: list[NodeUpdateFailed] = field(default_factory=list)


class Lifecycle:
    def __init__(self, spec: ClusterSpec, state: ClusterDir, say: Say = lambda msg: None):
        self.spec = spec
        self.cfg = spec.config
        self.dir = state
        self.say = say
        self.provider = providers.build(spec)
        self.section = providers.section(spec.config)
        self.auth = SSHAuth(user=spec.ssh_user or "root", private_key=spec.ssh_private_key,
                            known_hosts=state.known_hosts, proxy_command=spec.config.auth.ssh_proxy_command,
                            connect_timeout_s=self.section.ssh_connect_timeout_s,
                            # the head reaches the workers over the cluster's private network
                            use_internal_ips=self.section.use_internal_ips or spec.on_head,
                            proxy_use_node_id=spec.config.auth.ssh_proxy_use_node_id,
                            pin_by_node_id=self.provider.capabilities.reuses_ips)
        self._runners: dict[str, CommandRunner] = {}
        self._runners_lock = threading.Lock()
        self._route: CommandRunner | None = None  # the head's runner, for workers (see runner())

    # --- observation ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        return self.provider.list({TAG_CLUSTER: self.spec.name})

    def head(self) -> NodeInfo | None:
        heads = [n for n in self.nodes() if n.kind == KIND_HEAD]
        return heads[0] if heads else None

    def require_head(self) -> NodeInfo:
        head = self.head()
        if head is None:
            raise LaunchError(f"cluster {self.spec.name!r} is not up (no head node); run `launch up` first")
        return head

    def container(self, node: NodeInfo) -> Container | None:
        """The container the node runs in (Ray's docker section), None: on its host."""
        return self.cfg.container_for(node.node_type, node.kind == KIND_HEAD)

    def runner(self, node: NodeInfo) -> CommandRunner:
        """How commands reach a node: its container's, where it runs in one, else its host's."""
        host = self.host_runner(node)
        container = self.container(node)
        return host if container is None else ContainerRunner(host, container)

    def host_runner(self, node: NodeInfo) -> CommandRunner:
        """How commands reach a node's host. From the laptop, a worker of an SSH cluster is reached through
        the head's SSH connection, at its private IP: the head's port 22 is all the laptop needs."""
        if self.provider.capabilities.self_starting and node.kind == KIND_WORKER:
            raise LaunchError(f"node {node.id} is simulated (provider type sim): it runs no commands")
        with self._runners_lock:
            if node.id in self._runners:
                return self._runners[node.id]
        via = None
        if not self.spec.on_head and node.kind == KIND_WORKER and node.local_home is None:
            via = self._head_route()
        with self._runners_lock:
            return self._runners.setdefault(node.id, runner_for(node, self.auth, via))

    def _head_route(self) -> CommandRunner | None:
        """The head's runner, through which this machine reaches the workers; found once, and the workers'
        host keys taken once, exactly as the head pinned them when it set the workers up."""
        if self._route is None:
            head = self.head()
            if head is None:
                return None
            from lifecycle.on_head import pull_known_hosts

            self._route = self.host_runner(head)
            pull_known_hosts(self.runner(head), self.dir.known_hosts)
        return self._route

    def close(self) -> None:
        with self._runners_lock:
            runners, self._runners, self._route = list(self._runners.values()), {}, None
        for r in runners:
            r.close()
        self.provider.close()

    # --- the node operations: create, set status, set up, terminate ---------------------------------

    def create(self, node_type: str, count: int, kind: str = KIND_WORKER, request_id: str | None = None) -> list[NodeInfo]:
        """Nodes tagged from birth with their cluster, type, launch hash and a pending status."""
        tags = {TAG_CLUSTER: self.spec.name, TAG_KIND: kind, TAG_NODE_TYPE: node_type,
                TAG_LAUNCH_HASH: launch_hash(self.cfg, node_type), **initial_status_tags(time.time())}
        if request_id:
            tags[TAG_REQUEST_ID] = request_id
        return self.provider.create(node_type, count, tags)

    def set_status(self, node: NodeInfo, new: NodeStatus) -> None:
        """Moves a node to `new` (InvalidTransition if the machine forbids it) and records when."""
        tags = status_tags(node.status, new, time.time())
        self.provider.set_tags(node.id, tags)
        node.tags.update(tags)

    def terminate(self, nodes: list[NodeInfo]) -> None:
        self._leaving(nodes)
        if nodes:
            self.provider.terminate([n.id for n in nodes])

    @property
    def caches_stopped_nodes(self) -> bool:
        return self.provider.capabilities.stop_start and self.provider.cache_stopped_nodes

    def sync_mounts(self, node: NodeInfo, sources: dict[str, str], stamp: str | None = None) -> int:
        """(file_mounts_sync_continuously) The file mounts synced to a node from `sources` (remote path ->
        where they are here), its setup not run again; its tag says which `stamp` it has (a worker's: the
        head's mounts as they were). Returns the number of files sent."""
        runner = self.runner(node)
        sent = sum(sync_up(runner, Path(local), remote, self.cfg.rsync_exclude, self.cfg.rsync_filter)
                   for remote, local in sorted(sources.items()))
        if stamp:
            self.provider.set_tags(node.id, {TAG_MOUNTS: stamp})
            node.tags[TAG_MOUNTS] = stamp
        return sent

    def retire(self, nodes: list[NodeInfo]) -> None:
        """A healthy node leaves the cluster: stopped where the provider caches stopped nodes (Ray's
        cache_stopped_nodes), so the next scale-up starts it again with its disk (the runtime
        installed, the files synced); else terminated."""
        (self.stop if self.caches_stopped_nodes else self.terminate)(nodes)

    def stop(self, nodes: list[NodeInfo]) -> None:
        """Stopped, keeping their disks, where the provider can stop instances; a spot node (which
        cannot be started again) and any node of a provider that cannot stop are terminated."""
        if not self.provider.capabilities.stop_start:
            return self.terminate(nodes)
        stop = [n for n in nodes if not n.spot]
        self._leaving(stop)
        if stop:
            self.provider.stop([n.id for n in stop])
        self.terminate([n for n in nodes if n.spot])

    def _leaving(self, nodes: list[NodeInfo]) -> None:
        for n in nodes:
            if can_transition(n.status, NodeStatus.TERMINATING):
                try:
                    self.set_status(n, NodeStatus.TERMINATING)
                except (LaunchError, OSError):
                    pass  # gone already, or its status cannot be written (a full disk): it goes all the same
        with self._runners_lock:
            runners = [self._runners.pop(n.id) for n in nodes if n.id in self._runners]
            if self._route in runners:
                self._route = None
        for r in runners:
            r.close()

    def node_runtime_config(self, node: NodeInfo, token: str, is_head: bool, head_address: str,
                            head_port: int) -> NodeRuntimeConfig:
        nt = self.cfg.node_type(node.node_type)
        facts = providers.facts(self.spec.provider_kind)
        return NodeRuntimeConfig(
            node_id=node.id, node_type=node.node_type, is_head=is_head, token=token,
            address=node.internal_ip or "127.0.0.1", head_address=head_address,
            bind_host=self.provider.head_bind_host, head_port=head_port,
            # as resolved in the spec (declared, else the provider's catalog): what the planner counts on
            resources=self.spec.resources_of(node.node_type), labels=dict(nt.labels),
            # head only: what each node type has, judged the same way as the planner judges it
            node_types=dict(self.spec.node_resources) if is_head else {},
            heartbeat_interval_s=self.cfg.runtime.heartbeat_interval_s,
            node_timeout_s=self.cfg.runtime.node_timeout_s,
            owner_timeout_s=self.cfg.runtime.owner_timeout_s,
            notices=facts.notices if node.spot or facts.notices_on_every_node else "",
        )

    def updater(self, node: NodeInfo, token: str, *, is_head: bool, head_address: str = "",
                head_port: int = 0) -> NodeUpdater:
        rhash = runtime_hash(self.spec, node.node_type, is_head, "" if is_head else head_address)
        return NodeUpdater(
            self.provider, self.host_runner(node), self.container(node), node, self.spec,
            self.node_runtime_config(node, token, is_head, head_address, head_port),
            launch_hash=launch_hash(self.cfg, node.node_type), runtime_hash=rhash,
            log_path=self.dir.node_log(node.id), wait_ready_s=self.section.node_wait_s(),
        )

    def update_plan(self, node: NodeInfo, updater: NodeUpdater) -> UpdatePlan | None:
        """What a node needs, from its tags: a node not up to date is set up; one whose runtime last started
        before the spec's restart generation (`up --restart-runtime`) restarts it."""
        restart = int(node.tags.get(TAG_RESTART_GEN) or 0) < self.spec.restart_generation
        if node.status != NodeStatus.UP_TO_DATE:
            return UpdatePlan(full=True, restart_runtime=restart)
        if node.tags.get(TAG_RUNTIME_HASH) != updater.runtime_hash:
            # setup changed on a running node: Ray's semantics, the runtime restarts unless no_restart
            return UpdatePlan(full=True, restart_runtime=True)
        if restart:
            return UpdatePlan(full=False, restart_runtime=True)
        if not updater.runtime_running():
            # a node in a container whose runtime is not running may have lost the container (its host
            # restarted): it is made again, with its setup
            return UpdatePlan(full=updater.container is not None, restart_runtime=False)
        return None

    def set_up_worker(self, node: NodeInfo, token: str, head_address: str) -> str | None:
        """Bring a worker up to date (the head's monitor does, for every worker). Returns what was done."""
        if self.provider.capabilities.self_starting:
            return self._boot_ready(node, head_address)
        updater = self.updater(node, token, is_head=False, head_address=head_address)
        plan = self.update_plan(node, updater)
        if plan is None:
            return None
        updater.update(plan)
        return "set up" if plan.full else "runtime restarted" if plan.restart_runtime else "runtime started"

    def _boot_ready(self, node: NodeInfo, head_address: str) -> str | None:
        """(a self-starting provider: sim) The node boots ready: it goes through the states a set-up goes
        through, each allowed by the machine, with nothing done at any, in one write of its tags; its
        agent registers by itself."""
        rhash = runtime_hash(self.spec, node.node_type, False, head_address)
        if node.status == NodeStatus.DRAINING or (
                node.status == NodeStatus.UP_TO_DATE and node.tags.get(TAG_RUNTIME_HASH) == rhash):
            return None
        self.provider.wait_booted(node)
        status = node.status
        for step in (NodeStatus.WAITING_FOR_SSH, NodeStatus.SYNCING_FILES, NodeStatus.SETTING_UP, NodeStatus.UP_TO_DATE):
            if status != NodeStatus.UP_TO_DATE:
                status = check_transition(status, step)
        tags = {**status_tags(NodeStatus.SETTING_UP, NodeStatus.UP_TO_DATE, time.time()), TAG_RUNTIME_HASH: rhash,
                TAG_LAUNCH_HASH: launch_hash(self.cfg, node.node_type),
                TAG_RESTART_GEN: str(self.spec.restart_generation)}
        self.provider.set_tags(node.id, tags)
        node.tags.update(tags)
        return "booted (simulated)"

    # --- up -----------------------------------------------------------------------------------------

    def up(self, token: str, *, confirm: Confirm) -> UpResult:
        """The head is made and set up from here; then it gets the spec, key and mounts, and its monitor
        (the cluster's one reconciler) launches, updates and replaces the workers over their private IPs,
        while `up` waits for it to say the spec's generation has converged."""
        from lifecycle.on_head import pull_known_hosts, ship
        from lifecycle.reconciler import signal_monitor, wait_for_round

        actions: list[str] = []
        head = self._ensure_head(confirm, actions)
        stale = self.stale_workers()
        if stale and not confirm(f"{len(stale)} worker(s) are outdated or of a removed node type "
                                 f"({', '.join(w.id for w in stale)}). Replace them?"):
            raise LaunchError("outdated workers were not replaced; stopping here")
        head_address = self._set_up_head(head, token, actions)
        runner = self.runner(head)
        ship(self.spec, runner, self.dir.known_hosts)
        signal_monitor(runner)
        timeout = self.cfg.autoscaler.launch_timeout_minutes * 60 + REGISTER_TIMEOUT_S
        done = wait_for_round(runner, self.spec.generation, self.say, timeout)
        pull_known_hosts(runner, self.dir.known_hosts)  # the workers' keys, as the head pinned them
        if done.errors:
            raise LaunchError("; ".join(done.errors))
        failures = [NodeUpdateFailed(**f) for f in done.failures]
        return UpResult(head_address, actions + done.actions, failures)

    def stale_workers(self) -> list[NodeInfo]:
        """Workers whose node config changed, or whose type is gone: replaced once `up` is confirmed."""
        types = self.cfg.available_node_types
        return [w for w in self.nodes() if w.kind == KIND_WORKER and w.status != NodeStatus.TERMINATING
                and (w.node_type not in types or w.tags.get(TAG_LAUNCH_HASH) != launch_hash(self.cfg, w.node_type))]

    def _set_up_head(self, head: NodeInfo, token: str, actions: list[str]) -> str:
        saved_port = int(self.dir.read_info().get("head_port", 0) or 0)
        updater = self.updater(head, token, is_head=True, head_port=self.provider.head_port or saved_port)
        plan = self.update_plan(head, updater)
        if plan is not None:
            self.say(f"head {head.id}: {'setting up' if plan.full else 'starting the runtime'}")
            updater.update(plan)  # a failed head fails `up`: nothing works without it
            actions.append(f"head {head.id}: {'set up' if plan.full else 'runtime started'}")
        elif self.cfg.file_mounts_sync_continuously and self.spec.file_mounts:
            # their contents are in no hash: synced to the head on every `up`, and from there to the workers
            sent = self.sync_mounts(head, self.spec.file_mounts)
            if sent:
                actions.append(f"head {head.id}: {sent} file(s) of its file mounts synced")
        address = updater.head_address or self._read_head_address(head)
        # how this machine reaches it: a local head directly, any other through SSH (launcher.tunnel)
        reach = "direct" if head.local_home is not None else "ssh"
        self.dir.write_info(head_node_id=head.id, head_address=address, head_port=int(address.rsplit(":", 1)[1]),
                            head_reach=reach)
        return address

    def _read_head_address(self, head: NodeInfo) -> str:
        runner = self.runner(head)
        raw = runner.read_file(for_node(HEAD_ADDRESS, node_name(runner)))
        if not raw:
            raise LaunchError(f"the head node {head.id} runs no head service; run `launch up --restart-runtime`")
        return raw.decode().strip()

    def _ensure_head(self, confirm: Confirm, actions: list[str]) -> NodeInfo:
        head_type = self.cfg.head_node_type
        head = self.head()
        if head is not None and (head.tags.get(TAG_LAUNCH_HASH) != launch_hash(self.cfg, head_type)
                                 or head.node_type != head_type):
            if not confirm(f"The head node {head.id} is outdated (its node config changed). Replace it?"):
                raise LaunchError("the head node is outdated and was not replaced; nothing changed")
            self.say(f"replacing outdated head {head.id}")
            self.terminate([head])  # its monitor with it: the new head's monitor takes the workers over
            actions.append(f"head {head.id}: terminated (outdated)")
            head = None
        if head is None:
            self.say(f"creating head node ({head_type})")
            head = self.create(head_type, 1, KIND_HEAD)[0]
            actions.append(f"head {head.id}: created")
        return head

    # --- down ---------------------------------------------------------------------------------------

    def down(self, keep_stopped: bool = False, purge: bool = False) -> int:
        """The head's monitor removes the workers (it reaches them on their private network) and stops;
        then this machine terminates until nothing is listed, the head and cached stopped nodes included.
        `keep_stopped`: stop the nodes instead and keep them stopped."""
        from lifecycle.reconciler import monitor_down

        gone = 0
        for head in [n for n in self.nodes() if n.kind == KIND_HEAD and n.status == NodeStatus.UP_TO_DATE]:
            try:
                removed = monitor_down(self.runner(head), keep_stopped, self.say)
                self.say(f"the head's autoscaler removed {removed} worker(s)")
                gone += removed
            except LaunchError as e:
                self.say(f"the head did not remove the workers ({e}); removing them from here")
        gone += self._terminate_rounds(lambda n: True, keep_stopped)
        if self.provider.capabilities.stop_start and not keep_stopped:
            cached = self.provider.stopped({TAG_CLUSTER: self.spec.name})
            if cached:
                self.provider.terminate([n.id for n in cached])
                gone += len(cached)
        if not keep_stopped and self.provider.capabilities.cleanup:
            # what bootstrap made for this cluster alone (gcp: its firewall rules); with purge, what it
            # made and keeps otherwise (azure: the resource group it created)
            for line in self.provider.cleanup(purge) or []:
                self.say(line)
        self.close()
        return gone

    def terminate_workers(self, keep_stopped: bool = False) -> int:
        """Every worker removed (the monitor's part of `down`)."""
        return self._terminate_rounds(lambda n: n.kind == KIND_WORKER, keep_stopped)

    def _terminate_rounds(self, which: Callable[[NodeInfo], bool], keep_stopped: bool = False) -> int:
        gone: set[str] = set()
        end = self.stop if keep_stopped else self.terminate
        nodes = [n for n in self.nodes() if which(n)]
        for _ in range(DOWN_ROUNDS):
            if not nodes:
                break
            workers = [n for n in nodes if n.kind != KIND_HEAD]
            heads = [n for n in nodes if n.kind == KIND_HEAD]
            for group in (workers, heads):  # workers first: the head is the last to know about them
                end(group)
                gone |= {n.id for n in group}
            nodes = [n for n in self.nodes() if which(n)]
        if nodes:
            raise LaunchError(f"nodes still listed after terminate: {', '.join(n.id for n in nodes)}")
        return len(gone)


# --- the whole commands, each under the cluster's lock ------------------------------------------------


def bring_up(config, state: ClusterDir, *, say: Say, confirm: Confirm, restart_runtime: bool = False
             ) -> tuple[Lifecycle, UpResult]:
    """`launch up`: resolve the spec (bootstrap, once) with a new generation, store it, and have the head
    converge on it."""
    from lifecycle.spec import resolve

    with state.locked("up", say):
        previous = state.load_spec()
        spec = resolve(config, state.path, say)
        # generations are this `up`'s time (ms): new for every `up`, from any machine, without asking the head
        spec.generation = time.time_ns() // 1_000_000
        restart = restart_runtime and not config.no_restart
        spec.restart_generation = spec.generation if restart else (previous.restart_generation if previous else 0)
        state.save_spec(spec)  # before any node exists: a failed `up` can still be brought down
        lifecycle = Lifecycle(spec, state, say)
        return lifecycle, lifecycle.up(state.token(), confirm=confirm)


def tear_down(config, state: ClusterDir, *, say: Say, keep_stopped: bool = False, purge: bool = False) -> int:
    """`launch down`: with the spec `up` stored (or, if lost, one that creates nothing), the head's
    autoscaler removes the workers and stops; every node left is terminated from here; the cluster's
    runtime state is forgotten."""
    from lifecycle.spec import unbootstrapped

    with state.locked("down", say):
        spec = state.load_spec() or unbootstrapped(config, state.path)
        n = Lifecycle(spec, state, say).down(keep_stopped, purge)
        state.forget_runtime()
        return n
