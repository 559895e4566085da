"""The transport layer: how commands and files reach a node (locally, over SSH, or with srun into a Slurm
allocation), and port forwards.

`runner_for` builds a node's runner from the node as a provider listed it and the cluster's auth
settings; providers hand out no runners of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.node import NodeInfo
from core.paths import NODE_MARKER_ENV
from transport.base import CommandRunner


@dataclass(frozen=True)
class SSHAuth:
    user: str
    private_key: str | None
    known_hosts: Path  # host keys pinned on first contact, per cluster
    proxy_command: str | None = None
    connect_timeout_s: float = 10.0
    use_internal_ips: bool = False
    proxy_use_node_id: bool = False  # Ray's: the proxy command's %h is the node's id, not its IP
    pin_by_node_id: bool = False  # host keys recorded under the node's id (its instance), not its address


def runner_for(node: NodeInfo, auth: SSHAuth, via: CommandRunner | None = None) -> CommandRunner:
    """`via`: the head's runner, to reach a worker at its private IP through the head's SSH connection
    (where the launcher can reach the head's port 22 only)."""
    if node.local_home is not None:
        import sys

        from transport.local import LocalCommandRunner

        return LocalCommandRunner(Path(node.local_home), {NODE_MARKER_ENV: node.id}, sys.executable)
    if node.slurm is not None:
        from transport.srun import SrunCommandRunner

        return SrunCommandRunner(node.slurm, node.internal_ip, via)
    from transport.ssh import SSHCommandRunner

    host = (node.internal_ip if auth.use_internal_ips or via is not None else node.external_ip) or node.internal_ip
    if not host:
        from core.errors import LaunchError

        raise LaunchError(f"node {node.id} has no IP address yet")
    return SSHCommandRunner(host, node.ssh_port, auth.user, auth.private_key, auth.known_hosts,
                            proxy_command=None if via is not None else auth.proxy_command,
                            proxy_host=node.id if auth.proxy_use_node_id else None,
                            connect_timeout=auth.connect_timeout_s, jump=via,
                            host_key_alias=node.id if auth.pin_by_node_id else None)
