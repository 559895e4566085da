"""The cluster config: one pydantic model for the whole YAML file.

Key names follow Ray's cluster launcher so that a Ray user's file validates unchanged. Our own keys:
per node type `cost_per_hour` and `spot`, cluster-wide `max_cost_per_hour`.

Validation runs in two passes: pydantic checks shapes and types (every problem at once), then
`_semantic_problems` checks the rules that span fields. Each problem is one line that starts with the
dotted path of the field it is about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from core.errors import ConfigError

# Provider types we know. `local` is overloaded as in Ray: without head_ip it is our process provider,
# with head_ip/worker_ips it is Ray's on-prem form, which is our `ssh` provider.
PROVIDER_TYPES = ("local", "ssh", "aws", "gcp", "azure", "slurm")

_CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_NODE_TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RESOURCE_NAME = re.compile(r"^[^\s]+$")


def split_host_port(spec: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port` or `[v6addr]:port` -> (host, port); ValueError for a port that is not one."""
    host, sep, port = spec.rpartition(":")
    if not sep or "]" in port:  # no port (or a bare IPv6 address in brackets)
        return spec.strip("[]"), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} has an invalid port")
    return host.strip("[]"), int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ProviderConfig(BaseModel):
    """Provider section. Provider-specific keys (region, project_id, ...) pass through here; each
    provider checks them against its own typed `Section` (providers/), named field by field."""

    model_config = ConfigDict(extra="allow")

    type: str
    region: str | None = None
    availability_zone: str | None = None
    head_ip: str | None = None
    worker_ips: list[str] | None = None
    use_internal_ips: bool = False
    cache_stopped_nodes: bool | None = None

    @property
    def kind(self) -> str:
        """The provider module that serves this section: Ray's `local` + head_ip is on-prem SSH."""
        if self.type == "local" and self.head_ip:
            return "ssh"
        return self.type


class AuthConfig(_Strict):
    ssh_user: str | None = None
    ssh_private_key: str | None = None
    ssh_public_key: str | None = None
    ssh_proxy_command: str | None = None


class DockerConfig(BaseModel):
    # Parsed so a Ray file's docker section is understood; containers are rejected in the semantic pass.
    model_config = ConfigDict(extra="allow")

    image: str | None = None
    head_image: str | None = None
    worker_image: str | None = None
    container_name: str | None = None

    def wants_container(self) -> bool:
        return bool(self.image or self.head_image or self.worker_image)


class NodeTypeConfig(_Strict):
    node_config: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: int = 0
    max_workers: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    worker_setup_commands: list[str] | None = None
    docker: DockerConfig | None = None
    # Ours: price used by the autoscaler's cost-aware choice; spot marks interruptible capacity.
    cost_per_hour: float | None = None
    spot: bool = False


class RuntimeSettings(_Strict):
    """Ours: how the runtime tells a dead node: heartbeats every interval, dead after the timeout."""

    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    node_timeout_s: float = Field(default=10.0, gt=0)


class AutoscalerSettings(_Strict):
    """Ours: how the autoscaler on the head behaves (it runs where the provider allows: local, clouds)."""

    enabled: bool = True  # false: a static cluster, sized and repaired only by `launch up`
    tick_s: float = Field(default=5.0, gt=0)
    launch_timeout_minutes: float = Field(default=10.0, gt=0)  # a node not up-to-date by then is replaced
    runtime_grace_s: float = Field(default=60.0, gt=0)  # up-to-date but unknown to the runtime that long: replaced
    backoff_initial_s: float = Field(default=30.0, gt=0)  # after a capacity/quota error; doubles per failure
    backoff_max_s: float = Field(default=600.0, gt=0)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus text on the head; 0: any free port


