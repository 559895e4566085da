"""The `ssh` provider: a fixed pool of on-prem hosts (Ray's `type: local` with head_ip/worker_ips).

"Creating" a node claims a free host of the pool; "terminating" stops the runtime on it and frees it.
Claims (with the node's tags) live on the head host (providers/ssh_claims.py), so the autoscaler on
the head owns them. A host is written `host` or `host:port`; `provider.ssh_port` is the default port.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

from pydantic import Field

from core.config import ClusterConfig, Container, split_host_port
from core.entry_points import NODE_CONTROL
from core.errors import ConfigError, LaunchError, NodeNotFound, ProviderError
from core.paths import HEAD_KNOWN_HOSTS, KNOWN_HOSTS_FILE, NODE_PYTHON, RUNTIME_DIR, in_shell, on_this_node
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_KIND
from providers import ssh_claims
from providers.base import (DEFAULT_HEAD_PORT, Bootstrapped, Capabilities, CommonSection, NodeInfo, ProviderBase,
                            ProviderFacts)
from transport import SSHAuth, runner_for
from transport.docker import remove_container_cmd

TERMINATE_CONNECT_TIMEOUT_S = 5.0
POOL_DIR = f"{RUNTIME_DIR}/pool"  # on the head host: the pool's claims, per cluster
# A head in a container (Ray's docker section) sees the claims the laptop keeps on its host through a
# bind mount, which this variable names to the autoscaler in the container
CONTAINER_POOL_DIR = "/var/lib/launch-pool"
POOL_DIR_ENV = "LAUNCH_POOL_DIR"


FACTS = ProviderFacts(offline_bootstrap=True)


class Section(CommonSection):
    head_ip: str | None = None  # required: checked with the other rules of an on-prem cluster
    worker_ips: list[str] = Field(default_factory=list)
    external_head_ip: str | None = None
    ssh_port: int = Field(default=22, gt=0, le=65535)
    head_port: int = Field(default=DEFAULT_HEAD_PORT, ge=0, le=65535)
    head_bind_host: str = ""  # "": loopback and the private IP (the runtime is reached through SSH)


def parse_host(spec: str, default_port: int) -> tuple[str, int]:
    try:
        return split_host_port(spec, default_port)
    except ValueError as e:
        raise ConfigError(f"provider: host {e}") from None


def node_id(host: str, port: int) -> str:
    return f"{host}:{port}"


def config_problems(config: ClusterConfig) -> list[str]:
    """An on-prem cluster names its hosts (head_ip, worker_ips: host or host:port) and the user to log in as."""
    prov, problems = config.provider, []
    if not prov.head_ip:
        problems.append("provider.head_ip: required for an on-prem (ssh) cluster")
    if not config.auth.ssh_user:
        problems.append("auth.ssh_user: required for an on-prem (ssh) cluster")
    for i, host in enumerate([prov.head_ip or "", *(prov.worker_ips or [])]):
        try:
            split_host_port(host, 22)
        except ValueError as e:
            problems.append(f"{'provider.head_ip' if i == 0 else f'provider.worker_ips.{i - 1}'}: {e}")
    return problems


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    """The hosts exist already: the state is where the pool's claims are kept (on the head host)."""
    return Bootstrapped(state={"claims": f"{POOL_DIR}/{config.cluster_name}.json",
                               "known_hosts": str((state_dir / KNOWN_HOSTS_FILE).resolve())})


class RemoteClaims:
    """The claims file on the head host, reached over SSH from the machine that runs `launch up`."""

    def __init__(self, path: str, runner):
        self.path, self.runner = path, runner
        self.source = base64.b64encode(Path(ssh_claims.__file__).read_bytes()).decode()

    def apply(self, op: str, args: dict):
        payload = base64.b64encode(json.dumps(args).encode()).decode()
        cmd = (f"python3 -c 'import base64, sys; exec(base64.b64decode(sys.argv.pop(1)))' "
               f"{self.source} {shlex.quote(self.path)} {op} {payload}")
        result = self.runner.run(cmd, timeout=60)
        if not result.ok or not result.tail:
            raise ProviderError(f"provider.head_ip: cannot read the pool's claims on the head host "
                                f"({result.tail[-1] if result.tail else 'no output'})")
        return json.loads(result.tail[-1])


