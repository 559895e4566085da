"""What a node's runtime needs to start: written by the launcher to the node's own
~/.launch-runtime/nodes/<hostname>/node.json (0600).

The file carries the cluster token, so it is the only place the token exists on the node: never on a
command line, never in a log.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.paths import NODE_CONFIG, NODE_DIR, on_this_node
from core.runtime_defaults import HEARTBEAT_INTERVAL_S, NODE_TIMEOUT_S, OWNER_TIMEOUT_S


def runtime_dir() -> Path:
    """This node's own files (pids, logs, jobs' folders, the head's state): never shared with another node."""
    return on_this_node(NODE_DIR)


@dataclass
class NodeRuntimeConfig:
    node_id: str
    node_type: str
    is_head: bool
    token: str
    address: str  # this node's IP as other nodes reach it
    head_address: str = ""  # host:port of the head service (workers; the head learns its own)
    bind_host: str = ""  # head only; "": loopback and `address` (runtime.head.bind_hosts)
    head_port: int = 0
    resources: dict[str, float] = field(default_factory=dict)  # declared by the node type
    labels: dict[str, str] = field(default_factory=dict)
    # head only: every node type's declared resources, to tell queued work from infeasible work
    node_types: dict[str, dict[str, float]] = field(default_factory=dict)
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    node_timeout_s: float = NODE_TIMEOUT_S
    owner_timeout_s: float = OWNER_TIMEOUT_S
    notices: str = ""  # whose preemption notices its agent watches (runtime/notices.py): aws, gcp, azure; "": none

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def load(cls, path: Path | None = None) -> NodeRuntimeConfig:
        path = path or on_this_node(NODE_CONFIG)
        return cls(**json.loads(path.read_text()))
