"""What the CLI does with a cluster: up and down (through the lifecycle), status, exec, attach, rsync.

Every command but `up` works on the ClusterSpec that `up` stored, so it talks to the same provider
state (keys, subnets) that `up` resolved; none of them re-runs bootstrap.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from core.config import ClusterConfig
from core.entry_points import NODE_CONTROL
from core.errors import LaunchError
from core.node import NodeInfo
from core.paths import (DASHBOARD_ADDRESS, DASHBOARD_LOGINS, HEAD_CLUSTER_STATE, LOGS, MONITOR_STATUS, for_node,
                        in_shell, node_log_name)
from transport.base import node_name
from core.tags import KIND_HEAD, KIND_WORKER
from lifecycle.cluster import Confirm, Lifecycle, Say, UpResult, bring_up, tear_down
from lifecycle.state import ClusterDir

# The autoscaler ticks every few seconds; a status older than this many ticks means it is not running.
STALE_TICKS = 4


def open_head_forward(lifecycle: Lifecycle, state: ClusterDir) -> str:
    """host:port on this machine that reaches the head service: a port forward on the launcher's SSH
    connection to the head (the service listens on the head's loopback and private IP only; the token
    never crosses a network in clear). For a local head, the service's own address."""
    head = lifecycle.require_head()
    address = state.read_info().get("head_address")
    if not address:
        raise LaunchError(f"cluster {state.name!r} has no known head service; run `launch up` again")
    host, port = address.rsplit(":", 1)
    local_host, local_port = lifecycle.runner(head).forward_port(host, int(port))
    return f"{local_host}:{local_port}"


