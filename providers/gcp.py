"""The `gcp` provider (Compute Engine through google-cloud-compute, imported only when a gcp cluster is used).

- Credentials: Ray's `provider.gcp_credentials` ({type: service_account, credentials: <the key file's
  JSON>} or {type: credentials_token, credentials: <an OAuth token>}) when set, else Application
  Default Credentials: `gcloud auth application-default login` on a laptop, the VM's own service
  account on the head (attached at create: the head node_config's `serviceAccounts`, else the
  project's default compute service account with the cloud-platform scope; docs/providers/gcp.md lists the roles).
- bootstrap, idempotent: the cluster's SSH key (the user's, or one made here and kept 0600), the
  subnetwork of the region on the network, and two firewall rules on the cluster's network tag: SSH
  from provider.ssh_cidr, and all traffic between the cluster's instances. Nothing opens the runtime's
  port. All of it is returned as the provider state.
- create: instances.insert per instance with the tags as labels from birth (core.tags.labels_of: one
  reversible encoding of any value into GCE's label rules); Ray's node_config passes through with short
  names (machineType, diskType, acceleratorType) completed into the zone's URLs, GPUs given
  onHostMaintenance TERMINATE, spot as provisioningModel SPOT (deleted when preempted). Each insert's
  zone operation is awaited; DONE with an `error` is a failure: a stockout moves to the next zone, and
  when every zone is out, CapacityError(type) tells the planner to back off. A half-made instance of a
  failed insert is deleted, never left behind.
- Every error is mapped once (`map_error`, `_operation_error`) onto the core's typed errors; 429s,
  rateLimitExceeded and 5xx are retried here with exponential backoff and jitter.
- list by label filter over each zone, following nextPageToken; preempted spot VMs found stopped are
  deleted (they are not capacity, and their disks cost); terminate deletes in parallel and ignores VMs
  already gone; cache_stopped_nodes stops instances and starts them again.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from core.config import ClusterConfig
from core.errors import (CapacityError, ConfigError, InvalidRequest, LaunchError, NodeNotFound, PermissionDenied,
                         ProviderError, QuotaError, TransientError, first_line)
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_CLUSTER, TAG_KIND, TAG_LAUNCH_HASH, TAG_NODE_TYPE, labels_of, tags_of
from providers.base import Bootstrapped, Capabilities, NodeInfo, ProviderFacts, zone_list
from providers.cloud import CloudProvider, CloudSection, equivalents_problems, fan_out, for_each_node, made_or_raise
from providers.gcp_prices import fetch_skus, gpu_price, machine_price, spot_rates
from providers.keys import cluster_key_pair

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                  "RESOURCE_POOL_EXHAUSTED", "STOCKOUT")
QUOTA_CODES = ("QUOTA_EXCEEDED", "quotaExceeded")
RETRY_REASONS = ("rateLimitExceeded", "userRateLimitExceeded", "backendError", "internalError")
LIVE = {"PROVISIONING": "pending", "STAGING": "pending", "RUNNING": "running"}
STOPPED = {"STOPPING": "stopping", "TERMINATED": "stopped", "SUSPENDING": "stopping", "SUSPENDED": "stopped"}
# machine families whose GPUs come with the machine type (no guestAccelerators in the request)
GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")
DEFAULT_IMAGES = {
    "cpu": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
    "gpu": "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204",
}


def machines_of(node_config: dict) -> list[str]:
    """The machine types a node type may be: `machineType` is one (a name, or a URL zones/Z/machineTypes/M),
    or a list of equivalents (ours, as AWS's InstanceType list: the cheapest with capacity is launched)."""
    machine = node_config.get("machineType")
    names = machine if isinstance(machine, list) else [machine]
    return [m.rsplit("/", 1)[-1] for m in names if isinstance(m, str) and m]


def _spot_of(node_config: dict) -> bool:
    sched = _scheduling(dict(node_config))
    return bool(sched.get("preemptible")) or sched.get("provisioningModel") == "SPOT"


FACTS = ProviderFacts(
    machines_of=machines_of,
    notices="gcp",
    spot_of=_spot_of,
    head_sdk=("google.cloud.compute_v1", "google.cloud.compute", "google.api_core", "google.auth", "google.oauth2",
              "google.rpc", "proto", "requests", "urllib3", "certifi", "charset_normalizer", "idna"),
    head_sdk_optional=frozenset({"google.api", "google.type", "google.longrunning", "grpc_status", "opentelemetry",
                                 "rsa", "pyasn1", "pyasn1_modules", "cachetools"}),
)


class Section(CloudSection):
    project_id: str | None = None  # default: the credentials' own project (as gcloud takes it)
    region: str
    # a zone, or several in order of preference (a list, or comma-separated): create fails over in order
    gcp_credentials: dict[str, Any] | None = None  # Ray's key
    # ours
    api_endpoint: str | None = None  # a private endpoint (Private Service Connect), or a test double
    network: str = "default"
    subnetwork: str | None = None  # default: the network's subnetwork in the region
    operation_timeout_s: float = Field(default=600.0, gt=0)
    # the Cloud Billing Catalog API (the head's spot prices, at most daily; a test double sets it)
    billing_endpoint: str = "https://cloudbilling.googleapis.com"


def _sdk():
    try:
        from google.api_core import client_options, exceptions
        from google.cloud import compute_v1
    except ImportError:
        raise ConfigError("provider.type: gcp needs the Compute Engine SDK: pip install 'launch[gcp]'") from None
    return compute_v1, exceptions, client_options


def gce_name(text: str, limit: int) -> str:
    """A name GCE accepts ([a-z]([-a-z0-9]*[a-z0-9])?) made from any cluster or type name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if not name[0].isalpha():
        name = "l" + name
    return name[:limit].rstrip("-")


def network_tag(cluster: str) -> str:
    return gce_name(f"launch-{cluster}", 63)


def accelerator_name(gce_type: str) -> str:
    """GCE's accelerator type as Ray names GPUs: nvidia-tesla-t4 -> T4, nvidia-l4 -> L4, nvidia-a100-80gb -> A100-80GB."""
    name = gce_type.rsplit("/", 1)[-1]
    for prefix in ("nvidia-tesla-", "nvidia-"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.upper()


# --- errors ------------------------------------------------------------------------------------------


def _reason(e: Exception) -> str:
    errors = getattr(e, "errors", None) or []
    for item in errors:
        if isinstance(item, dict) and item.get("reason"):
            return item["reason"]
    return getattr(e, "reason", None) or ""


def _message(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:300]


def map_error(e: Exception, op: str, node_type: str = "", zone: str | None = None, field: str = "") -> LaunchError:
    """One Compute Engine API error -> the core's typed error, naming the node type and the field at fault."""
    code = getattr(e, "code", None)
    status = int(code) if isinstance(code, int) else 0
    reason, message = _reason(e), _message(e)
    where = field or (f"available_node_types.{node_type}.node_config" if node_type else "provider")
    if any(c in message for c in CAPACITY_CODES) or "does not have enough resources" in message:
        return CapacityError(node_type or "?", zone, message)
    if reason in QUOTA_CODES or "Quota '" in message or "QUOTA_EXCEEDED" in message:
        return QuotaError(node_type or "?", message)
    if status == 429 or reason in RETRY_REASONS:
        return TransientError(f"gcp {op}: still throttled or failing after retries ({reason or status})")
    if status in (401, 403):
        who = f" for node type {node_type!r}" if node_type else ""
        return PermissionDenied(f"gcp {op}{who} refused ({reason or status}): {message}", _permission(message))
    if status == 404:
        return NodeNotFound(message)
    if status == 400:
        return InvalidRequest(f"{where}: gcp {op} refused: {message}")
    return ProviderError(f"gcp {op} failed ({reason or status or type(e).__name__}): {message}")


def _permission(message: str) -> str:
    """The IAM permission GCE says a call lacked ("Required 'compute.instances.create' permission for ...")."""
    m = re.search(r"Required '([\w.]+)' permission", message)
    return m.group(1) if m else ""


def _operation_error(op, what: str, node_type: str, zone: str | None) -> LaunchError:
    errors = list(op.error.errors) if op.error and op.error.errors else []
    codes = [x.code for x in errors]
    message = "; ".join(f"{x.code}: {x.message}" for x in errors)[:400] or "failed"
    where = f"available_node_types.{node_type}.node_config" if node_type else "provider"
    if any(c in CAPACITY_CODES for c in codes) or "does not have enough resources" in message:
        return CapacityError(node_type or "?", zone, message)
    if any(c in QUOTA_CODES for c in codes):
        return QuotaError(node_type or "?", message)
    status = op.http_error_status_code or 0
    if status in (401, 403):
        return PermissionDenied(f"gcp {what} refused: {message}", _permission(message))
    if status == 404:
        return NodeNotFound(message)
    if status == 400:
        return InvalidRequest(f"{where}: gcp {what} refused: {message}")
    return ProviderError(f"gcp {what} failed: {message}")


class _Clients:
    """The Compute Engine REST clients of one project, with one retry policy (429, rateLimitExceeded,
    5xx that are not stockouts: exponential backoff with jitter) and one error mapping."""

    def __init__(self, section: Section, project: str | None = None):
        compute_v1, exceptions, client_options = _sdk()
        self.compute, self.exceptions = compute_v1, exceptions
        credentials, own_project = _credentials(section)
        self.credentials = credentials  # (also for the Cloud Billing catalog: the head's spot prices)
        self.section = section
        # the project: the section's, else the one bootstrap found, else the credentials' own
        self.project = section.project_id or project or own_project
        if not self.project:
            raise ConfigError("provider.project_id: not set, and the credentials name no project of their own: "
                              "set provider.project_id")
        kw: dict[str, Any] = {"credentials": credentials, "transport": "rest"}
        if section.api_endpoint:
            kw["client_options"] = client_options.ClientOptions(api_endpoint=section.api_endpoint)
        self.instances = compute_v1.InstancesClient(**kw)
        self.zone_operations = compute_v1.ZoneOperationsClient(**kw)
        self.global_operations = compute_v1.GlobalOperationsClient(**kw)
        self.firewalls = compute_v1.FirewallsClient(**kw)
        self.networks = compute_v1.NetworksClient(**kw)
        self.subnetworks = compute_v1.SubnetworksClient(**kw)
        self.machine_types = compute_v1.MachineTypesClient(**kw)

    def call(self, fn, op: str, node_type: str = "", in_zone: str | None = None, field: str = "", **kwargs):
        """fn(**kwargs), retried; errors typed, naming node_type (and in_zone, the zone it was for)."""
        ex = self.exceptions
        delay = 0.5
        for attempt in range(1, self.section.retry_attempts + 1):
            try:
                return fn(**kwargs)
            except ex.GoogleAPICallError as e:
                message = _message(e)
                capacity = any(c in message for c in CAPACITY_CODES) or "does not have enough resources" in message
                retry = (isinstance(e, (ex.TooManyRequests, ex.InternalServerError, ex.ServiceUnavailable,
                                        ex.BadGateway, ex.GatewayTimeout))
                         or _reason(e) in RETRY_REASONS) and not capacity
                if not retry or attempt == self.section.retry_attempts:
                    raise map_error(e, op, node_type, in_zone, field) from None
            except (ex.RetryError, ConnectionError, OSError) as e:
                if attempt == self.section.retry_attempts:
                    raise TransientError(f"gcp {op}: the API does not answer ({type(e).__name__})") from None
            time.sleep(delay * (0.5 + random.random()))  # backoff with jitter between tries, not a wait for state
            delay = min(delay * 2, 16.0)

    def wait(self, op, what: str, node_type: str = "", zone: str | None = None) -> None:
        """Until the operation is DONE; one that ends DONE with an `error` raises its typed error."""
        deadline = time.monotonic() + self.section.operation_timeout_s
        delay = 0.2
        while op.status != self.compute.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise TransientError(f"gcp {what}: operation {op.name} not done after "
                                     f"{self.section.operation_timeout_s:.0f}s")
            time.sleep(delay)  # polling the operation resource is GCE's way to learn it finished
            delay = min(delay * 1.5, 2.0)
            if zone:
                op = self.call(self.zone_operations.get, "zoneOperations.get", node_type, zone,
                               project=self.project, zone=zone, operation=op.name)
            else:
                op = self.call(self.global_operations.get, "globalOperations.get", project=self.project,
                               operation=op.name)
        if op.error and op.error.errors:
            raise _operation_error(op, what, node_type, zone)


def _credentials(section: Section):
    """(credentials, the project they belong to, if they say)."""
    creds = section.gcp_credentials
    if creds:
        kind, value = creds.get("type"), creds.get("credentials")
        if kind == "credentials_token" and isinstance(value, str) and value:
            import google.oauth2.credentials

            return google.oauth2.credentials.Credentials(value), None
        if kind == "service_account" and value:
            import google.oauth2.service_account

            try:
                info = json.loads(value) if isinstance(value, str) else dict(value)
                return (google.oauth2.service_account.Credentials.from_service_account_info(info, scopes=SCOPES),
                        info.get("project_id"))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"provider.gcp_credentials.credentials: not a service account key ({e})") from None
        raise ConfigError("provider.gcp_credentials: type must be service_account or credentials_token, with "
                          "`credentials` set")
    import google.auth
    import google.auth.exceptions

    try:
        return google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ConfigError("provider.gcp_credentials: no Google credentials found: run `gcloud auth "
                          "application-default login`, or set provider.gcp_credentials") from None


# --- bootstrap ----------------------------------------------------------------------------------------


def config_problems(config: ClusterConfig) -> list[str]:
    """Rules of this provider that span the config, beyond its typed section: a machineType given as
    equivalents is a list of machine type names."""
    return equivalents_problems(config, lambda nc: nc.get("machineType"), "machineType", "a", "machine type")


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    section = Section.of(config.provider)
    zones = zone_list(section.availability_zone)
    if not zones:
        raise ConfigError(f"provider.availability_zone: name at least one zone of {section.region}")
    wrong = [z for z in zones if not z.startswith(section.region + "-")]
    if wrong:
        raise ConfigError(f"provider.availability_zone: {', '.join(wrong)} not in region {section.region}")
    gcp = _Clients(section)
    user = config.auth.ssh_user or "ubuntu"
    public_key, private_key = cluster_key_pair(config, state_dir, "gcp")
    network = _network(gcp, section)
    tag = network_tag(config.cluster_name)
    state = {
        "project": gcp.project,  # the head (other credentials: the instance's) works in the same project
        "zones": zones,
        "network": network,
        "subnetwork": _subnetwork(gcp, section, network),
        "network_tag": tag,
        "firewalls": _firewalls(gcp, config.cluster_name, tag, network, section),
        "ssh_keys": f"{user}:{public_key}",
        "head_service_accounts": config.node_type(config.head_node_type).node_config.get("serviceAccounts")
        or [{"email": "default", "scopes": SCOPES}],
    }
    notes = [] if section.project_id else [f"provider.project_id: not set; using {gcp.project}, the project of "
                                          "the credentials (as gcloud does)"]
    return Bootstrapped(state=state, ssh_user=user, ssh_private_key=private_key, notes=notes)


def _network(gcp: _Clients, section: Section) -> str:
    try:
        return gcp.call(gcp.networks.get, "networks.get", field="provider.network", project=gcp.project,
                        network=section.network.rsplit("/", 1)[-1]).self_link
    except NodeNotFound:
        raise ConfigError(f"provider.network: no network {section.network!r} in project {gcp.project}") from None


def _subnetwork(gcp: _Clients, section: Section, network: str) -> str:
    found = gcp.call(gcp.subnetworks.list, "subnetworks.list", field="provider.region", project=gcp.project,
                     region=section.region)
    subnets = [s for s in found if s.network.rsplit("/", 1)[-1] == network.rsplit("/", 1)[-1]]
    if section.subnetwork:
        subnets = [s for s in subnets if s.name == section.subnetwork.rsplit("/", 1)[-1]]
    if not subnets:
        raise ConfigError(f"provider.subnetwork: network {section.network!r} has no subnetwork"
                          f"{' ' + repr(section.subnetwork) if section.subnetwork else ''} in {section.region}")
    return subnets[0].self_link


def _firewalls(gcp: _Clients, cluster: str, tag: str, network: str, section: Section) -> list[str]:
    """SSH from ssh_cidr and everything between the cluster's instances, on its network tag; made once."""
    rules = {
        gce_name(f"{tag}-ssh", 63): {"allowed": [{"I_p_protocol": "tcp", "ports": ["22"]}],
                                     "source_ranges": [section.ssh_cidr]},
        gce_name(f"{tag}-internal", 63): {"allowed": [{"I_p_protocol": "all"}], "source_tags": [tag]},
    }
    for name, rule in rules.items():
        try:
            gcp.call(gcp.firewalls.get, "firewalls.get", project=gcp.project, firewall=name)
            continue
        except NodeNotFound:
            pass
        body = gcp.compute.Firewall(name=name, network=network, direction="INGRESS", target_tags=[tag],
                                    description=f"launch cluster {cluster}", **rule)
        try:
            op = gcp.call(gcp.firewalls.insert_unary, "firewalls.insert", field="provider", project=gcp.project,
                          firewall_resource=body)
            gcp.wait(op, "firewalls.insert")
        except ProviderError as e:
            if "already exists" not in str(e):  # made meanwhile by another `up`: the same rule
                raise
    return sorted(rules)


# --- the provider -------------------------------------------------------------------------------------


class Provider(CloudProvider):
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = section = Section.of(spec.config.provider)
        self.gcp = _Clients(section, spec.provider_state.get("project"))
        self.state = spec.provider_state
        self.zones: list[str] = self.state.get("zones") or zone_list(section.availability_zone)
        self.head_bind_host, self.head_port = section.head_bind_host, section.head_port
        self.capabilities = Capabilities(spot=True, zones=True, stop_start=True,
                                         reuses_ips=True, cleanup=True, live_spot_prices=True)
        self.spot_prices_every_s = 24 * 3600.0  # Google changes spot prices at most monthly: daily is plenty
        # Ray's key (default off on GCP, as in Ray): idle nodes are stopped and started again
        self.cache_stopped_nodes = bool(section.cache_stopped_nodes)
        self._zone_of: dict[str, str] = {}
        self._machine_types: dict[str, dict] = {}

    # --- catalog ----------------------------------------------------------------------------------

    def _machine(self, name: str, node_type: str) -> Any:
        name = name.rsplit("/", 1)[-1]
        if name not in self._machine_types:
            try:
                self._machine_types[name] = self.gcp.call(
                    self.gcp.machine_types.get, "machineTypes.get", node_type, self.zones[0],
                    project=self.gcp.project, zone=self.zones[0], machine_type=name)
            except NodeNotFound:
                raise InvalidRequest(f"available_node_types.{node_type}.node_config.machineType: no machine type "
                                     f"{name!r} in {self.zones[0]}") from None
        return self._machine_types[name]

    def _resources(self, machine: str, name: str, node_config: dict) -> dict[str, float]:
        info = self._machine(machine, name)
        res = {"CPU": float(info.guest_cpus), "memory": float(info.memory_mb) * 2**20}
        gpus = [(a.get("acceleratorType", ""), a.get("acceleratorCount", 1))
                for a in node_config.get("guestAccelerators") or []]
        gpus += [(a.guest_accelerator_type, a.guest_accelerator_count) for a in info.accelerators]
        if gpus:
            res["GPU"] = float(sum(int(c) for _, c in gpus))
            res[f"accelerator_type:{accelerator_name(gpus[0][0])}"] = 1.0
        return res

    def node_types(self) -> dict[str, dict[str, float]]:
        """Each type's resources from its machine type; for equivalents, what every one of them has (what is
        placed on a node of the type fits whichever is launched)."""
        out = {}
        for name, nt in self.spec.config.available_node_types.items():
            each = [self._resources(m, name, nt.node_config) for m in machines_of(nt.node_config)]
            out[name] = {k: min(r.get(k, 0.0) for r in each) for k in set.intersection(*map(set, each))} \
                if each else {}
        return out

    def spot_prices(self, machines: list[str]) -> dict[str, float]:
        """Spot prices in the cluster's region from the Cloud Billing catalog (providers/gcp_prices.py): of
        machine types (their parts and built-in GPUs) and of accelerator types attached to a VM."""
        from google.auth.transport.requests import AuthorizedSession

        try:
            skus = fetch_skus(AuthorizedSession(self.gcp.credentials), self.section.billing_endpoint)
        except Exception as e:  # noqa: BLE001  any failure: the catalog's prices serve meanwhile
            raise TransientError(f"gcp Cloud Billing catalog: {type(e).__name__}: {first_line(str(e))}") from None
        parts, gpus = spot_rates(skus, self.section.region)
        out: dict[str, float] = {}
        for name in machines:
            if name.startswith("nvidia-"):  # an accelerator type, attached to a VM
                price = gpu_price(gpus, name)
            else:
                info = self._machine(name, "")
                built_in = [(a.guest_accelerator_type, a.guest_accelerator_count) for a in info.accelerators]
                price = machine_price(parts, gpus, name, info.guest_cpus, info.memory_mb / 1024, built_in)
            if price is not None:
                out[name] = price
        return out

    # --- the insert body ----------------------------------------------------------------------------

    def _spot(self, node_config: dict, node_type: str) -> bool:
        return _spot_of(node_config) or self.spec.config.available_node_types[node_type].spot

    def body(self, node_type: str, zone: str, name: str, tags: dict[str, str], machine: str = "") -> dict:
        """instances.insert's body: the node_config with short names made zone URLs and launch's parts added
        (`machine`: which of equivalent machine types; default the first)."""
        nt = self.spec.config.available_node_types[node_type]
        b = copy.deepcopy(nt.node_config)
        b["name"] = name
        if isinstance(b.get("machineType"), list):
            b["machineType"] = machine or next(iter(machines_of(b)), "")
        machine = str(b.get("machineType") or "")
        if not machine:
            raise InvalidRequest(f"available_node_types.{node_type}.node_config.machineType: required")
        if "/" not in machine:
            b["machineType"] = f"zones/{zone}/machineTypes/{machine}"
        gpus = bool(b.get("guestAccelerators")) or machine.rsplit("/", 1)[-1].startswith(GPU_FAMILIES)
        for acc in b.get("guestAccelerators") or []:
            t = str(acc.get("acceleratorType", ""))
            if t and "/" not in t:
                acc["acceleratorType"] = f"projects/{self.gcp.project}/zones/{zone}/acceleratorTypes/{t}"
        disks = b.get("disks") or [{"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": {
            "diskSizeGb": 50, "sourceImage": DEFAULT_IMAGES["gpu" if gpus else "cpu"]}}]
        for d in disks:
            params = d.get("initializeParams") or {}
            dt = str(params.get("diskType") or "")
            if dt and "/" not in dt:
                params["diskType"] = f"zones/{zone}/diskTypes/{dt}"
            d.setdefault("autoDelete", True)  # deleting the instance deletes its disks: nothing of ours left
        b["disks"] = disks
        sched = _scheduling(b)
        if gpus:
            sched.setdefault("onHostMaintenance", "TERMINATE")  # GCE cannot live-migrate a VM with GPUs
        if self._spot(b, node_type):
            if not sched.get("preemptible"):
                sched.setdefault("provisioningModel", "SPOT")
                sched.setdefault("instanceTerminationAction", "DELETE")  # preempted: gone, not kept stopped
            sched["automaticRestart"] = False
            sched.setdefault("onHostMaintenance", "TERMINATE")
        if sched:
            b["scheduling"] = sched
        b["labels"] = {**(b.get("labels") or {}), **labels_of(tags)}
        items = [i for i in (b.get("metadata") or {}).get("items", []) if i.get("key") != "ssh-keys"]
        user_keys = [i.get("value", "") for i in (b.get("metadata") or {}).get("items", []) if i.get("key") == "ssh-keys"]
        items.append({"key": "ssh-keys", "value": "\n".join([*user_keys, self.state["ssh_keys"]]).strip()})
        b["metadata"] = {**(b.get("metadata") or {}), "items": items}
        b["tags"] = {"items": sorted({*((b.get("tags") or {}).get("items") or []), self.state["network_tag"]})}
        if not b.get("networkInterfaces"):
            nic: dict[str, Any] = {"subnetwork": self.state["subnetwork"]}
            if not self.section.use_internal_ips:
                nic["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
            b["networkInterfaces"] = [nic]
        if tags.get(TAG_KIND) == KIND_HEAD and not b.get("serviceAccounts"):
            b["serviceAccounts"] = self.state.get("head_service_accounts")
        return b

    def _instance(self, body: dict, node_type: str):
        try:
            return self.gcp.compute.Instance.from_json(json.dumps(body), ignore_unknown_fields=False)
        except Exception as e:  # noqa: BLE001 - the protobuf parser's error names the field
            detail = " ".join(str(e).split())[:200]
            raise InvalidRequest(f"available_node_types.{node_type}.node_config: not an instance body GCE "
                                 f"accepts: {detail}") from None

    # --- nodes --------------------------------------------------------------------------------------

    def _zones(self, node_type: str) -> list[dict]:
        """Where to launch, in order: for each machine type (equivalents cheapest first, by the catalog in the
        region, spot for a spot type; unknown ones last, in the user's order), the zones in order
        (CloudProvider._offerings)."""
        nt = self.spec.config.available_node_types[node_type]
        return self._offerings(machines_of(nt.node_config) or [""], [{"zone": z} for z in self.zones],
                               self.section.region, self._spot(nt.node_config, node_type))

    def _launch(self, node_type: str, offer: dict, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        """`count` inserts in one zone, their operations awaited together. Some failing is not an error
        for the others; a half-made instance of a failed insert is deleted."""
        zone = offer["zone"]
        prefix = gce_name(f"{self.spec.name}-{tags.get(TAG_KIND, 'worker')}", 50)
        names = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]

        def one(name: str):
            body = self.body(node_type, zone, name, tags, offer["machine"])
            request = self.gcp.compute.InsertInstanceRequest(
                project=self.gcp.project, zone=zone, instance_resource=self._instance(body, node_type),
                request_id=str(uuid.uuid4()))  # a retried insert is the same insert to GCE
            op = self.gcp.call(self.gcp.instances.insert_unary, "instances.insert", node_type, zone, request=request)
            try:
                self.gcp.wait(op, "instances.insert", node_type, zone)
            except LaunchError:
                self._delete_quietly(zone, name)
                raise
            self._zone_of[name] = zone
            return self._info(self.gcp.call(self.gcp.instances.get, "instances.get", node_type, zone,
                                            project=self.gcp.project, zone=zone, instance=name))

        return made_or_raise(fan_out(one, names))

    def _delete_quietly(self, zone: str, name: str) -> None:
        try:
            op = self.gcp.call(self.gcp.instances.delete_unary, "instances.delete", project=self.gcp.project,
                               zone=zone, instance=name)
            self.gcp.wait(op, "instances.delete", zone=zone)
        except NodeNotFound:
            pass

    def _start_stopped(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        match = {k: v for k, v in tags.items() if k in (TAG_CLUSTER, TAG_LAUNCH_HASH)}
        match[TAG_NODE_TYPE] = node_type
        cached = [n for n in self._scan(match, STOPPED) if n.state == "stopped" and not n.spot][:count]
        started = []
        for n in cached:
            zone = self._zone_of[n.id]
            try:
                op = self.gcp.call(self.gcp.instances.start_unary, "instances.start", node_type, zone,
                                   project=self.gcp.project, zone=zone, instance=n.id)
                self.gcp.wait(op, "instances.start", node_type, zone)
                self.set_tags(n.id, tags)
            except (CapacityError, NodeNotFound):  # no room to start it again here: make a new one instead
                continue
            n.tags.update(tags)
            n.state = "pending"
            started.append(n)
        return started

    def stop(self, node_ids: list[str]) -> None:
        """Stop (not delete) instances: their disks stay, and `create` starts them again."""
        self._each(node_ids, "stop")

    def stopped(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        return self._scan(tag_filters, STOPPED)

    def terminate(self, node_ids: list[str]) -> None:
        self._each(node_ids, "delete")

    def _each(self, node_ids: list[str], action: str) -> None:
        """One API call per instance, all under way at once, each awaited; instances already gone are skipped."""
        zones = self._locate(node_ids)

        def one(name: str):
            fn = getattr(self.gcp.instances, f"{action}_unary")
            op = self.gcp.call(fn, f"instances.{action}", project=self.gcp.project, zone=zones[name], instance=name)
            self.gcp.wait(op, f"instances.{action}", zone=zones[name])

        for_each_node([n for n in node_ids if n in zones], one)

    def _locate(self, names: list[str]) -> dict[str, str]:
        """The zone of each instance (those not found anywhere are gone already)."""
        missing = [n for n in names if n not in self._zone_of]
        if missing:
            self._scan({TAG_CLUSTER: self.spec.name}, {**LIVE, **STOPPED})
        return {n: self._zone_of[n] for n in names if n in self._zone_of}

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        return self._live_sweeping_preempted(self._scan(tag_filters, {**LIVE, **STOPPED}))

    def _scan(self, tag_filters: dict[str, str], statuses: dict[str, str]) -> list[NodeInfo]:
        flt = " AND ".join(f'labels.{k} = "{v}"' for k, v in labels_of(tag_filters).items())
        nodes = []
        for zone in self.zones:
            request = self.gcp.compute.ListInstancesRequest(project=self.gcp.project, zone=zone, filter=flt,
                                                            max_results=500)
            for inst in _pages(self.gcp, request, zone):
                if inst.status not in statuses:
                    continue
                node = self._info(inst)
                if all(node.tags.get(k) == v for k, v in tag_filters.items()):  # labels_of chunks: exact match
                    self._zone_of[node.id] = zone
                    nodes.append(node)
        return sorted(nodes, key=lambda n: (n.launched_at, n.id))

    def _info(self, inst) -> NodeInfo:
        tags = tags_of(dict(inst.labels))
        nic = inst.network_interfaces[0] if inst.network_interfaces else None
        external = nic.access_configs[0].nat_i_p if nic and nic.access_configs and nic.access_configs[0].nat_i_p else None
        sched = inst.scheduling
        spot = bool(sched and (sched.preemptible or sched.provisioning_model == "SPOT"))
        try:
            launched = datetime.fromisoformat(inst.creation_timestamp).timestamp()
        except ValueError:
            launched = time.time()
        return NodeInfo(
            id=inst.name, node_type=tags.get(TAG_NODE_TYPE, inst.machine_type.rsplit("/", 1)[-1]),
            state=LIVE.get(inst.status) or STOPPED.get(inst.status, inst.status.lower()), tags=tags,
            internal_ip=nic.network_i_p if nic else None, external_ip=external, launched_at=launched, spot=spot,
            machine=inst.machine_type.rsplit("/", 1)[-1], zone=inst.zone.rsplit("/", 1)[-1],
        )

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        zone = self._locate([node_id]).get(node_id)
        if zone is None:
            raise NodeNotFound(node_id)
        for _ in range(5):  # someone else changed the labels between our get and set: read them again
            inst = self.gcp.call(self.gcp.instances.get, "instances.get", project=self.gcp.project, zone=zone,
                                 instance=node_id)
            labels = {k: v for k, v in inst.labels.items()
                      if not any(k == t or k.startswith(f"{t}--") for t in tags)}
            labels.update(labels_of(tags))
            request = self.gcp.compute.InstancesSetLabelsRequest(labels=labels, label_fingerprint=inst.label_fingerprint)
            try:
                op = self.gcp.call(self.gcp.instances.set_labels_unary, "instances.setLabels", project=self.gcp.project,
                                   zone=zone, instance=node_id, instances_set_labels_request_resource=request)
            except ProviderError as e:
                if "fingerprint" in str(e).lower():
                    continue
                raise
            self.gcp.wait(op, "instances.setLabels", zone=zone)
            return
        raise TransientError(f"gcp setLabels on {node_id}: its labels kept changing")


    def cleanup(self, purge: bool = False) -> list[str]:
        """The cluster's own firewall rules (named for it, so never shared); the network and subnet stay."""
        for name in self.state.get("firewalls") or []:
            try:
                op = self.gcp.call(self.gcp.firewalls.delete_unary, "firewalls.delete", project=self.gcp.project,
                                   firewall=name)
                self.gcp.wait(op, "firewalls.delete")
            except NodeNotFound:
                pass
        return []


def _scheduling(body: dict) -> dict:
    """Ray's examples write `scheduling` as a list of one-key maps; GCE takes one map."""
    sched = body.get("scheduling") or {}
    if isinstance(sched, list):
        merged: dict = {}
        for part in sched:
            merged.update(part or {})
        sched = merged
    body["scheduling"] = sched
    return sched


def _pages(gcp: _Clients, request, zone: str):
    """Every instance of a list, a page per call (following nextPageToken), each call retried like any."""
    while True:
        pager = gcp.call(gcp.instances.list, "instances.list", in_zone=zone, request=request)
        page = next(iter(pager.pages))
        yield from page.items
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token