class ClusterConfig(_Strict):
    cluster_name: str
    max_workers: int = 2
    upscaling_speed: float = 1.0
    idle_timeout_minutes: float = 5.0
    provider: ProviderConfig
    auth: AuthConfig = Field(default_factory=AuthConfig)
    docker: DockerConfig | None = None
    available_node_types: dict[str, NodeTypeConfig]
    head_node_type: str
    file_mounts: dict[str, str] = Field(default_factory=dict)
    cluster_synced_files: list[str] = Field(default_factory=list)
    file_mounts_sync_continuously: bool = False
    rsync_exclude: list[str] = Field(default_factory=list)
    rsync_filter: list[str] = Field(default_factory=list)
    initialization_commands: list[str] = Field(default_factory=list)
    setup_commands: list[str] = Field(default_factory=list)
    head_setup_commands: list[str] = Field(default_factory=list)
    worker_setup_commands: list[str] = Field(default_factory=list)
    head_start_commands: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("head_start_commands", "head_start_ray_commands")
    )
    worker_start_commands: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("worker_start_commands", "worker_start_ray_commands"),
    )
    no_restart: bool = False
    # Ours: the autoscaler never plans a fleet above this price.
    max_cost_per_hour: float | None = None
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)

    # Where relative file_mounts paths are resolved: the directory of the config file.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def node_type(self, name: str) -> NodeTypeConfig:
        return self.available_node_types[name]

    def worker_max(self, name: str) -> int:
        """How many workers of this type may run. Unset: the cluster-wide cap, except for the head's
        type, whose default is 0 (as in Ray): the head type is never launched as a worker unless asked."""
        nt = self.available_node_types[name]
        if nt.max_workers is not None:
            return nt.max_workers
        return 0 if name == self.head_node_type else self.max_workers

    def local_mount_path(self, local: str) -> Path:
        p = Path(local).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def setup_commands_for(self, node_type: str, is_head: bool) -> list[str]:
        if is_head:
            return [*self.setup_commands, *self.head_setup_commands]
        own = self.available_node_types[node_type].worker_setup_commands
        return [*self.setup_commands, *(self.worker_setup_commands if own is None else own)]

    def start_commands_for(self, is_head: bool) -> list[str]:
        return list(self.head_start_commands if is_head else self.worker_start_commands)


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


_PYDANTIC_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "greater_than": "must be > 0",
    "greater_than_equal": "must be >= 0",
    "less_than_equal": "must be <= 65535",
}


