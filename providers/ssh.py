"""The `ssh` provider: a fixed pool of on-prem hosts (Ray's `type: local` with head_ip/worker_ips).

"Creating" a node claims a free host of the pool; "terminating" stops the runtime on it and frees it.
Claims (with the node's tags) persist across CLI runs in the cluster's state dir. A host is written
`host` or `host:port`; `provider.ssh_port` is the default port.
"""

from __future__ import annotations

import time
from pathlib import Path

from launcher.config import ClusterConfig, split_host_port
from launcher.errors import ConfigError
from launcher.ssh import SSHCommandRunner
from providers.base import KIND_HEAD, TAG_KIND, NodeInfo, NodeNotFound
from providers.state_file import locked_json

DEFAULT_HEAD_PORT = 6380
TERMINATE_CONNECT_TIMEOUT_S = 5.0


def parse_host(spec: str, default_port: int) -> tuple[str, int]:
    try:
        return split_host_port(spec, default_port)
    except ValueError as e:
        raise ConfigError(f"provider: host {e}") from None


def node_id(host: str, port: int) -> str:
    return f"{host}:{port}"


class SSHProvider:
    # the pool's claims live on the launcher's machine: `up` sizes the cluster (min_workers)
    supports_autoscaler = False

    def __init__(self, cfg: ClusterConfig, cluster_dir: Path):
        self.cfg = cfg
        prov = cfg.provider
        default_port = int(prov.extra.get("ssh_port", 22))
        self.head_host = parse_host(prov.head_ip, default_port)
        self.worker_hosts = [parse_host(h, default_port) for h in prov.worker_ips or []]
        self.head_port = int(prov.extra.get("head_port", DEFAULT_HEAD_PORT))
        self.head_bind_host = str(prov.extra.get("head_bind_host", "0.0.0.0"))
        self.claims_path = cluster_dir / "ssh" / "claims.json"
        self.known_hosts = cluster_dir / "known_hosts"
        self._runners: dict[str, SSHCommandRunner] = {}

    def bootstrap_config(self, cfg: ClusterConfig) -> ClusterConfig:
        return cfg  # the hosts exist already: nothing to create

    def create_nodes(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        pool = [self.head_host] if tags.get(TAG_KIND) == KIND_HEAD else self.worker_hosts
        created = []
        with locked_json(self.claims_path) as claims:
            for host, port in pool:
                if len(created) == count:
                    break
                nid = node_id(host, port)
                if nid in claims:
                    continue
                claims[nid] = {"node_type": node_type, "tags": dict(tags), "launched_at": time.time()}
                created.append(self._info(nid, claims[nid]))
        return created  # fewer than asked when the pool is used up: not an error

    def _info(self, nid: str, claim: dict) -> NodeInfo:
        host = nid.rsplit(":", 1)[0]
        return NodeInfo(id=nid, node_type=claim["node_type"], state="running", tags=dict(claim["tags"]),
                        internal_ip=host, external_ip=host, launched_at=claim["launched_at"])

    def list_nodes(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        with locked_json(self.claims_path) as claims:
            nodes = [self._info(nid, c) for nid, c in claims.items()
                     if all(c["tags"].get(k) == v for k, v in tag_filters.items())]
        return sorted(nodes, key=lambda n: n.launched_at)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with locked_json(self.claims_path) as claims:
            if node_id not in claims:
                raise NodeNotFound(node_id)
            claims[node_id]["tags"].update(tags)

    def terminate_nodes(self, node_ids: list[str]) -> None:
        with locked_json(self.claims_path) as claims:
            released = [(nid, claims.pop(nid)) for nid in node_ids if nid in claims]
        for nid, claim in released:
            runner = self.command_runner(self._info(nid, claim))
            runner.connect_timeout = TERMINATE_CONNECT_TIMEOUT_S
            try:  # best effort: an unreachable host is freed all the same
                runner.run("test -x ~/.launch-runtime/bin/python && ~/.launch-runtime/bin/python -m runtime.node stop",
                           timeout=30)
            except Exception:
                pass
            runner.close()
            self._runners.pop(nid, None)

    def command_runner(self, node: NodeInfo) -> SSHCommandRunner:
        if node.id not in self._runners:
            host, port = node.id.rsplit(":", 1)
            auth = self.cfg.auth
            self._runners[node.id] = SSHCommandRunner(
                host, int(port), auth.ssh_user or "root", auth.ssh_private_key, self.known_hosts,
                proxy_command=auth.ssh_proxy_command,
                connect_timeout=float(self.cfg.provider.extra.get("ssh_connect_timeout_s", 10)),
            )
        return self._runners[node.id]
