"""file_mounts: content manifests, and a sync that copies only what changed.

The sync is written against the CommandRunner interface (put_file / read_file / run), so it is the
same for a local node and an SSH node. The manifest of the last sync is kept on the node; files whose
content hash matches it are not sent again. Like Ray's rsync without --delete, files removed locally
stay on the node.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.paths import MOUNT_MANIFESTS, for_node
from transport.base import node_name

if TYPE_CHECKING:
    from transport.base import CommandRunner



def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False


def filter_patterns(root: Path, rsync_filter: list[str]) -> list[str]:
    """Patterns read from rsync_filter files (e.g. .gitignore) found at the root of a synced dir."""
    pats: list[str] = []
    for name in rsync_filter:
        f = root / name
        if f.is_file():
            for line in f.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and not line.startswith("!"):
                    pats.append(line.lstrip("/"))
    return pats


def local_manifest(path: Path, exclude: list[str], rsync_filter: list[str] = ()) -> dict[str, str]:
    """{relative path: sha256 of mode and content} for a file or a directory tree ('' for a file)."""
    if path.is_file():
        return {"": _file_digest(path)}
    patterns = [*exclude, *filter_patterns(path, list(rsync_filter))]
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = os.path.relpath(dirpath, path)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not _excluded(rel_dir + d, patterns))
        for name in sorted(filenames):
            rel = rel_dir + name
            if not _excluded(rel, patterns):
                out[rel] = _file_digest(Path(dirpath) / name)
    return out


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    h.update(oct(p.stat().st_mode & 0o777).encode())
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def sync_up(
    runner: CommandRunner, local: Path, remote: str, exclude: list[str], rsync_filter: list[str] = ()
) -> int:
    """Copy `local` (file or directory) to `remote` on the node; returns how many files were sent."""
    manifest = local_manifest(local, exclude, rsync_filter)
    key = hashlib.sha1(remote.encode()).hexdigest()[:16]
    manifest_path = f"{for_node(MOUNT_MANIFESTS, node_name(runner))}/{key}.json"
    old_raw = runner.read_file(manifest_path)
    old = json.loads(old_raw) if old_raw else {}
    sent = 0
    for rel, digest in manifest.items():
        if old.get(rel) == digest:
            continue
        src = local if rel == "" else local / rel
        dst = remote if rel == "" else f"{remote.rstrip('/')}/{rel}"
        runner.put_file(src.read_bytes(), dst, mode=src.stat().st_mode & 0o777)
        sent += 1
    if local.is_dir() and not manifest:
        runner.run(f"mkdir -p {shell_quote_path(remote)}", check=True)
    runner.put_file(json.dumps(manifest, sort_keys=True).encode(), manifest_path, mode=0o600)
    return sent


def shell_quote_path(path: str) -> str:
    """Quote a remote path for the shell while keeping a leading ~ expandable."""
    import shlex

    if path == "~" or path.startswith("~/"):
        return "~" + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)
