"""The two hashes per node type that decide what a re-run of `up` (or the autoscaler) redoes.

- launch hash: what the instance itself is made of (node_config, auth, provider kind). A change
  replaces the node.
- runtime hash: what is set up on it (commands, file mounts' contents, resources and labels, the
  runtime settings, the container it runs in, this package's version). A change re-runs file sync,
  setup and start on the node (in a new container, where the image changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from core import __version__
from core.config import ClusterConfig
from core.spec import ClusterSpec
from transport.file_sync import local_manifest, manifest_digest


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def launch_hash(cfg: ClusterConfig, node_type: str) -> str:
    nt = cfg.node_type(node_type)
    return _digest({"node_config": nt.node_config, "auth": cfg.auth.model_dump(), "type": cfg.provider.kind})


def mount_digests(cfg: ClusterConfig, sources: dict[str, str]) -> dict[str, str]:
    return {remote: manifest_digest(local_manifest(Path(local), cfg.rsync_exclude, cfg.rsync_filter))
            for remote, local in sorted(sources.items())}


def mounts_stamp(sources: dict[str, str]) -> str:
    """What the files under each source are now, by path, size and modification time: cheap enough to
    take every few seconds (file_mounts_sync_continuously); a change is then synced by content."""
    seen = []
    for remote, local in sorted(sources.items()):
        root = Path(local)
        paths = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            seen.append((remote, str(p.relative_to(root)) if p != root else "", st.st_size, st.st_mtime_ns))
    return _digest(seen)


def runtime_hash(spec: ClusterSpec, node_type: str, is_head: bool, head_address: str = "") -> str:
    """`head_address` is part of a worker's hash: a worker set up against another head is redone."""
    cfg = spec.config
    nt = cfg.node_type(node_type)
    return _digest({
        "version": __version__,
        "init": cfg.initialization_commands_for(node_type),
        "setup": cfg.setup_commands_for(node_type, is_head),
        "start": cfg.start_commands_for(is_head),
        # synced continuously, the mounts' contents change no setup (as in Ray): the head syncs them alone
        "mounts": None if cfg.file_mounts_sync_continuously else spec.mount_digests,
        "resources": nt.resources,
        "labels": nt.labels,
        "head": head_address,
        "runtime": cfg.runtime.model_dump(),
        "container": dataclasses.asdict(c) if (c := cfg.container_for(node_type, is_head)) else None,
    })
