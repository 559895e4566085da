"""The cluster config: one pydantic model for the whole YAML file.

Key names follow Ray's cluster launcher so that a Ray user's file validates unchanged. Our own keys:
per node type `cost_per_hour` and `spot`, cluster-wide `max_cost_per_hour`.

Validation runs in two passes: pydantic checks shapes and types (every problem at once), then
`_semantic_problems` checks the rules that span fields. Each problem is one line that starts with the
dotted path of the field it is about.
"""

from __future__ import annotations

import copy
import os
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from core.errors import ConfigError
from core.runtime_defaults import HEARTBEAT_INTERVAL_S, NODE_TIMEOUT_S, OWNER_TIMEOUT_S

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
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


def provider_kind(type_, head_ip, coordinator_address) -> str:
    """The provider module a section names: its type, but Ray's `local` with a coordinator_address is a
    pool its coordinator hands out (as in Ray, whatever else is said), and with a head_ip on-prem SSH."""
    if type_ == "local" and coordinator_address:
        return "coordinator"
    if type_ == "local" and head_ip:
        return "ssh"
    return type_


class ProviderConfig(BaseModel):
    """Provider section. Provider-specific keys (region, project_id, ...) pass through here; each
    provider checks them against its own typed `Section` (providers/), named field by field."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: str
    region: str | None = None
    availability_zone: str | list[str] | None = None  # a zone, or zones in order (a list or comma-separated)
    head_ip: str | None = None
    worker_ips: list[str] | None = None
    use_internal_ips: bool = False
    cache_stopped_nodes: bool | None = None

    @property
    def kind(self) -> str:
        """The provider module that serves this section (provider_kind)."""
        return provider_kind(self.type, self.head_ip, getattr(self, "coordinator_address", None))


class AuthConfig(_Strict):
    ssh_user: str | None = None
    ssh_private_key: str | None = None
    ssh_public_key: str | None = None
    ssh_proxy_command: str | None = None
    # Ray's: the proxy command's %h is the node's id (an instance id, e.g. for `aws ssm start-session
    # --target %h`), not its IP
    ssh_proxy_use_node_id: bool = False


@dataclass(frozen=True)
class Container:
    """The container a node runs its setup, start commands and runtime in (Ray's `docker:` section, as
    it applies to one node): one long-lived container per node, on the host's network."""

    image: str
    name: str
    run_options: tuple[str, ...]  # shell words, as Ray passes them (`--ulimit nofile=65536:65536`)
    pull_before_run: bool
    detect_gpus: bool  # pass the host's GPUs in where the NVIDIA container toolkit is there
    detect_shm_size: bool  # Ray's --shm-size from the host's available memory
    cli: str = "docker"  # or podman


class DockerConfig(_Strict):
    """Ray's `docker:` section (also per node type, overlaid on the cluster's, as Ray merges them)."""

    image: str = ""
    head_image: str = ""
    worker_image: str = ""
    container_name: str = ""
    pull_before_run: bool = True
    run_options: list[str] = Field(default_factory=list)
    head_run_options: list[str] = Field(default_factory=list)
    worker_run_options: list[str] = Field(default_factory=list)
    disable_automatic_runtime_detection: bool = False
    disable_shm_size_detection: bool = False
    use_podman: bool = False

    def container(self, is_head: bool) -> Container | None:
        image = (self.head_image if is_head else self.worker_image) or self.image
        if not image:
            return None  # Ray's: an empty image runs the node on its host
        own = self.head_run_options if is_head else self.worker_run_options
        return Container(image=image, name=self.container_name, run_options=(*self.run_options, *own),
                         pull_before_run=self.pull_before_run,
                         detect_gpus=not self.disable_automatic_runtime_detection,
                         detect_shm_size=not self.disable_shm_size_detection,
                         cli="podman" if self.use_podman else "docker")


class NodeTypeConfig(_Strict):
    node_config: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: int = 0
    max_workers: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    worker_setup_commands: list[str] | None = None
    # Ray's: run before the cluster's initialization_commands on nodes of this type
    initialization_commands: list[str] = Field(default_factory=list)
    # Ray's: an idle node of this type is removed after this long (overrides idle_timeout_minutes)
    idle_timeout_s: float | None = Field(default=None, ge=0)
    # Ray's: among node types that serve demand at the same cost, the higher priority is launched first
    priority: int = 0
    docker: DockerConfig | None = None
    # Ours: price used by the autoscaler's cost-aware choice; spot marks interruptible capacity.
    cost_per_hour: float | None = None
    spot: bool = False


