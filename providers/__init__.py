"""Providers: one module per provider behind one interface (providers.base.NodeProvider).

The registry maps a config's provider kind to a module and imports it only when that kind is used, so
a missing cloud SDK fails only for the cloud that needs it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import ConfigError

if TYPE_CHECKING:
    from launcher.config import ClusterConfig
    from providers.base import NodeProvider

# kind -> (module, class). A kind missing here is recognised by the config but not available yet.
_REGISTRY: dict[str, tuple[str, str]] = {
    "local": ("providers.local", "LocalProvider"),
    "ssh": ("providers.ssh", "SSHProvider"),
    "aws": ("providers.aws", "AWSProvider"),
}


def get_provider(cfg: ClusterConfig, cluster_dir: Path) -> NodeProvider:
    kind = cfg.provider.kind
    if kind not in _REGISTRY:
        raise ConfigError(f"provider.type: the {kind!r} provider is not available in this version of launch")
    module_name, cls_name = _REGISTRY[kind]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(cfg, cluster_dir)
