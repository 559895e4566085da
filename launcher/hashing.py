"""The two hashes per node type that decide what a re-run of `up` redoes.

- launch hash: what the instance itself is made of (node_config, auth). A change replaces the node.
- runtime hash: what is set up on it (commands, file mounts' contents, declared resources and labels,
  this package's version). A change re-runs file sync, setup and start on the existing node.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from launcher import __version__
from launcher.config import ClusterConfig
from launcher.file_sync import local_manifest, manifest_digest


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def launch_hash(cfg: ClusterConfig, node_type: str) -> str:
    nt = cfg.node_type(node_type)
    return _digest({"node_config": nt.node_config, "auth": cfg.auth.model_dump(), "type": cfg.provider.kind})


def mounts_digest(cfg: ClusterConfig) -> dict[str, str]:
    return {
        remote: manifest_digest(local_manifest(cfg.local_mount_path(local), cfg.rsync_exclude, cfg.rsync_filter))
        for remote, local in sorted(cfg.file_mounts.items())
    }


def runtime_hash(
    cfg: ClusterConfig,
    node_type: str,
    is_head: bool,
    mounts: dict[str, str] | None = None,
    head_address: str = "",
) -> str:
    """`head_address` is part of a worker's hash: a worker set up against another head is redone."""
    nt = cfg.node_type(node_type)
    return _digest(
        {
            "version": __version__,
            "init": cfg.initialization_commands,
            "setup": cfg.setup_commands_for(node_type, is_head),
            "start": cfg.start_commands_for(is_head),
            "mounts": mounts if mounts is not None else mounts_digest(cfg),
            "resources": nt.resources,
            "labels": nt.labels,
            "head": head_address,
            "runtime": cfg.runtime.model_dump(),
        }
    )