class RuntimeSettings(_Strict):
    """Ours: how the runtime tells a dead node: heartbeats every interval, dead after the timeout."""

    heartbeat_interval_s: float = Field(default=HEARTBEAT_INTERVAL_S, gt=0)
    node_timeout_s: float = Field(default=NODE_TIMEOUT_S, gt=0)
    owner_timeout_s: float = Field(default=OWNER_TIMEOUT_S, gt=0)


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
    metadata: dict[str, Any] = Field(default_factory=dict)  # Ray's: free-form, kept and ignored
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
    # what reading the file as Ray reads it dropped or filled in, said once by the CLI
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

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

    def ray_bootstrap_yaml(self) -> str:
        """The config as Ray writes it to the head's ~/ray_bootstrap_config.yaml (Ray's key names)."""
        data = self.model_dump(mode="json", exclude_unset=True)
        for ours, rays in (("head_start_commands", "head_start_ray_commands"),
                           ("worker_start_commands", "worker_start_ray_commands")):
            if ours in data:
                data[rays] = data.pop(ours)
        return yaml.safe_dump(data, sort_keys=False)

    def initialization_commands_for(self, node_type: str) -> list[str]:
        return [*self.available_node_types[node_type].initialization_commands, *self.initialization_commands]

    def setup_commands_for(self, node_type: str, is_head: bool) -> list[str]:
        if is_head:
            return [*self.setup_commands, *self.head_setup_commands]
        own = self.available_node_types[node_type].worker_setup_commands
        return [*self.setup_commands, *(self.worker_setup_commands if own is None else own)]

    def start_commands_for(self, is_head: bool) -> list[str]:
        return list(self.head_start_commands if is_head else self.worker_start_commands)

    def docker_for(self, node_type: str) -> DockerConfig | None:
        """The cluster's docker section with the node type's own keys over it (Ray's merge)."""
        own = self.available_node_types[node_type].docker if node_type in self.available_node_types else None
        if self.docker is None and own is None:
            return None
        merged = self.docker.model_dump(exclude_unset=True) if self.docker else {}
        merged.update(own.model_dump(exclude_unset=True) if own else {})
        return DockerConfig(**merged)

    def container_for(self, node_type: str, is_head: bool) -> Container | None:
        """The container a node of this type runs in; None: on its host."""
        docker = self.docker_for(node_type)
        return docker.container(is_head) if docker else None


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


_PYDANTIC_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "int_parsing": "must be an integer",
    "int_parsing_size": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
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


_SHORT = reprlib.Repr()  # Python 3.11 takes no keywords here
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxtuple = 4
_SHORT.maxlevel = 2


