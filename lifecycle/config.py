"""Loading a cluster config: the core model, with the provider section checked by its provider and each
provider's defaults filled in as Ray fills them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import config as _config
from core.config import ClusterConfig, ProviderRules
from providers import KINDS, section_problems
from providers.defaults import defaults_for

RULES = ProviderRules(kinds=KINDS, section_check=section_problems, defaults=defaults_for)


def load_config(path: str | Path) -> ClusterConfig:
    return _config.load_config(path, RULES)


def parse_config(data: Any, base_dir: Path | None = None) -> ClusterConfig:
    return _config.parse_config(data, base_dir=base_dir, rules=RULES)
