"""The cluster's SSH key pair where a cloud takes the public key in the instance itself (GCP metadata,
Azure osProfile): the user's (auth.ssh_public_key), else one made once for the cluster and kept in its
state dir, the private half 0600."""

from __future__ import annotations

from pathlib import Path

from core.config import ClusterConfig
from core.errors import ConfigError
from core.files import atomic_write


def cluster_key_pair(config: ClusterConfig, state_dir: Path, cloud: str) -> tuple[str, str | None]:
    """(public key line, private key path or None for the user's own, named in auth.ssh_private_key)."""
    if config.auth.ssh_public_key:
        path = Path(config.auth.ssh_public_key).expanduser()
        try:
            return path.read_text().strip(), None
        except OSError as e:
            raise ConfigError(f"auth.ssh_public_key: cannot read {path} ({e.strerror})") from None
    if config.auth.ssh_private_key:
        raise ConfigError(f"auth.ssh_public_key: {cloud} instances take the public key at creation; name it "
                          "next to auth.ssh_private_key")
    key_path = state_dir / f"launch-{cloud}-{config.cluster_name}.pem"
    pub_path = key_path.with_suffix(".pub")
    if not key_path.exists() or not pub_path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        atomic_write(key_path, private, mode=0o600)
        atomic_write(pub_path, f"{public} launch-{config.cluster_name}\n", mode=0o644)
    return pub_path.read_text().strip(), str(key_path.resolve())
