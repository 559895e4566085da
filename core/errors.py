"""Typed errors. Each carries a one-line message the CLI prints without a traceback.

The provider errors are what the core reacts to (Karpenter-style): a capacity or quota error backs the
node type (and zone) off, a transient error is retried, a config or permission error fails fast and
names the field; each cloud maps its own error codes onto these once, in its provider module.
"""

from __future__ import annotations


def first_line(text: str, limit: int = 300) -> str:
    """What a library said, as one line for the user: its first line, at most `limit` characters ("" for
    an empty text, which some errors carry)."""
    return (text.splitlines() or [""])[0][:limit]


class LaunchError(Exception):
    """An error the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(LaunchError):
    """The cluster config is invalid. Carries every problem found, one line each."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ProviderError(LaunchError):
    """A provider call failed in a way the caller may handle."""


class CapacityError(ProviderError):
    """The cloud has no capacity for this node type (in this zone): try the next zone, then back off."""

    def __init__(self, node_type: str, zone: str | None = None, detail: str = ""):
        self.node_type, self.zone = node_type, zone
        where = f" in {zone}" if zone else ""
        super().__init__(f"no capacity for node type {node_type!r}{where}" + (f": {detail}" if detail else ""))


class QuotaError(ProviderError):
    def __init__(self, node_type: str, detail: str = ""):
        self.node_type = node_type
        super().__init__(f"quota exceeded for node type {node_type!r}" + (f": {detail}" if detail else ""))


class TransientError(ProviderError):
    """Throttling or a passing fault that survived the SDK's own retries: try again later."""


class PermissionDenied(ProviderError):
    """The credentials may not do this: fails fast, names the operation, and the permission it needs
    where the cloud says which (ec2:RunInstances, compute.instances.create, Microsoft.Compute/...)."""

    def __init__(self, message: str, permission: str = ""):
        self.permission = permission
        super().__init__(message)


class InvalidRequest(ProviderError):
    """The cloud refused the request's parameters (a bad image, instance type, subnet): names the field."""


class NodeNotFound(ProviderError):
    def __init__(self, node_id: str):
        self.node_id = node_id
        super().__init__(f"node {node_id!r} not found")


class ClusterBusy(LaunchError):
    """Another launch command holds the cluster's lock."""
