"""The state of one cluster on the machine that runs the lifecycle: $LAUNCH_HOME/clusters/<name>.

On the laptop that is ~/.launch/clusters/<name>; the head's autoscaler keeps its own under the head's
runtime dir. It holds the cluster token (0600), the ClusterSpec `up` resolved, where the head serves,
pinned host keys, node setup logs, and the cluster's lock. What nodes exist is never stored here: it is
read from the provider.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import ClusterBusy
from core.files import atomic_write, file_lock, private_dir
from core.paths import KNOWN_HOSTS_FILE, SPEC_FILE, launch_home, node_log_name
from core.spec import ClusterSpec
from runtime.auth import new_token

LOCK_WAIT_S = 600.0


class ClusterDir:
    def __init__(self, cluster_name: str, home: Path | None = None, path: Path | None = None):
        self.name = cluster_name
        self.path = path or (home or launch_home()) / "clusters" / cluster_name
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    # --- the lock: one `up` or `down` of a cluster at a time ------------------------------------------

    @contextmanager
    def locked(self, what: str, say=lambda msg: None, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        lock_path = self.path / "cluster.lock"
        with file_lock(lock_path, blocking=False) as got:
            if got:
                yield
                return
        say(f"cluster {self.name!r} is busy (another `launch up` or `down` runs); waiting for it")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with file_lock(lock_path, blocking=False) as got:
                if got:
                    yield
                    return
            time.sleep(0.2)
        raise ClusterBusy(f"cluster {self.name!r} is busy: another `launch up` or `down` still holds it "
                          f"after {wait_s:.0f}s; try again when it has finished")

    # --- token --------------------------------------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.path / "token"

    def token(self) -> str:
        """The cluster token, created on first use."""
        if self.token_path.exists():
            return self.token_path.read_text().strip()
        token = new_token()
        atomic_write(self.token_path, token)
        return token

    def existing_token(self) -> str | None:
        return self.token_path.read_text().strip() if self.token_path.exists() else None

    # --- the resolved spec ----------------------------------------------------------------------------

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC_FILE

    def save_spec(self, spec: ClusterSpec) -> None:
        atomic_write(self.spec_path, spec.to_json())

    def load_spec(self) -> ClusterSpec | None:
        try:
            return ClusterSpec.from_json(self.spec_path.read_text())
        except FileNotFoundError:
            return None

    # --- where the head serves ------------------------------------------------------------------------

    @property
    def info_path(self) -> Path:
        return self.path / "cluster.json"

    def read_info(self) -> dict:
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_info(self, **fields) -> None:
        info = self.read_info()
        info.update(fields)
        atomic_write(self.info_path, json.dumps(info, indent=1, sort_keys=True))

    def forget_runtime(self) -> None:
        """After down: the token, spec and head address die with the cluster."""
        for p in (self.token_path, self.info_path, self.spec_path):
            p.unlink(missing_ok=True)

    @property
    def known_hosts(self) -> Path:
        return self.path / KNOWN_HOSTS_FILE

    def node_log(self, node_id: str) -> Path:
        p = self.path / node_log_name(node_id)
        private_dir(p.parent)  # setup logs may say what setup commands print: their user's only
        return p