class Cluster:
    def __init__(self, cfg: ClusterConfig, say: Say = lambda msg: None, home: Path | None = None):
        self.cfg = cfg
        self.dir = ClusterDir(cfg.cluster_name, home)
        self.say = say
        self._lifecycle: Lifecycle | None = None

    def _stored_lifecycle(self) -> Lifecycle | None:
        """The lifecycle on the spec `up` stored; None for a cluster never brought up (or down)."""
        if self._lifecycle is None:
            spec = self.dir.load_spec()
            if spec is not None:
                self._lifecycle = Lifecycle(spec, self.dir, self.say)
        return self._lifecycle

    @property
    def lifecycle(self) -> Lifecycle:
        lc = self._stored_lifecycle()
        if lc is None:
            raise LaunchError(f"cluster {self.cfg.cluster_name!r} is not up (no head node); run `launch up` first")
        return lc

    # --- up and down ----------------------------------------------------------------------------------

    def up(self, *, confirm: Confirm, restart_runtime: bool = False) -> UpResult:
        self._lifecycle, result = bring_up(self.cfg, self.dir, say=self.say, confirm=confirm,
                                           restart_runtime=restart_runtime)
        return result

    def down(self, keep_stopped: bool = False, purge: bool = False) -> int:
        self._lifecycle = None
        return tear_down(self.cfg, self.dir, say=self.say, keep_stopped=keep_stopped, purge=purge)

    # --- observation ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        return self.lifecycle.nodes()

    def status(self) -> dict:
        import grpc

        from runtime.client import HeadClient

        lc = self._stored_lifecycle()
        if lc is None:  # never up, or down: nothing to list
            return {"cluster": self.cfg.cluster_name, "provider": self.cfg.provider.kind, "head_address": None,
                    "runtime_error": None, "nodes": [], "pending_demand": [], "pending_groups": [], "infeasible": [],
                    "autoscaler": None}
        nodes = lc.nodes()
        info = self.dir.read_info()
        token = self.dir.existing_token()
        runtime: dict[str, object] = {}
        runtime_error = None
        infeasible: list[dict] = []
        demand: list[dict] = []
        groups: list[dict] = []
        head = next((n for n in nodes if n.kind == KIND_HEAD), None)
        if head is not None and info.get("head_address") and token:
            try:
                with HeadClient(open_head_forward(lc, self.dir), token, timeout_s=3) as client:
                    state = client.cluster_state()
                runtime = {n.node_id: n for n in state.nodes}
                demand = [{"shape": dict(d.shape.amounts), "count": d.count} for d in state.demand]
                infeasible = [{"shape": dict(d.shape.amounts), "count": d.count, "reason": d.reason}
                              for d in state.infeasible]
                groups = [{"bundles": [dict(b.amounts) for b in g.bundles], "strategy": g.strategy,
                           "count": g.count} for g in state.groups]
            except grpc.RpcError as e:
                runtime_error = f"head service at {info['head_address']} unreachable ({e.code().name})"
            except LaunchError as e:
                runtime_error = f"head node unreachable over SSH ({e})"
        now = time.time()
        rows = [_node_row(n, runtime.get(n.id), now) for n in nodes]
        return {
            "cluster": self.cfg.cluster_name,
            "provider": lc.spec.provider_kind,
            "head_address": info.get("head_address") if nodes else None,
            "runtime_error": runtime_error,
            "nodes": rows,
            "pending_demand": demand,
            "pending_groups": groups,
            "infeasible": infeasible,
            "autoscaler": self._autoscaler_status(head, now) if head is not None else None,
        }

    def dashboard_url(self) -> str:
        """A one-time login link to the head's dashboard, through a port forward on the launcher's SSH
        connection to the head (held while this process lives): the code is put on the head over SSH, is good
        once and for two minutes, and the browser trades it for a session."""
        from autoscaler.dashboard import code_name

        head = self.lifecycle.require_head()
        runner = self.lifecycle.runner(head)
        name = node_name(runner)
        raw = runner.read_file(for_node(DASHBOARD_ADDRESS, name))
        if not raw:
            raise LaunchError(f"the head of {self.cfg.cluster_name!r} serves no dashboard: its autoscaler is not "
                              "running (`launch up` starts it)")
        host, port = raw.decode().strip().rsplit(":", 1)
        code = secrets.token_urlsafe(24)
        runner.put_file(b"", f"{for_node(DASHBOARD_LOGINS, name)}/{code_name(code)}", mode=0o600)
        local_host, local_port = runner.forward_port(host, int(port))
        return f"http://{local_host}:{local_port}/login?code={code}"

    def _autoscaler_status(self, head: NodeInfo, now: float) -> dict:
        """The autoscaler's last tick as it wrote it, with whether its process runs and how old the tick is."""
        runner = self.lifecycle.runner(head)
        status: dict = {}
        pid = None
        try:
            raw = runner.read_file(for_node(MONITOR_STATUS, node_name(runner)))
            status = json.loads(raw) if raw else {}
            result = runner.run(f"{runner.python} -m {NODE_CONTROL} status", timeout=30)
            pid = json.loads(result.tail[-1]).get("monitor") if result.ok and result.tail else None
        except (LaunchError, ValueError) as e:
            status["error"] = f"cannot read the autoscaler's state on the head: {e}"
        updated = status.get("updated_at")
        age = None if updated is None else round(now - updated, 1)
        stale = age is None or age > STALE_TICKS * self.cfg.autoscaler.tick_s
        status.update(running=pid is not None, pid=pid, last_tick_age_s=age,
                      alive=pid is not None and not stale)
        return status

    def head_client(self):
        """A client of the head service, with this cluster's token."""
        from runtime.client import HeadClient

        lifecycle = self.lifecycle  # a cluster never brought up says so, not that it has no token
        token = self.dir.existing_token()
        if not token:
            raise LaunchError(f"cluster {self.cfg.cluster_name!r} has no token; run `launch up` again")
        return HeadClient(open_head_forward(lifecycle, self.dir), token, timeout_s=30)

    # --- commands on nodes --------------------------------------------------------------------------

    def node(self, node_id: str | None) -> NodeInfo:
        """The node with this id, or the head when None."""
        if node_id is None:
            return self.lifecycle.require_head()
        nodes = self.nodes()
        for n in nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in nodes) or "none"
        raise LaunchError(f"no node {node_id!r} in cluster {self.cfg.cluster_name!r} (nodes: {known})")

    def runner(self, node_id: str | None = None):
        return self.lifecycle.runner(self.node(node_id))

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
        from transport.file_sync import sync_up

        if not source.exists():
            raise LaunchError(f"{source}: no such file or directory")
        nodes = self.nodes() if all_nodes else [self.node(node_id)]
        return sum(sync_up(self.lifecycle.runner(n), source, target, self.cfg.rsync_exclude, self.cfg.rsync_filter)
                   for n in nodes)

    def rsync_down(self, source: str, target: Path, *, node_id: str | None = None) -> int:
        return self.runner(node_id).download(source, target)

    def head_ip(self) -> str:
        head = self.lifecycle.require_head()
        return head.external_ip or head.internal_ip or ""

    def worker_ips(self) -> list[str]:
        return [n.internal_ip or "" for n in self.nodes() if n.kind == KIND_WORKER]

    def monitor(self, on_output: Callable[[str], None], *, lines: int = 50, follow: bool = True) -> int:
        """The head's runtime log and, where the autoscaler runs, its event log (JSON lines)."""
        logs = f"{in_shell(LOGS)}/head.log {in_shell(LOGS)}/autoscaler.log"
        cmd = f"tail -n {int(lines)} {'-F ' if follow else ''}{logs} 2>/dev/null"
        return self.runner(None).run(cmd, on_output=on_output).exit_code

    def setup_log(self, node_id: str) -> str:
        """A node's setup log: the head's is here; the workers' are on the head, which set them up."""
        path = self.dir.node_log(node_id)
        if path.exists() and path.stat().st_size:
            return path.read_text(errors="replace")
        remote = f"{HEAD_CLUSTER_STATE}/{node_log_name(node_id)}"
        raw = self.runner(None).read_file(remote)
        if not raw:
            raise LaunchError(f"no setup log for node {node_id!r} (expected {path} here or {remote} on the head)")
        return raw.decode(errors="replace")


def _node_row(n, r, now: float) -> dict:
    """A node as `launch status` shows it: the provider's view, and the runtime's (r: its NodeState, or None)."""
    from runtime.work import own_resources

    return {
        "id": n.id, "kind": n.kind, "node_type": n.node_type, "status": n.status.value,
        "detail": n.detail,  # why it is not running yet, as the provider says (Slurm's reason)
        "status_age_s": round(now - n.status_since, 1),
        "ip": n.external_ip or n.internal_ip,
        "runtime": r.state if r is not None else "not registered",
        # its cloud takes it back (a spot notice): drained, its replacement on the way
        "preempting": ({"at": r.preempt_at, "in_s": round(r.preempt_at - now, 1), "reason": r.preempt_reason}
                       if r is not None and r.preempt_at else None),
        "resources_total": own_resources(r.total.amounts) if r is not None else {},
        "resources_available": own_resources(r.available.amounts) if r is not None else {},
        "launched_at": n.launched_at, "age_s": round(now - n.launched_at, 1),
    }