def pydantic_problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One line per problem, each starting with the dotted path of the field (under `prefix`)."""
    problems = []
    for e in err.errors():
        e = dict(e, loc=(*prefix, *e["loc"]))
        msg = _PYDANTIC_MESSAGES.get(e["type"], e["msg"])
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e:
            shown = repr(e["input"])
            msg += f" (got {shown[:60]})"
        problems.append(f"{_path(e['loc'])}: {msg}")
    return problems


def _semantic_problems(cfg: ClusterConfig) -> list[str]:
    p: list[str] = []
    if not _CLUSTER_NAME.match(cfg.cluster_name):
        p.append(
            "cluster_name: must start with a letter and hold only letters, digits, '-' and '_' "
            f"(at most 63 characters), got {cfg.cluster_name!r}"
        )
    if cfg.max_workers < 0:
        p.append(f"max_workers: must be >= 0 (got {cfg.max_workers})")
    if cfg.upscaling_speed <= 0:
        p.append(f"upscaling_speed: must be > 0 (got {cfg.upscaling_speed})")
    if cfg.idle_timeout_minutes < 0:
        p.append(f"idle_timeout_minutes: must be >= 0 (got {cfg.idle_timeout_minutes})")
    if cfg.max_cost_per_hour is not None and cfg.max_cost_per_hour <= 0:
        p.append(f"max_cost_per_hour: must be > 0 (got {cfg.max_cost_per_hour})")

    prov = cfg.provider
    if prov.type not in PROVIDER_TYPES:
        p.append(f"provider.type: unknown provider {prov.type!r}; expected one of {', '.join(PROVIDER_TYPES)}")
    if prov.kind == "ssh":
        if not prov.head_ip:
            p.append("provider.head_ip: required for an on-prem (ssh) cluster")
        if not cfg.auth.ssh_user:
            p.append("auth.ssh_user: required for an on-prem (ssh) cluster")
        for i, host in enumerate([prov.head_ip or "", *(prov.worker_ips or [])]):
            try:
                split_host_port(host, 22)
            except ValueError as e:
                where = "provider.head_ip" if i == 0 else f"provider.worker_ips.{i - 1}"
                p.append(f"{where}: {e}")
    elif prov.worker_ips:
        p.append(f"provider.worker_ips: only valid with head_ip for an on-prem cluster (provider.type {prov.type!r})")

    if not cfg.available_node_types:
        p.append("available_node_types: must declare at least one node type")
    elif cfg.head_node_type not in cfg.available_node_types:
        known = ", ".join(sorted(cfg.available_node_types))
        p.append(f"head_node_type: {cfg.head_node_type!r} is not in available_node_types ({known})")

    min_sum = 0
    for name, nt in cfg.available_node_types.items():
        where = f"available_node_types.{name}"
        if not _NODE_TYPE_NAME.match(name):
            p.append(f"{where}: node type names hold only letters, digits, '.', '-' and '_'")
        if nt.min_workers < 0:
            p.append(f"{where}.min_workers: must be >= 0 (got {nt.min_workers})")
        if nt.max_workers is not None:
            if nt.max_workers < 0:
                p.append(f"{where}.max_workers: must be >= 0 (got {nt.max_workers})")
            elif nt.max_workers < nt.min_workers:
                p.append(f"{where}.max_workers: must be >= min_workers ({nt.min_workers})")
        if name != cfg.head_node_type:
            min_sum += max(nt.min_workers, 0)
            if nt.min_workers > cfg.max_workers >= 0:
                p.append(f"{where}.min_workers: exceeds the cluster's max_workers ({cfg.max_workers})")
        for res, amount in nt.resources.items():
            if not _RESOURCE_NAME.match(res):
                p.append(f"{where}.resources: resource name {res!r} must be non-empty without spaces")
            elif amount < 0:
                p.append(f"{where}.resources.{res}: must be >= 0 (got {amount})")
        if nt.cost_per_hour is not None and nt.cost_per_hour < 0:
            p.append(f"{where}.cost_per_hour: must be >= 0 (got {nt.cost_per_hour})")
        if nt.docker is not None and nt.docker.wants_container():
            p.append(f"{where}.docker: containers are not supported yet; remove the image to run on the host")
    if min_sum > cfg.max_workers >= 0:
        p.append(f"max_workers: must be >= the sum of the worker types' min_workers ({min_sum})")

    if cfg.docker is not None and cfg.docker.wants_container():
        p.append("docker: containers are not supported yet; remove docker.image to run on the host")
    if cfg.cluster_synced_files:
        p.append("cluster_synced_files: not supported yet; use file_mounts")
    if cfg.file_mounts_sync_continuously:
        p.append("file_mounts_sync_continuously: not supported yet; set it to false")

    for remote, local in cfg.file_mounts.items():
        if not remote.strip():
            p.append("file_mounts: a remote path is empty")
        elif not cfg.local_mount_path(local).exists():
            p.append(f"file_mounts.{remote}: local path {local!r} does not exist")
    return p


SectionCheck = Callable[["ProviderConfig"], list[str]]

# Ray's on-prem form declares no node types: one type serves the head and the workers, each host's
# resources are detected when its runtime registers.
ONPREM_NODE_TYPE = "local.cluster.node"


def _onprem_node_type(data: dict) -> dict:
    """Ray's on-prem file (`provider: {type: local, head_ip, worker_ips}`, no available_node_types)
    as Ray reads it: one node type for every host; top-level `min_workers` and `max_workers` (both
    default to the number of worker_ips) become that type's limits."""
    provider = data.get("provider")
    if (not isinstance(provider, dict) or provider.get("type") not in ("local", "ssh") or not provider.get("head_ip")
            or "available_node_types" in data):
        return data
    data = dict(data)
    ips = provider.get("worker_ips") or []
    n = len(ips) if isinstance(ips, list) else 0
    max_workers = data.setdefault("max_workers", n)
    data["available_node_types"] = {ONPREM_NODE_TYPE: {
        "resources": {}, "min_workers": data.pop("min_workers", n), "max_workers": max_workers}}
    data["head_node_type"] = ONPREM_NODE_TYPE
    return data


def parse_config(data: Any, base_dir: Path | None = None, section_check: SectionCheck | None = None) -> ClusterConfig:
    """Validate a loaded YAML document. Raises ConfigError listing every problem.

    `section_check` validates the provider section against the provider's own typed model (the
    providers layer owns those; see lifecycle.config.load_config)."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): the cluster config must be a mapping of keys to values")
    if "head_node" in data or "worker_nodes" in data:
        raise ConfigError(
            "head_node: the legacy head_node/worker_nodes format is not supported; "
            "declare available_node_types and head_node_type"
        )
    data = _onprem_node_type(data)
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(pydantic_problems(e)) from None
    cfg._base_dir = (base_dir or Path.cwd()).resolve()
    problems = _semantic_problems(cfg)
    if section_check is not None and cfg.provider.type in PROVIDER_TYPES:
        named = {p.split(":", 1)[0] for p in problems}  # each field's problem once
        problems += [q for q in section_check(cfg.provider) if q.split(":", 1)[0] not in named]
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, section_check: SectionCheck | None = None) -> ClusterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return parse_config(data, base_dir=path.parent, section_check=section_check)


def json_schema() -> dict[str, Any]:
    return ClusterConfig.model_json_schema(by_alias=False)
