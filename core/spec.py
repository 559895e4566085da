"""The ClusterSpec: the validated config plus everything resolved when `up` bootstrapped the cluster.

It is the only input of the lifecycle (create, set up, drain, terminate) and of the provider objects,
on the machine that ran `up` and on the head alike. It is serialisable: stored in the cluster's state
dir and shipped to the head, so nothing downstream re-parses YAML, re-runs bootstrap, or reads a path
that only existed where `up` ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.config import ClusterConfig


@dataclass
class ClusterSpec:
    config: ClusterConfig
    # what the provider's bootstrap created or found (subnets, key names, roles, state paths): its own shape
    provider_state: dict[str, Any] = field(default_factory=dict)
    # every node type's resources: declared, else from the provider's catalog; {} while unknown
    node_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    # remote path -> absolute local source, on the machine that holds this spec
    file_mounts: dict[str, str] = field(default_factory=dict)
    # remote path -> digest of the source's contents: part of the runtime hash
    mount_digests: dict[str, str] = field(default_factory=dict)
    ssh_user: str | None = None
    ssh_private_key: str | None = None  # absolute path, 0600
    # True in the head's copy (lifecycle.on_head): the paths above are the head's, and nodes are reached
    # over their private IPs
    on_head: bool = False
    # Counted up by each `launch up` that ships the spec to the head: the head's monitor, the cluster's one
    # reconciler, checks every node once per generation and reports when it has converged on it.
    generation: int = 0
    # Counted up by `up --restart-runtime`: a node whose runtime last started in an older one restarts it.
    restart_generation: int = 0

    @property
    def name(self) -> str:
        return self.config.cluster_name

    @property
    def provider_kind(self) -> str:
        return self.config.provider.kind

    def resources_of(self, node_type: str) -> dict[str, float]:
        return dict(self.node_resources.get(node_type) or self.config.available_node_types[node_type].resources)

    def to_json(self) -> str:
        return json.dumps({
            "config": self.config.model_dump(mode="json", exclude_unset=True),
            "provider_state": self.provider_state,
            "node_resources": self.node_resources,
            "file_mounts": self.file_mounts,
            "mount_digests": self.mount_digests,
            "ssh_user": self.ssh_user,
            "ssh_private_key": self.ssh_private_key,
            "on_head": self.on_head,
            "generation": self.generation,
            "restart_generation": self.restart_generation,
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        d = json.loads(text)
        return cls(
            config=ClusterConfig.model_validate(d["config"]),
            provider_state=d.get("provider_state") or {},
            node_resources=d.get("node_resources") or {},
            file_mounts=d.get("file_mounts") or {},
            mount_digests=d.get("mount_digests") or {},
            ssh_user=d.get("ssh_user"),
            ssh_private_key=d.get("ssh_private_key"),
            on_head=bool(d.get("on_head")),
            generation=int(d.get("generation") or 0),
            restart_generation=int(d.get("restart_generation") or 0),
        )