def pydantic_problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One line per problem, each starting with the dotted path of the field (under `prefix`)."""
    problems = []
    for e in err.errors():
        e = dict(e, loc=(*prefix, *e["loc"]))
        msg = _PYDANTIC_MESSAGES.get(e["type"], e["msg"])
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e:
            msg += f" (got {_SHORT.repr(e['input'])})"  # bounded: never expands a huge value first
        problems.append(f"{_path(e['loc'])}: {msg}")
    return problems


_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # docker's rule for names
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")  # [registry/]name[:tag][@digest]


def _docker_problems(cfg: ClusterConfig) -> list[str]:
    p: list[str] = []
    sections = [("docker", cfg.docker)] + [(f"available_node_types.{name}.docker", nt.docker)
                                           for name, nt in cfg.available_node_types.items()]
    for where, section in sections:
        if section is None:
            continue
        for key in ("image", "head_image", "worker_image"):
            value = getattr(section, key)
            if value and not _IMAGE.match(value):
                p.append(f"{where}.{key}: {value[:80]!r} is not an image reference ([registry/]name[:tag])")
        if section.container_name and not _CONTAINER_NAME.match(section.container_name):
            p.append(f"{where}.container_name: {section.container_name[:80]!r} is not a container name "
                     "(letters, digits, '_', '.' and '-')")
    in_containers = []
    for name in cfg.available_node_types:
        for is_head in ((True, False) if name == cfg.head_node_type else (False,)):
            container = cfg.container_for(name, is_head)
            if container is None:
                continue
            in_containers.append(name)
            if not container.name:
                own = cfg.available_node_types[name].docker
                where = f"available_node_types.{name}.docker" if own and own.model_fields_set & {
                    "image", "head_image", "worker_image"} else "docker"
                p.append(f"{where}.container_name: required with an image (the container's name on the node)")
    if in_containers and cfg.provider.kind in ("local", "slurm", "sim"):
        what = {"local": "processes on this machine", "sim": "simulated machines"}.get(cfg.provider.kind,
                                                                                    "Slurm allocations")
        p.append(f"docker: provider.type {cfg.provider.type!r} runs nodes as {what}, which cannot hold a "
                 "container of their own; remove the image to run on the host")
    return sorted(set(p), key=p.index)


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

    prov = cfg.provider  # (an on-prem cluster's own rules are its provider's: providers/ssh.py)
    if prov.kind not in ("ssh", "coordinator") and prov.worker_ips:
        p.append(f"provider.worker_ips: only valid with head_ip for an on-prem cluster (provider.type {prov.type!r})")

    if not cfg.available_node_types:
        p.append("available_node_types: must declare at least one node type")
    elif cfg.head_node_type not in cfg.available_node_types:
        known = ", ".join(sorted(cfg.available_node_types))
        p.append(f"head_node_type: {cfg.head_node_type!r} is not in available_node_types ({known})")

    p += _node_type_problems(cfg)
    p += _docker_problems(cfg)
    if cfg.cluster_synced_files:
        p.append("cluster_synced_files: not supported yet; use file_mounts")
    return p + _file_problems(cfg)


def _node_type_problems(cfg: ClusterConfig) -> list[str]:
    p: list[str] = []
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
    if min_sum > cfg.max_workers >= 0:
        p.append(f"max_workers: must be >= the sum of the worker types' min_workers ({min_sum})")
    return p


def _file_problems(cfg: ClusterConfig) -> list[str]:
    """The local files the config names: SSH keys and file mounts."""
    p: list[str] = []
    for key in ("ssh_private_key", "ssh_public_key"):
        value = getattr(cfg.auth, key)
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                p.append(f"auth.{key}: {value}: no such file")
            elif not os.access(path, os.R_OK):
                p.append(f"auth.{key}: {value}: cannot be read (permission denied)")

    for remote, local in cfg.file_mounts.items():
        if not remote.strip():
            p.append("file_mounts: a remote path is empty")
        elif not cfg.local_mount_path(local).exists():
            p.append(f"file_mounts.{remote}: local path {local!r} does not exist")
    return p


SectionCheck = Callable[["ClusterConfig"], list[str]]

# Ray's on-prem form declares no node types: one type serves the head and the workers, each host's
# resources are detected when its runtime registers.
ONPREM_NODE_TYPE = "local.cluster.node"


def onprem_form(provider) -> str:
    """Which of Ray's on-prem forms a provider section (a document's mapping) is: "coordinator" (its hosts
    handed out by a coordinator server), "ssh" (a fixed head_ip and worker_ips), or "" (neither)."""
    if not isinstance(provider, dict):
        return ""
    kind = provider_kind(provider.get("type"), provider.get("head_ip"), provider.get("coordinator_address"))
    if kind == "coordinator":
        return kind
    return "ssh" if kind == "ssh" and provider.get("head_ip") else ""


def _onprem_node_type(data: dict) -> tuple[dict, list[str]]:
    """Ray's on-prem file (`provider: {type: local, head_ip, worker_ips}` or `{type: local,
    coordinator_address}`, no available_node_types) as Ray reads it: one node type for every host;
    top-level `min_workers` and `max_workers` become that type's limits (by default, the number of
    worker_ips; with a coordinator, 0 and a max_workers the file must give)."""
    form = onprem_form(data.get("provider"))
    # Ray's files leave `available_node_types: {}` and `head_node_type: {}` as placeholders here
    if not form or data.get("available_node_types"):
        return data, []
    data = dict(data)
    if form == "coordinator":
        if "max_workers" not in data:
            return data, ["max_workers: required when a coordinator hands out the hosts "
                          "(provider.coordinator_address), as in Ray"]
        low, high = data.pop("min_workers", 0), data["max_workers"]
    else:
        ips = data["provider"].get("worker_ips") or []
        n = len(ips) if isinstance(ips, list) else 0
        low, high = data.pop("min_workers", n), data.setdefault("max_workers", n)
    data["available_node_types"] = {ONPREM_NODE_TYPE: {"resources": {}, "min_workers": low, "max_workers": high}}
    data["head_node_type"] = ONPREM_NODE_TYPE
    return data, []


ProviderDefaults = Callable[[dict], "dict | None"]  # a provider section -> its provider's defaults


def _ray_form(data: dict, defaults: ProviderDefaults | None) -> tuple[dict, list[str], list[str]]:
    """A Ray file read as Ray reads it: (data, warnings, problems).

    - Empty legacy `head_node`/`worker_nodes` are dropped (warned); non-empty ones are refused, naming them.
    - On-prem files without node types get Ray's one node type (`_onprem_node_type`).
    - The provider's defaults (Ray's defaults.yaml, ours per provider) are merged under the file as Ray
      merges them: each top-level key the file has replaces the default's whole.
    - Top-level `min_workers` elsewhere is dropped as Ray drops it (warned)."""
    warnings: list[str] = []
    problems: list[str] = []
    data = dict(data)
    for key in ("head_node", "worker_nodes"):
        if key not in data:
            continue
        if not data[key]:
            warnings.append(f"{key}: empty legacy key ignored (as Ray does)")
        else:
            problems.append(f"{key}: the legacy head_node/worker_nodes format is not supported; move its "
                            f"node_config into available_node_types.<type>.node_config")
        del data[key]
    data, onprem_problems = _onprem_node_type(data)
    problems += onprem_problems
    provider = data.get("provider")
    if defaults is not None and isinstance(provider, dict) and not onprem_form(provider):
        base = defaults(provider)
        if base:
            if "available_node_types" not in data:
                warnings.append(f"available_node_types: none declared; using the {provider.get('type')} "
                                f"provider's default node types ({', '.join(base.get('available_node_types', {}))})")
            data = {**copy.deepcopy(base), **data}
    if "min_workers" in data:
        del data["min_workers"]
        warnings.append("min_workers: ignored at the top level (as Ray does); set it per node type in "
                        "available_node_types")
    return data, warnings, problems


def _raw_problems(data: dict, kinds: tuple[str, ...]) -> list[str]:
    """Problems seen on the document itself, reported even when its shape is wrong elsewhere."""
    p: list[str] = []
    provider = data.get("provider")
    kind = provider.get("type") if isinstance(provider, dict) else None
    if kinds and isinstance(kind, str) and kind not in kinds:  # its defaults are unknown too: said first
        p.append(f"provider.type: unknown provider {kind!r}; expected one of {', '.join(kinds)}")
    return p


@dataclass(frozen=True)
class ProviderRules:
    """What the providers layer knows and this one does not (see lifecycle.config): the provider kinds,
    each provider's own rules and typed section (`section_check`), and its default keys (`defaults`)."""

    kinds: tuple[str, ...] = ()
    section_check: SectionCheck | None = None
    defaults: ProviderDefaults | None = None


def parse_config(data: Any, base_dir: Path | None = None, rules: ProviderRules = ProviderRules()) -> ClusterConfig:
    """Validate a loaded YAML document. Raises ConfigError listing every problem, all at once: those of
    the document itself, of its shape (pydantic), of the rules that span fields, and of its provider's
    rules where `rules` are given."""
    section_check, defaults = rules.section_check, rules.defaults
    if not isinstance(data, dict):
        raise ConfigError("(top level): the cluster config must be a mapping of keys to values")
    data, warnings, problems = _ray_form(data, defaults)
    types = data.get("available_node_types")
    if isinstance(types, dict) and len(types) > MAX_NODE_TYPES:  # too many to validate in bounded time
        raise ConfigError([*problems, f"available_node_types: {len(types):,} node types; at most {MAX_NODE_TYPES:,}"])
    problems += _raw_problems(data, rules.kinds)
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_once([*problems, *pydantic_problems(e)])) from None
    cfg._base_dir = (base_dir or Path.cwd()).resolve()
    cfg._warnings = warnings
    problems += _semantic_problems(cfg)
    if section_check is not None and cfg.provider.kind in rules.kinds:
        problems += section_check(cfg)
    if problems:
        raise ConfigError(_once(problems))
    return cfg


MAX_PROBLEMS = 50


def _once(problems: list[str]) -> list[str]:
    """Each field's problem once (the first said), and at most MAX_PROBLEMS lines."""
    seen: set[str] = set()
    out = []
    for p in problems:
        field = p.split(":", 1)[0]
        if field not in seen:
            seen.add(field)
            out.append(p)
    if len(out) > MAX_PROBLEMS:
        out = out[:MAX_PROBLEMS] + [f"(top level): {len(out) - MAX_PROBLEMS} more problem(s) not shown"]
    return out


# Bounds that keep a hostile file (huge, binary, deeply nested, an alias bomb) to one clean line in a
# second or two and bounded memory. A real cluster config is a few KiB, nests 6-8 levels, and uses
# a handful of YAML anchors.
MAX_FILE_BYTES = 1 << 20
MAX_NESTING = 64
MAX_ELEMENTS = 200_000  # values in the document with every alias expanded
MAX_NODE_TYPES = 1000


def _nesting_problem(text: str) -> str | None:
    """A cheap scan before the YAML parser sees the text (libyaml recurses per level, and crashes on a
    document nested 100,000 deep): flow brackets and block indentation, each bounded."""
    depth = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip(" -?")
        if len(line) - len(stripped) > 4 * MAX_NESTING:
            return f"line {line_no}: nested deeper than {MAX_NESTING} levels"
        # brackets are counted even inside quotes and comments: a false alarm would need dozens of
        # unbalanced ones in a string, and no string can hide real nesting
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > MAX_NESTING:
                    return f"line {line_no}: nested deeper than {MAX_NESTING} levels"
            elif ch in "]}":
                depth = max(0, depth - 1)
    return None


def _too_many_elements(data: Any) -> bool:
    """True when the document, aliases expanded, holds more than MAX_ELEMENTS values (an alias bomb):
    counted with a budget, so the walk itself stops early."""
    budget = MAX_ELEMENTS
    stack = [data]
    while stack:
        budget -= 1
        if budget < 0:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_config_file(path: str | Path) -> Any:
    """The YAML document of a config file, or ConfigError with one line saying what is wrong with it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a cluster config is a few KiB")
    if b"\0" in raw:
        raise ConfigError(f"{path}: contains NUL bytes: not a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    problem = _nesting_problem(text)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {str(problem)[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than {MAX_NESTING} levels") from None
    if _too_many_elements(data):
        raise ConfigError(f"{path}: more than {MAX_ELEMENTS:,} values once YAML aliases are expanded "
                          "(an alias bomb?)")
    return data


def load_config(path: str | Path, rules: ProviderRules = ProviderRules()) -> ClusterConfig:
    path = Path(path)
    return parse_config(read_config_file(path), base_dir=path.parent, rules=rules)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of what `validate` accepts, for editors: Ray's aliases and the keys read the way
    Ray reads them (legacy empties, top-level min_workers) included; node types and the head type are
    not required (a provider's defaults fill them)."""
    schema = ClusterConfig.model_json_schema(by_alias=False)
    props = schema["properties"]
    for name, info in ClusterConfig.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None) or []
        for alias in choices:
            if isinstance(alias, str) and alias != name:
                props[alias] = props[name]
    props["min_workers"] = {"type": "integer", "description": "Ray's: on-prem, the node type's minimum; "
                                                            "elsewhere ignored (as Ray does)"}
    for legacy in ("head_node", "worker_nodes"):
        props[legacy] = {"description": "Ray's legacy key: accepted only empty", "anyOf": [
            {"type": "null"}, {"type": "object", "maxProperties": 0}]}
    schema["required"] = ["cluster_name", "provider"]
    _limits(schema)
    return schema


def _nullable_limit(prop: dict, **limit) -> None:
    """A bound on a number that may also be null (pydantic's anyOf [number, null])."""
    for choice in prop.get("anyOf", [prop]):
        if choice.get("type") in ("number", "integer"):
            choice.update(limit)


def _limits(schema: dict[str, Any]) -> None:
    """The rules validate checks one field at a time (_semantic_problems, _node_type_problems,
    _docker_problems), carried into the schema as its limits, so an editor flags them too. What spans
    fields (head_node_type naming a node type, min_workers against max_workers and their sums, a mount's
    local path existing, an image's container name set at the cluster or node type) is validate's alone."""
    props, defs = schema["properties"], schema["$defs"]
    props["cluster_name"]["pattern"] = _CLUSTER_NAME.pattern
    props["max_workers"]["minimum"] = 0
    props["upscaling_speed"]["exclusiveMinimum"] = 0
    props["idle_timeout_minutes"]["minimum"] = 0
    _nullable_limit(props["max_cost_per_hour"], exclusiveMinimum=0)
    props["cluster_synced_files"]["maxItems"] = 0  # not supported yet
    types = props["available_node_types"]
    types.update(minProperties=1, propertyNames={"pattern": _NODE_TYPE_NAME.pattern})
    node_type = defs["NodeTypeConfig"]["properties"]
    node_type["min_workers"]["minimum"] = 0
    _nullable_limit(node_type["max_workers"], minimum=0)
    _nullable_limit(node_type["cost_per_hour"], minimum=0)
    node_type["resources"].update(propertyNames={"pattern": _RESOURCE_NAME.pattern},
                                  additionalProperties={"type": "number", "minimum": 0})
    docker = defs["DockerConfig"]["properties"]
    for key in ("image", "head_image", "worker_image"):
        docker[key]["pattern"] = f"^$|{_IMAGE.pattern}"
    docker["container_name"]["pattern"] = f"^$|{_CONTAINER_NAME.pattern}"
