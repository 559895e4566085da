"""The `coordinator` provider: on-prem hosts handed out by Ray's coordinator server (Ray's `type: local`
with `coordinator_address`), so several autoscaling clusters share one set of machines.

The coordinator (Ray's `coordinator_server.py --ips ... --port ...`, or anything speaking its protocol)
owns which host belongs to which cluster. Its protocol: an HTTP GET whose JSON body is
`{"type": <method>, "args": [...]}`, answered with the method's result as JSON; the methods are a node
provider's (`non_terminated_nodes(filters)`, `create_node(node_config, tags, count)`,
`terminate_node(id)`, `node_tags(id)`, `set_node_tags(id, tags)`). A node's id is its IP; what a
cluster claimed is found by the `ray-cluster-name` tag, and `ray-node-kind` says head or worker, as
Ray's own clusters tag them (so a coordinator shared with Ray clusters keeps them apart).

Everything else is the on-prem pool's (providers/ssh.py): a host joins over SSH, and "terminating" one
stops its runtime, then gives it back to the coordinator. The coordinator speaks plain HTTP without
credentials, as Ray's does: it belongs on the machines' private network.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from pathlib import Path

from pydantic import Field

from core.config import ClusterConfig, split_host_port
from core.errors import ConfigError, NodeNotFound, ProviderError
from core.paths import HEAD_KNOWN_HOSTS, KNOWN_HOSTS_FILE, on_this_node
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, KIND_WORKER, TAG_KIND, TAG_NODE_TYPE
from providers import ssh
from providers.base import DEFAULT_HEAD_PORT, Bootstrapped, CommonSection, NodeInfo, ProviderFacts

FACTS = ProviderFacts(offline_bootstrap=True)

# Ray's tags, which its coordinator reads (create_node needs the kind) and its clusters filter on
RAY_CLUSTER_NAME = "ray-cluster-name"
RAY_NODE_KIND = "ray-node-kind"
TAG_CLAIM = "launch-claim"  # one create's own tag: which hosts that call got
TAG_LAUNCHED_AT = "launch-launched-at"
CALL_TIMEOUT_S = 30.0


class Section(CommonSection):
    coordinator_address: str = Field(pattern=r"^\S+:[0-9]{1,5}$")  # host:port of the coordinator server
    ssh_port: int = Field(default=22, gt=0, le=65535)
    head_port: int = Field(default=DEFAULT_HEAD_PORT, ge=0, le=65535)
    head_bind_host: str = ""  # "": loopback and the private IP (the runtime is reached through SSH)
    # Ray's local keys, which mean nothing beside a coordinator (it hands out the hosts)
    head_ip: str | None = None
    worker_ips: list[str] = Field(default_factory=list)
    external_head_ip: str | None = None

    def warnings(self) -> list[str]:
        if self.head_ip or self.worker_ips:
            return ["provider.head_ip, provider.worker_ips: not used: the coordinator (provider.coordinator_address) "
                    "hands out the hosts, as in Ray"]
        return []


def config_problems(config: ClusterConfig) -> list[str]:
    """The coordinator's address is host:port; the hosts are logged into as auth.ssh_user. (max_workers,
    which Ray requires here, is checked on the file itself: core/config.py.)"""
    problems = []
    address = getattr(config.provider, "coordinator_address", None)
    try:
        _, port = split_host_port(str(address or ""), 0)
        if not port:
            problems.append(f"provider.coordinator_address: {address!r} has no port (host:port)")
    except ValueError as e:
        problems.append(f"provider.coordinator_address: {e}")
    if not config.auth.ssh_user:
        problems.append("auth.ssh_user: required for an on-prem cluster (its coordinator hands out hosts)")
    return problems


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    return Bootstrapped(state={"known_hosts": str((state_dir / KNOWN_HOSTS_FILE).resolve())})


class Coordinator:
    """Ray's coordinator protocol: one HTTP GET per call, a JSON body naming the method and its arguments."""

    def __init__(self, address: str):
        self.address = address
        self.host, self.port = split_host_port(address, 0)

    def call(self, method: str, *args):
        body = json.dumps({"type": method, "args": list(args)})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=CALL_TIMEOUT_S)
        try:
            conn.request("GET", "/", body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as e:
            # Ray's server closes the connection when the method fails (an unknown node, a bad tag)
            raise ProviderError(f"provider.coordinator_address: the coordinator at {self.address} did not answer "
                                f"{method} ({type(e).__name__}: {e or 'connection closed'})") from None
        finally:
            conn.close()
        if reply.status != 200:
            raise ProviderError(f"provider.coordinator_address: the coordinator at {self.address} refused {method} "
                                f"(HTTP {reply.status})")
        try:
            return json.loads(data) if data.strip() else None
        except ValueError:
            raise ProviderError(f"provider.coordinator_address: the coordinator at {self.address} answered {method} "
                                "with something that is not JSON") from None


class Provider(ssh.Provider):
    """An on-prem pool whose claims the coordinator keeps; creating asks it for free hosts."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = section = Section.of(spec.config.provider)
        self.head_port = section.head_port
        self.head_bind_host = section.head_bind_host
        self.known_hosts = (on_this_node(HEAD_KNOWN_HOSTS) if spec.on_head
                            else Path(spec.provider_state["known_hosts"]))
        self.coordinator = Coordinator(section.coordinator_address)
        self._remote = None

    def container_options(self, is_head: bool) -> list[str]:
        return []  # the claims are the coordinator's, not a file on the head host

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        claim = uuid.uuid4().hex[:12]
        kind = KIND_HEAD if tags.get(TAG_KIND) == KIND_HEAD else KIND_WORKER
        asked = {**tags, TAG_NODE_TYPE: node_type, TAG_CLAIM: claim, TAG_LAUNCHED_AT: repr(time.time()),
                 RAY_NODE_KIND: kind, RAY_CLUSTER_NAME: self.spec.name}
        self.coordinator.call("create_node", {}, asked, count)  # it gives what it has free: maybe fewer
        return self.list({TAG_CLAIM: claim})

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        ips = self.coordinator.call("non_terminated_nodes", {**tag_filters, RAY_CLUSTER_NAME: self.spec.name}) or []
        nodes = [self._info(ip, self.coordinator.call("node_tags", ip) or {}) for ip in ips]
        return sorted(nodes, key=lambda n: n.launched_at)

    def _info(self, nid: str, tags: dict) -> NodeInfo:
        external = self.section.external_head_ip if tags.get(TAG_KIND) == KIND_HEAD else None
        try:
            launched_at = float(tags.get(TAG_LAUNCHED_AT, 0.0))
        except ValueError:
            launched_at = 0.0
        return NodeInfo(id=nid, node_type=tags.get(TAG_NODE_TYPE, ""), state="running", tags=dict(tags),
                        internal_ip=nid, external_ip=external or nid, launched_at=launched_at,
                        ssh_port=self.section.ssh_port)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        if node_id not in {n.id for n in self.list({})}:
            raise NodeNotFound(node_id)
        self.coordinator.call("set_node_tags", node_id, dict(tags))

    def _claims(self, op: str, **args):
        """What terminate (providers/ssh.py) asks of the claims: the list of this cluster's, and their release."""
        if op == "list":
            return [(n.id, n.tags) for n in self.list(args["filters"])]
        if op == "release":  # (only what the coordinator gave this cluster: it fails on an id it does not know)
            for node_id in set(args["ids"]) & {n.id for n in self.list({})}:
                self.coordinator.call("terminate_node", node_id)
            return []
        raise ConfigError(f"provider: the coordinator cannot {op}")  # (no other op is asked of it)
