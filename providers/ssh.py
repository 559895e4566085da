"""The `ssh` provider: a fixed pool of on-prem hosts (Ray's `type: local` with head_ip/worker_ips).

"Creating" a node claims a free host of the pool; "terminating" stops the runtime on it and frees it.
Claims (with the node's tags) persist in a state file whose path is the provider's bootstrap state. A
host is written `host` or `host:port`; `provider.ssh_port` is the default port.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from core.config import ClusterConfig, split_host_port
from core.errors import ConfigError, LaunchError, NodeNotFound
from core.files import locked_json
from core.paths import NODE_PYTHON
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_KIND
from providers.base import Bootstrapped, Capabilities, CommonSection, NodeInfo
from transport import SSHAuth, runner_for

DEFAULT_HEAD_PORT = 6380
TERMINATE_CONNECT_TIMEOUT_S = 5.0


class Section(CommonSection):
    head_ip: str | None = None  # required: checked with the other rules of an on-prem cluster
    worker_ips: list[str] = Field(default_factory=list)
    external_head_ip: str | None = None
    ssh_port: int = Field(default=22, gt=0, le=65535)
    head_port: int = Field(default=DEFAULT_HEAD_PORT, ge=0, le=65535)
    head_bind_host: str = "0.0.0.0"


def parse_host(spec: str, default_port: int) -> tuple[str, int]:
    try:
        return split_host_port(spec, default_port)
    except ValueError as e:
        raise ConfigError(f"provider: host {e}") from None


def node_id(host: str, port: int) -> str:
    return f"{host}:{port}"


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    """The hosts exist already: the state is where the pool's claims are kept."""
    claims = state_dir / "ssh" / "claims.json"
    claims.parent.mkdir(parents=True, exist_ok=True)
    return Bootstrapped(state={"claims": str(claims.resolve()), "known_hosts": str((state_dir / "known_hosts").resolve())})


class Provider:
    # the pool's claims live where `up` ran until the head carries them (issue: autoscaling on the head)
    capabilities = Capabilities(autoscale_on_head=False)

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        section = Section.of(spec.config.provider)
        self.section = section
        self.head_host = parse_host(section.head_ip, section.ssh_port)
        self.worker_hosts = [parse_host(h, section.ssh_port) for h in section.worker_ips]
        self.head_port = section.head_port
        self.head_bind_host = section.head_bind_host
        self.claims_path = Path(spec.provider_state["claims"])
        self.known_hosts = Path(spec.provider_state["known_hosts"])

    def node_types(self) -> dict[str, dict[str, float]]:
        return {}  # the hosts' resources are detected when their runtime registers

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
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
        host, port = nid.rsplit(":", 1)
        return NodeInfo(id=nid, node_type=claim["node_type"], state="running", tags=dict(claim["tags"]),
                        internal_ip=host, external_ip=host, launched_at=claim["launched_at"], ssh_port=int(port))

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        with locked_json(self.claims_path) as claims:
            nodes = [self._info(nid, c) for nid, c in claims.items()
                     if all(c["tags"].get(k) == v for k, v in tag_filters.items())]
        return sorted(nodes, key=lambda n: n.launched_at)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with locked_json(self.claims_path) as claims:
            if node_id not in claims:
                raise NodeNotFound(node_id)
            claims[node_id]["tags"].update(tags)

    def terminate(self, node_ids: list[str]) -> None:
        with locked_json(self.claims_path) as claims:
            released = [(nid, claims.pop(nid)) for nid in node_ids if nid in claims]
        auth = SSHAuth(user=self.spec.ssh_user or "root", private_key=self.spec.ssh_private_key,
                       known_hosts=self.known_hosts, proxy_command=self.spec.config.auth.ssh_proxy_command,
                       connect_timeout_s=TERMINATE_CONNECT_TIMEOUT_S)
        for nid, claim in released:
            runner = runner_for(self._info(nid, claim), auth)
            try:  # best effort: an unreachable host is freed all the same
                runner.run(f"test -x {NODE_PYTHON} && {NODE_PYTHON} -m runtime.node stop", timeout=30)
            except LaunchError:
                pass
            finally:
                runner.close()
