"""What the head carries for its control plane: `ship` (run by `up` on the laptop) puts on the head, in its
own cluster state dir (~/.launch-runtime/cluster), the ClusterSpec relocated to the head's paths, the
cluster's SSH private key (0600), a copy of every file mount (new workers get theirs from the head), and
the host keys the laptop pinned; `head_state` reads them there. Nothing on the head reads a path of the
laptop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from core.errors import LaunchError
from core.files import atomic_write
from core.paths import HEAD_CLUSTER_STATE, HEAD_KNOWN_HOSTS, HEAD_MOUNTS, HEAD_SPEC, HEAD_SSH_KEY, on_this_node
from core.spec import ClusterSpec
from lifecycle.state import ClusterDir
from transport.base import CommandRunner
from transport.file_sync import sync_up


def ship(spec: ClusterSpec, runner: CommandRunner, known_hosts: Path) -> int:
    """Put everything the head's control plane needs on the head; returns how many files were sent."""
    mounts: dict[str, str] = {}
    sent = 0
    for remote, local in spec.file_mounts.items():
        copy = f"{HEAD_MOUNTS}/{hashlib.sha1(remote.encode()).hexdigest()[:16]}"
        sent += sync_up(runner, Path(local), copy, spec.config.rsync_exclude, spec.config.rsync_filter)
        mounts[remote] = copy
    key = None
    if spec.ssh_private_key:
        runner.put_file(Path(spec.ssh_private_key).expanduser().read_bytes(), HEAD_SSH_KEY, mode=0o600)
        key = HEAD_SSH_KEY
    if known_hosts.exists():  # the head trusts what the laptop pinned, and keeps what it pinned itself
        theirs = (runner.read_file(HEAD_KNOWN_HOSTS) or b"").decode()
        merged = _merged_lines(theirs, known_hosts.read_text())
        if merged is not None:
            runner.put_file(merged.encode(), HEAD_KNOWN_HOSTS, mode=0o600)
    head_spec = dataclasses.replace(spec, file_mounts=mounts, ssh_private_key=key, on_head=True)
    runner.put_file(head_spec.to_json().encode(), HEAD_SPEC, mode=0o600)
    return sent


def pull_known_hosts(runner: CommandRunner, known_hosts: Path) -> None:
    """The workers' host keys as the head pinned them, added to the laptop's (which reaches workers
    through the head, and must refuse a worker whose key changed just as the head does)."""
    ours = known_hosts.read_text() if known_hosts.exists() else ""
    merged = _merged_lines(ours, (runner.read_file(HEAD_KNOWN_HOSTS) or b"").decode())
    if merged is not None:
        atomic_write(known_hosts, merged, mode=0o600)


def _merged_lines(base: str, extra: str) -> str | None:
    """`base` with the lines of `extra` it lacks appended (in order, once); None when it lacks none."""
    lines = base.splitlines()
    merged = list(dict.fromkeys([*lines, *extra.splitlines()]))
    return None if merged == lines else "\n".join(merged) + "\n"


def read_head_spec() -> str:
    try:
        return on_this_node(HEAD_SPEC).read_text()
    except FileNotFoundError:
        raise LaunchError(f"no {HEAD_SPEC} on the head: run `launch up` to ship the cluster's spec") from None


def load_head_spec(text: str | None = None) -> ClusterSpec:
    """The spec `up` shipped (its text as read_head_spec read it, else read now), with its paths made this
    node's."""
    spec = ClusterSpec.from_json(read_head_spec() if text is None else text)
    spec.file_mounts = {r: os.path.expanduser(p) for r, p in spec.file_mounts.items()}
    if spec.ssh_private_key:
        spec.ssh_private_key = os.path.expanduser(spec.ssh_private_key)
    return spec


def head_state(text: str | None = None) -> tuple[ClusterSpec, ClusterDir]:
    """The spec `up` shipped and the head's own state dir of the cluster (for the lifecycle there)."""
    spec = load_head_spec(text)
    return spec, ClusterDir(spec.name, path=on_this_node(HEAD_CLUSTER_STATE))
