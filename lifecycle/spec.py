"""Resolving a ClusterSpec: validate, bootstrap the provider once, and pin down everything else."""

from __future__ import annotations

from pathlib import Path

import providers
from core.config import ClusterConfig
from core.spec import ClusterSpec
from lifecycle.hashing import mount_digests


def resolve(config: ClusterConfig, state_dir: Path, say=lambda line: None) -> ClusterSpec:
    """What `up` runs once: the provider's bootstrap (which may create cloud objects, idempotently; what
    it chose on its own is said), the node types' resources (declared, else the provider's catalog), the
    file mounts as absolute paths with their digests, and the SSH identity nodes accept."""
    booted = providers.bootstrap(config, state_dir)
    for note in booted.notes:
        say(note)
    mounts = {remote: str(config.local_mount_path(local).resolve()) for remote, local in config.file_mounts.items()}
    spec = ClusterSpec(
        config=config,
        provider_state=booted.state,
        file_mounts=mounts,
        mount_digests=mount_digests(config, mounts),
        ssh_user=booted.ssh_user or config.auth.ssh_user,
        ssh_private_key=booted.ssh_private_key or (
            str(Path(config.auth.ssh_private_key).expanduser().resolve()) if config.auth.ssh_private_key else None),
    )
    catalog = providers.build(spec).node_types()
    # what a type declares wins; the catalog fills what it leaves out (a local node has the machine's CPUs)
    spec.node_resources = {name: {**(catalog.get(name) or {}), **nt.resources}
                           for name, nt in config.available_node_types.items()}
    return spec


def unbootstrapped(config: ClusterConfig, state_dir: Path) -> ClusterSpec:
    """A spec for a cluster whose resolved spec is lost (`down` after the state dir was wiped): enough to
    list and terminate its nodes by their tags. Only providers whose bootstrap creates nothing in a
    cloud are bootstrapped for it."""
    offline = providers.facts(config.provider.kind).offline_bootstrap
    booted = providers.bootstrap(config, state_dir) if offline else None
    return ClusterSpec(config=config, provider_state=booted.state if booted else {},
                       ssh_user=config.auth.ssh_user, ssh_private_key=config.auth.ssh_private_key)
