"""The head's memory folders on the machine's tmpfs (runtime/blobs.py keeps values there): where one is,
and removing those whose store is gone (a local node removed without its runtime's `stop`)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

MEMORY_ROOT = Path("/dev/shm")
OWNER_FILE = ".blobs"  # in a memory folder: the blobs folder it belongs to


def memory_dir(blobs: Path) -> Path:
    """The memory folder of the store whose blobs folder this is (the same for the head and its clients)."""
    digest = hashlib.sha256(str(blobs.resolve()).encode()).hexdigest()[:16]
    return MEMORY_ROOT / f"launch-{os.getuid()}-{digest}"


def forget_orphaned_memory() -> None:
    """Memory folders of this user whose blobs folder is gone."""
    try:
        folders = list(MEMORY_ROOT.glob(f"launch-{os.getuid()}-*"))
    except OSError:
        return
    for folder in folders:
        try:
            owner = Path((folder / OWNER_FILE).read_text())
        except OSError:
            continue  # (being made now)
        if not owner.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
