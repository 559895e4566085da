"""Providers: one module per provider behind one interface (providers.base).

The registry maps a config's provider kind to a module and imports it only when that kind is used, so
a missing cloud SDK fails only for the cloud that needs it (SDKs are imported inside the modules,
lazily, too: validating a config never needs one).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from core.config import ClusterConfig, pydantic_problems
from core.errors import ConfigError
from core.spec import ClusterSpec
from providers.base import Bootstrapped, ProviderBase, ProviderFacts

# kind -> module. A kind missing here is recognised by the config but not available yet.
_MODULES: dict[str, str] = {
    "local": "providers.local",
    "ssh": "providers.ssh",
    "coordinator": "providers.coordinator",
    "aws": "providers.aws",
    "gcp": "providers.gcp",
    "azure": "providers.azure",
    "slurm": "providers.slurm",
    "sim": "providers.sim",
}


KINDS = tuple(_MODULES)  # the provider kinds a config may name


def facts(kind: str) -> ProviderFacts:
    """What launch knows of a provider kind without building one (its SDK is not imported)."""
    return _module(kind).FACTS


def _module(kind: str) -> ModuleType:
    if kind not in _MODULES:
        raise ConfigError(f"provider.type: the {kind!r} provider is not available in this version of launch")
    return importlib.import_module(_MODULES[kind])


def section_problems(config: ClusterConfig) -> list[str]:
    """The provider's own rules that span the config (an on-prem cluster's hosts and user, a Slurm type's
    request), then its section checked against its typed model (e.g. `provider.regoin`)."""
    section = config.provider
    if section.kind not in _MODULES:
        return []
    module = _module(section.kind)
    problems = module.config_problems(config)
    try:
        typed = module.Section.of(section)
    except ValidationError as e:
        problems += pydantic_problems(e, ("provider",))
    else:
        config._warnings += [w for w in typed.warnings() if w not in config._warnings]
    return problems


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    return _module(config.provider.kind).bootstrap(config, state_dir)


def build(spec: ClusterSpec) -> ProviderBase:
    return _module(spec.provider_kind).Provider(spec)


def section_model(kind: str) -> type:
    """The typed model of a provider kind's section (its SDK is not imported)."""
    return _module(kind).Section


def section(config: ClusterConfig):
    """The provider section as its provider's typed model (validated already when the config loaded)."""
    return _module(config.provider.kind).Section.of(config.provider)