class Provider(ProviderBase):
    # the autoscaler on the head owns the pool's claims, which live there
    capabilities = Capabilities()

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        section = Section.of(spec.config.provider)
        self.section = section
        self.head_host = parse_host(section.head_ip, section.ssh_port)
        self.worker_hosts = [parse_host(h, section.ssh_port) for h in section.worker_ips]
        self.head_port = section.head_port
        self.head_bind_host = section.head_bind_host
        self.known_hosts = (on_this_node(HEAD_KNOWN_HOSTS) if spec.on_head
                            else Path(spec.provider_state["known_hosts"]))
        self._remote: RemoteClaims | None = None

    def _auth(self, connect_timeout_s: float) -> SSHAuth:
        return SSHAuth(user=self.spec.ssh_user or "root", private_key=self.spec.ssh_private_key,
                       known_hosts=self.known_hosts, proxy_command=self.spec.config.auth.ssh_proxy_command,
                       connect_timeout_s=connect_timeout_s)

    def container_options(self, is_head: bool) -> list[str]:
        if not is_head:
            return []
        return [f'-v "$HOME"/{shlex.quote(POOL_DIR[2:])}:{CONTAINER_POOL_DIR}', f"-e {POOL_DIR_ENV}={CONTAINER_POOL_DIR}"]

    def _claims(self, op: str, **args):
        path = self.spec.provider_state["claims"]
        if self.spec.on_head:
            if os.environ.get(POOL_DIR_ENV):  # the host's, mounted into the head's container
                path = f"{os.environ[POOL_DIR_ENV]}/{Path(path).name}"
            return ssh_claims.apply(path, op, args)
        if self._remote is None:
            host, port = self.head_host
            head = NodeInfo(id=node_id(host, port), node_type="", state="running", tags={},
                            internal_ip=host, external_ip=self.section.external_head_ip or host, ssh_port=port)
            self._remote = RemoteClaims(path, runner_for(head, self._auth(self.section.ssh_connect_timeout_s)))
        return self._remote.apply(op, args)

    def node_types(self) -> dict[str, dict[str, float]]:
        return {}  # the hosts' resources are detected when their runtime registers

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        pool = [self.head_host] if tags.get(TAG_KIND) == KIND_HEAD else self.worker_hosts
        created = self._claims("claim", hosts=[node_id(h, p) for h, p in pool], count=count, node_type=node_type,
                               tags=dict(tags), now=time.time())
        return [self._info(nid, c) for nid, c in created]  # fewer than asked when the pool is used up

    def _info(self, nid: str, claim: dict) -> NodeInfo:
        host, port = nid.rsplit(":", 1)
        external = self.section.external_head_ip if claim["tags"].get(TAG_KIND) == KIND_HEAD else None
        return NodeInfo(id=nid, node_type=claim["node_type"], state="running", tags=dict(claim["tags"]),
                        internal_ip=host, external_ip=external or host, launched_at=claim["launched_at"],
                        ssh_port=int(port))

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        nodes = [self._info(nid, c) for nid, c in self._claims("list", filters=dict(tag_filters))]
        return sorted(nodes, key=lambda n: n.launched_at)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        if not self._claims("set_tags", node_id=node_id, tags=dict(tags)):
            raise NodeNotFound(node_id)

    def _containers(self) -> list[Container]:
        cfg = self.spec.config
        found = {cfg.container_for(t, h) for t in cfg.available_node_types for h in (True, False)}
        return sorted((c for c in found if c is not None), key=lambda c: (c.cli, c.name))

    def terminate(self, node_ids: list[str]) -> None:
        """The host goes back to the pool: its runtime (and every process of it) is stopped, then its claim
        dropped (in this order: a terminate cut short leaves a claim to terminate again, never a host
        running a runtime that no claim names)."""
        wanted = set(node_ids)
        claimed = [(nid, c) for nid, c in self._claims("list", filters={}) if nid in wanted]
        auth = self._auth(TERMINATE_CONNECT_TIMEOUT_S)
        for nid, claim in claimed:
            runner = runner_for(self._info(nid, claim), dataclasses.replace(auth, use_internal_ips=self.spec.on_head))
            try:  # best effort: an unreachable host is freed all the same
                python = in_shell(NODE_PYTHON)
                # a node in a container (Ray's docker section) goes with it: the host runs none of it
                containers = "".join(f"{remove_container_cmd(c)}; " for c in self._containers())
                runner.run(f"{containers}test -x {python} && {python} -m {NODE_CONTROL} stop", timeout=60)
            except LaunchError:
                pass
            finally:
                runner.close()
        self._claims("release", ids=list(node_ids))

    def close(self) -> None:
        if self._remote is not None:
            self._remote.runner.close()
