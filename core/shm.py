"""The head's memory folders on the machine's tmpfs (runtime/blobs.py keeps values there): where one is,
and removing those whose store is gone.

A folder names its store (OWNER_FILE: the blobs path, as its head sees it) and its head renews that file
while it runs. Whether a store is gone is not judged by its path: a head in another mount namespace (a
container sharing the host's /dev/shm, a VM twin) has a path this process may not see. A folder is removed
by the `stop` of its node, by the local provider with the node whose folder holds its store, and by any
head that starts once the folder has gone unrenewed for STALE_S."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

MEMORY_ROOT = Path("/dev/shm")
OWNER_FILE = ".blobs"  # in a memory folder: the blobs folder it belongs to; renewed by its head
STALE_S = 24 * 3600.0  # a folder its head has not renewed for this long has no head


def memory_dir(blobs: Path) -> Path:
    """The memory folder of the store whose blobs folder this is (the same for the head and its clients)."""
    digest = hashlib.sha256(str(blobs.resolve()).encode()).hexdigest()[:16]
    return MEMORY_ROOT / f"launch-{os.getuid()}-{digest}"


def _folders() -> list[Path]:
    try:
        return list(MEMORY_ROOT.glob(f"launch-{os.getuid()}-*"))
    except OSError:
        return []


def forget_memory_under(root: Path) -> None:
    """(a local node removed with its folder) The memory folders of stores under `root`."""
    root = root.resolve()
    for folder in _folders():
        try:
            owner = Path((folder / OWNER_FILE).read_text())
        except OSError:
            continue
        if owner.is_relative_to(root):
            shutil.rmtree(folder, ignore_errors=True)


def forget_stale_memory(now: float | None = None) -> None:
    """Memory folders of this user that no head has renewed for STALE_S."""
    now = time.time() if now is None else now
    for folder in _folders():
        try:
            if now - (folder / OWNER_FILE).stat().st_mtime > STALE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # (being made now)
