"""The launcher's own state for one cluster, under $LAUNCH_HOME/clusters/<name> (default ~/.launch).

Only what the user's machine must remember lives here: the cluster token (0600), where the head
serves, and the node setup logs. What nodes exist is never stored here: it is read from the provider.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.auth import new_token


def launch_home() -> Path:
    return Path(os.environ.get("LAUNCH_HOME", "~/.launch")).expanduser()


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class ClusterDir:
    def __init__(self, cluster_name: str, home: Path | None = None):
        self.name = cluster_name
        self.path = (home or launch_home()) / "clusters" / cluster_name
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    @property
    def token_path(self) -> Path:
        return self.path / "token"

    def token(self) -> str:
        """The cluster token, created on first use."""
        if self.token_path.exists():
            return self.token_path.read_text().strip()
        token = new_token()
        _write_private(self.token_path, token)
        return token

    def existing_token(self) -> str | None:
        return self.token_path.read_text().strip() if self.token_path.exists() else None

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
        _write_private(self.info_path, json.dumps(info, indent=1, sort_keys=True))

    def forget_runtime(self) -> None:
        """After down: the token and head address die with the cluster."""
        self.token_path.unlink(missing_ok=True)
        self.info_path.unlink(missing_ok=True)

    def node_log(self, node_id: str) -> Path:
        p = self.path / "logs" / f"{node_id}.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
