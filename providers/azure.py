"""The `azure` provider (azure-mgmt-compute with the network, resource, msi and authorization clients,
imported only when an azure cluster is used).

- Credentials: DefaultAzureCredential on the laptop (environment, Azure CLI login, ...); on the head the
  managed identity bootstrap made for it, whose roles reach only the cluster's resource group. A private
  cloud (Azure Stack Hub) or a test double sets `api_endpoint`, `ca_bundle` and `access_token`.
- bootstrap, idempotent: the resource group (made and marked as launch's if missing), a virtual network
  and subnet, a network security group that lets SSH in from provider.ssh_cidr and nothing else from
  outside (never the runtime's port), the head's user-assigned identity and its role assignments
  (Virtual Machine Contributor, Network Contributor) scoped to the resource group.
- create: per VM a NIC (and a public IP unless use_internal_ips), then the VM with Ray's
  azure_arm_parameters (vmSize, image, priority Spot with its eviction policy and max price, OS disk
  size, zones), every dependent resource created with deleteOption Delete, so deleting the VM leaves no
  NIC, disk or IP; tags carry the cluster state. The VM's long-running operation is polled as ARM
  says (Azure-AsyncOperation / Location, Retry-After). AllocationFailed, ZonalAllocationFailed,
  SkuNotAvailable and OverconstrainedAllocationRequest move on to the next zone, then back the type
  off; a VM that failed is deleted with its NIC and IP.
- Errors are mapped once (`map_error`); 429 and 5xx are retried by azure-core's retry policy, which
  honours Retry-After.
- list pages through nextLink and reads power states; a spot VM Azure deallocated is deleted when seen;
  terminate deletes in parallel and ignores VMs already gone; cache_stopped_nodes deallocates and starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any


from core.config import ClusterConfig
from core.errors import (CapacityError, ConfigError, InvalidRequest, LaunchError, NodeNotFound, PermissionDenied,
                         ProviderError, QuotaError, TransientError, first_line)
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_CLUSTER, TAG_KIND, TAG_LAUNCH_HASH, TAG_NODE_TYPE
from providers.base import Bootstrapped, Capabilities, NodeInfo, ProviderFacts, zone_list
from providers.cloud import CloudProvider, CloudSection, equivalents_problems, fan_out, for_each_node, made_or_raise
from providers.keys import cluster_key_pair

CAPACITY_CODES = {"AllocationFailed", "ZonalAllocationFailed", "SkuNotAvailable", "OverconstrainedAllocationRequest",
                  "OverconstrainedZonalAllocationRequest", "AllocationTimedOut"}
PERMISSION_CODES = {"AuthorizationFailed", "AuthenticationFailed", "InvalidAuthenticationToken",
                    "LinkedAuthorizationFailed", "Forbidden"}
HEAD_ROLES = ("Virtual Machine Contributor", "Network Contributor")
PRICE_FILTER_SIZES = 10  # VM sizes in one Retail Prices query (its $filter has a length limit)
TAG_CREATED = "launch-created-by"  # on a resource group launch made: `down --purge` may delete it
DEFAULT_IMAGE = {"imagePublisher": "Canonical", "imageOffer": "0001-com-ubuntu-server-jammy",
                 "imageSku": "22_04-lts-gen2", "imageVersion": "latest"}


def sizes_of(node_config: dict) -> list[str]:
    """The VM sizes a node type may be: azure_arm_parameters.vmSize is one, or a list of equivalents (ours, as
    AWS's InstanceType list: the cheapest with capacity is created)."""
    size = _params(node_config).get("vmSize")
    return [m for m in (size if isinstance(size, list) else [size]) if isinstance(m, str) and m]


def _unused_by_head(parts: list[str]) -> bool:
    """The management clients' async halves: the head uses the sync ones."""
    return parts[:2] == ["azure", "mgmt"] and "aio" in parts[3:-1]


FACTS = ProviderFacts(
    machines_of=lambda node_config: sizes_of(node_config),
    spot_of=lambda node_config: _params(node_config).get("priority") == "Spot",
    notices="azure",
    region_key="location",
    head_sdk=("azure.core", "azure.mgmt.core", "azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource",
              "azure.mgmt.msi", "azure.mgmt.authorization", "azure.identity", "azure.common", "azure.profiles",
              "msal", "isodate", "requests", "urllib3", "certifi", "charset_normalizer", "idna"),
    head_sdk_optional=frozenset({"jwt", "msal_extensions"}),
    head_sdk_unused=_unused_by_head,
)


class Section(CloudSection):
    location: str
    resource_group: str
    subscription_id: str | None = None  # default: AZURE_SUBSCRIPTION_ID, else the Azure CLI's default
    # ours
    vnet_cidr: str = "10.0.0.0/16"
    subnet_cidr: str = "10.0.0.0/24"
    # a private cloud (Azure Stack Hub) or a test double: where ARM is, its CA, a bearer token to use
    api_endpoint: str | None = None
    ca_bundle: str | None = None
    access_token: str | None = None
    # Azure's Retail Prices API (public, no credentials): the head's live spot prices (a test double sets it)
    prices_endpoint: str = "https://prices.azure.com"


def _sdk():
    try:
        from azure.core.exceptions import (
            AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError,
            ServiceResponseError,
        )
        from azure.mgmt.authorization import AuthorizationManagementClient
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.msi import ManagedServiceIdentityClient
        from azure.mgmt.network import NetworkManagementClient
        from azure.mgmt.resource.resources import ResourceManagementClient
    except ImportError:
        raise ConfigError("provider.type: azure needs the Azure SDKs: pip install 'launch[azure]'") from None
    return {"compute": ComputeManagementClient, "network": NetworkManagementClient,
            "resource": ResourceManagementClient, "msi": ManagedServiceIdentityClient,
            "authorization": AuthorizationManagementClient, "HttpResponseError": HttpResponseError,
            "NotFound": ResourceNotFoundError, "AzureError": AzureError, "AuthError": ClientAuthenticationError,
            "Unreachable": (ServiceRequestError, ServiceResponseError)}


def azure_name(text: str, limit: int = 64) -> str:
    name = re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"
    return name[:limit].rstrip("-")


def subscription_of(section: Section) -> str:
    if section.subscription_id:
        return section.subscription_id
    if os.environ.get("AZURE_SUBSCRIPTION_ID"):
        return os.environ["AZURE_SUBSCRIPTION_ID"]
    profile = Path.home() / ".azure" / "azureProfile.json"
    try:
        subs = json.loads(profile.read_text(encoding="utf-8-sig")).get("subscriptions", [])
        default = [s["id"] for s in subs if s.get("isDefault")]
        if default:
            return default[0]
    except (OSError, ValueError, KeyError):
        pass
    raise ConfigError("provider.subscription_id: not set, and no default subscription (AZURE_SUBSCRIPTION_ID, "
                      "or `az login`)")


# --- errors ------------------------------------------------------------------------------------------


def _code(e: Exception) -> str:
    err = getattr(e, "error", None)
    return (getattr(err, "code", None) or "") if err is not None else ""


def _message(e: Exception) -> str:
    err = getattr(e, "error", None)
    msg = getattr(err, "message", None) or getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:300]


NO_CREDENTIALS = ("provider: no usable Azure credentials found: run `az login`, set AZURE_CLIENT_ID, "
                  "AZURE_TENANT_ID and AZURE_CLIENT_SECRET, or run where a managed identity is assigned")


def map_sdk_error(e: Exception, op: str, sdk: dict) -> LaunchError:
    """An error the SDK raised without an answer from ARM: no credential gave a token, ARM unreachable."""
    if isinstance(e, sdk["AuthError"]):
        return PermissionDenied(NO_CREDENTIALS)
    said = first_line(str(e), 200)
    if isinstance(e, sdk["Unreachable"]):
        return TransientError(f"azure {op}: the API does not answer ({type(e).__name__}: {said})")
    return ProviderError(f"azure {op} failed: {type(e).__name__}: {said}")


def map_error(e: Exception, op: str, node_type: str = "", zone: str | None = None) -> LaunchError:
    """One ARM error -> the core's typed error, naming the node type and the field at fault."""
    code, message = _code(e), _message(e)
    status = getattr(e, "status_code", 0) or 0
    where = f"available_node_types.{node_type}.node_config.azure_arm_parameters" if node_type else "provider"
    if code in CAPACITY_CODES:
        return CapacityError(node_type or "?", zone, f"{code}: {message}")
    if "quota" in message.lower() and (code in ("OperationNotAllowed", "QuotaExceeded") or status == 409):
        return QuotaError(node_type or "?", f"{code}: {message}")
    if status == 429 or code in ("TooManyRequests", "RetryableError"):
        return TransientError(f"azure {op}: still throttled after retries")
    if code in PERMISSION_CODES or status in (401, 403):
        who = f" for node type {node_type!r}" if node_type else ""
        action = re.search(r"perform action '([^']+)'", message)  # the RBAC action the identity lacks
        return PermissionDenied(f"azure {op}{who} refused: {code}: {message}", action.group(1) if action else "")
    if status == 404 or code in ("ResourceNotFound", "NotFound", "ResourceGroupNotFound"):
        return NodeNotFound(message)
    if status == 400 or code.startswith("Invalid"):
        return InvalidRequest(f"{where}: azure {op} refused: {code}: {message}")
    return ProviderError(f"azure {op} failed: {code or status or type(e).__name__}: {message}")


class _StaticToken:
    """A credential that hands out one bearer token (api_endpoint setups and tests)."""

    def __init__(self, token: str):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


class _Clients:
    def __init__(self, section: Section, subscription: str, identity_client_id: str | None = None):
        sdk = _sdk()
        self.sdk, self.section, self.subscription = sdk, section, subscription
        if section.access_token:
            credential: Any = _StaticToken(section.access_token)
        else:
            from azure.identity import DefaultAzureCredential

            # it logs each credential it tried, many lines, when none gives a token: that is said in one
            logging.getLogger("azure.identity").setLevel(logging.CRITICAL)

            # the laptop: environment or CLI login; the head: the managed identity bootstrap gave it (IMDS)
            credential = DefaultAzureCredential(managed_identity_client_id=identity_client_id)
        kw: dict[str, Any] = {"retry_total": section.retry_attempts}  # azure-core: 429/5xx, honours Retry-After
        if section.api_endpoint:
            kw["base_url"] = section.api_endpoint
            kw["credential_scopes"] = ["https://management.azure.com/.default"]
        if section.ca_bundle:
            kw["connection_verify"] = section.ca_bundle
        self.compute = sdk["compute"](credential, subscription, **kw)
        self.network = sdk["network"](credential, subscription, **kw)
        self.resource = sdk["resource"](credential, subscription, **kw)
        self.msi = sdk["msi"](credential, subscription, **kw)
        self.authorization = sdk["authorization"](credential, subscription, **kw)

    def call(self, fn, op: str, node_type: str = "", in_zone: str | None = None, *args, **kwargs):
        """fn(*args, **kwargs); a poller it returns is waited for. Errors typed."""
        try:
            out = fn(*args, **kwargs)
            if hasattr(out, "by_page"):  # a pager: its pages (nextLink) fetched here, so errors are typed too
                return list(out)
            return out.result() if hasattr(out, "result") and hasattr(out, "done") else out
        except self.sdk["HttpResponseError"] as e:
            if getattr(e, "response", None) is None:  # raised before any answer: a credential without a token
                raise map_sdk_error(e, op, self.sdk) from None
            raise map_error(e, op, node_type, in_zone) from None
        except self.sdk["AzureError"] as e:
            raise map_sdk_error(e, op, self.sdk) from None


# --- bootstrap ----------------------------------------------------------------------------------------


def config_problems(config: ClusterConfig) -> list[str]:
    """Rules of this provider that span the config, beyond its typed section: a vmSize given as equivalents
    is a list of VM size names."""
    return equivalents_problems(config, lambda nc: _params(nc).get("vmSize"), "azure_arm_parameters.vmSize", "a",
                                "VM size")


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    section = Section.of(config.provider)
    subscription = subscription_of(section)
    az = _Clients(section, subscription)
    name, rg, loc = config.cluster_name, section.resource_group, section.location
    user = config.auth.ssh_user or "ubuntu"
    public_key, private_key = cluster_key_pair(config, state_dir, "azure")
    created = _resource_group(az, section, name)
    nsg = az.call(az.network.network_security_groups.begin_create_or_update, "networkSecurityGroups.create",
                  "", None, rg, azure_name(f"launch-{name}-nsg", 80), {
                      "location": loc, "tags": {TAG_CLUSTER: name}, "properties": {"securityRules": [
                          {"name": "ssh", "properties": {
                              "protocol": "Tcp", "direction": "Inbound", "access": "Allow", "priority": 1000,
                              "sourceAddressPrefix": section.ssh_cidr, "sourcePortRange": "*",
                              "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]}})
    vnet_name = "launch-vnet"
    try:
        az.call(az.network.virtual_networks.get, "virtualNetworks.get", "", None, rg, vnet_name)
    except NodeNotFound:
        az.call(az.network.virtual_networks.begin_create_or_update, "virtualNetworks.create", "", None, rg,
                vnet_name, {"location": loc, "properties": {"addressSpace": {"addressPrefixes": [section.vnet_cidr]}}})
    subnet = az.call(az.network.subnets.begin_create_or_update, "subnets.create", "", None, rg, vnet_name,
                     azure_name(f"launch-{name}", 80), {"properties": {
                         "addressPrefix": section.subnet_cidr, "networkSecurityGroup": {"id": nsg.id}}})
    identity = _head_identity(az, section, name, subscription)
    state = {"subscription_id": subscription, "resource_group_created": created, "subnet": subnet.id,
             "nsg": nsg.id, "identity": identity["id"], "identity_client_id": identity["client_id"],
             "ssh_public_key": public_key, "ssh_user": user}
    return Bootstrapped(state=state, ssh_user=user, ssh_private_key=private_key)


def _resource_group(az: _Clients, section: Section, cluster: str) -> bool:
    """Reuse the resource group, or make it (tagged as launch's). True if launch made it."""
    try:
        rg = az.call(az.resource.resource_groups.get, "resourceGroups.get", "", None, section.resource_group)
        return (rg.tags or {}).get(TAG_CREATED) == cluster
    except NodeNotFound:
        az.call(az.resource.resource_groups.create_or_update, "resourceGroups.create", "", None,
                section.resource_group, {"location": section.location, "tags": {TAG_CREATED: cluster}})
        return True


def _head_identity(az: _Clients, section: Section, cluster: str, subscription: str) -> dict[str, str]:
    """The head's user-assigned identity, with the roles the autoscaler needs on the resource group only."""
    rg = section.resource_group
    ident = az.call(az.msi.user_assigned_identities.create_or_update, "userAssignedIdentities.create", "", None,
                    rg, azure_name(f"launch-{cluster}-head"), {"location": section.location,
                                                               "tags": {TAG_CLUSTER: cluster}})
    scope = f"/subscriptions/{subscription}/resourceGroups/{rg}"
    for role in HEAD_ROLES:
        found = list(az.call(az.authorization.role_definitions.list, "roleDefinitions.list", "", None, scope,
                             filter=f"roleName eq '{role}'"))
        if not found:
            raise ProviderError(f"azure: no built-in role {role!r} in the subscription")
        assignment = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ident.principal_id}/{found[0].id}"))
        try:
            az.call(az.authorization.role_assignments.create, "roleAssignments.create", "", None, scope, assignment,
                    {"properties": {"roleDefinitionId": found[0].id, "principalId": ident.principal_id,
                                    "principalType": "ServicePrincipal"}})
        except ProviderError as e:
            if "RoleAssignmentExists" not in str(e):
                raise
    return {"id": ident.id, "client_id": ident.client_id}


# --- the provider -------------------------------------------------------------------------------------


class Provider(CloudProvider):
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = section = Section.of(spec.config.provider)
        self.state = spec.provider_state
        self.az = _Clients(section, self.state.get("subscription_id") or subscription_of(section),
                           self.state.get("identity_client_id"))
        self.rg = section.resource_group
        self.zones: list[str | None] = zone_list(section.availability_zone) or [None]  # None: no zone
        self.head_bind_host, self.head_port = section.head_bind_host, section.head_port
        self.capabilities = Capabilities(spot=True, zones=True, stop_start=True,
                                         reuses_ips=True, cleanup=True, live_spot_prices=True)
        self.spot_prices_every_s = 24 * 3600.0  # a published price list: daily
        self.cache_stopped_nodes = bool(section.cache_stopped_nodes)
        self._skus: dict[str, dict[str, float]] | None = None

    # --- catalog ----------------------------------------------------------------------------------

    def _sku_table(self) -> dict[str, dict[str, float]]:
        if self._skus is None:
            table = {}
            for sku in self.az.call(self.az.compute.resource_skus.list, "resourceSkus.list",
                                    filter=f"location eq '{self.section.location}'"):
                if sku.resource_type != "virtualMachines":
                    continue
                caps = {c.name: c.value for c in sku.capabilities or []}
                table[sku.name] = {"CPU": float(caps.get("vCPUs", 0)), "memory": float(caps.get("MemoryGB", 0)) * 2**30,
                                   "GPU": float(caps.get("GPUs", 0))}
            self._skus = table
        return self._skus

    def _resources(self, size: str, name: str) -> dict[str, float]:
        res = dict(self._sku_table().get(size) or {})
        if not res:
            raise InvalidRequest(f"available_node_types.{name}.node_config.azure_arm_parameters.vmSize: no VM "
                                 f"size {size!r} in {self.section.location}")
        if res.get("GPU"):
            m = re.search(r"_(T4|A100|A10|V100|H100|K80|P100|M60)", size, re.I)
            if m:
                res[f"accelerator_type:{m.group(1).upper()}"] = 1.0
        else:
            res.pop("GPU", None)
        return res

    def node_types(self) -> dict[str, dict[str, float]]:
        """Each type's resources from the resource SKUs; for equivalent sizes, what every one of them has."""
        out = {}
        for name, nt in self.spec.config.available_node_types.items():
            each = [self._resources(m, name) for m in sizes_of(nt.node_config)]
            out[name] = {k: min(r.get(k, 0.0) for r in each) for k in set.intersection(*map(set, each))} \
                if each else {}
        return out

    # --- nodes --------------------------------------------------------------------------------------

    def spot_prices(self, machines: list[str]) -> dict[str, float]:
        """Azure's Retail Prices API: each size's Linux spot price in the cluster's location (public data,
        no credentials; Azure publishes it, so it is asked at most daily)."""
        import requests

        out: dict[str, float] = {}
        for start in range(0, len(machines), PRICE_FILTER_SIZES):
            sizes = " or ".join(f"armSkuName eq '{m}'" for m in machines[start:start + PRICE_FILTER_SIZES])
            url: str | None = f"{self.section.prices_endpoint.rstrip('/')}/api/retail/prices"
            params: dict | None = {"$filter": f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
                                              f"and armRegionName eq '{self.section.location}' and ({sizes})"}
            while url:
                try:
                    reply = requests.get(url, params=params, timeout=30, verify=self.section.ca_bundle or True)
                    reply.raise_for_status()
                    page = reply.json()
                except (requests.RequestException, ValueError) as e:
                    raise TransientError(f"Azure's Retail Prices API: {type(e).__name__}: {e}") from None
                for item in page.get("Items", []):
                    if (str(item.get("skuName", "")).endswith(" Spot") and "Windows" not in item.get("productName", "")
                            and item.get("unitOfMeasure") == "1 Hour"):
                        size, price = item.get("armSkuName"), float(item.get("retailPrice", 0))
                        out[size] = min(price, out.get(size, price))
                url, params = page.get("NextPageLink"), None
        return out

    def _spot(self, node_type: str) -> bool:
        params = _params(self.spec.config.available_node_types[node_type].node_config)
        return params.get("priority") == "Spot" or self.spec.config.available_node_types[node_type].spot

    def _zones(self, node_type: str) -> list[dict]:
        """Where to create, in order: for each VM size (equivalents cheapest first, by the catalog in the
        location, spot for a spot type; unknown ones last, in the user's order), the zones in order
        (CloudProvider._offerings)."""
        nt = self.spec.config.available_node_types[node_type]
        return self._offerings(sizes_of(nt.node_config) or [""], [{"zone": z} for z in self.zones],
                               self.section.location, self._spot(node_type))

    def _launch(self, node_type: str, offer: dict, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        return made_or_raise(fan_out(lambda _: self._create_one(node_type, offer["zone"], tags, offer["machine"]),
                                     range(count)))

    def _create_one(self, node_type: str, zone: str | None, tags: dict[str, str], size: str) -> NodeInfo:
        nt = self.spec.config.available_node_types[node_type]
        params = {**_params(nt.node_config), "vmSize": size}
        if not size:
            raise InvalidRequest(f"available_node_types.{node_type}.node_config.azure_arm_parameters.vmSize: required")
        name = azure_name(f"{self.spec.name}-{tags.get(TAG_KIND, 'worker')}", 50) + f"-{uuid.uuid4().hex[:8]}"
        name = name.lower()
        loc, net, compute = self.section.location, self.az.network, self.az.compute
        ip_id = None
        try:
            if not self.section.use_internal_ips:
                ip = self.az.call(net.public_ip_addresses.begin_create_or_update, "publicIPAddresses.create",
                                  node_type, zone, self.rg, f"{name}-ip", {
                                      "location": loc, "tags": dict(tags), "sku": {"name": "Standard"},
                                      "properties": {"publicIPAllocationMethod": "Static"},
                                      **({"zones": [zone]} if zone else {})})
                ip_id = ip.id
            ip_config: dict[str, Any] = {"subnet": {"id": self.state["subnet"]}, "privateIPAllocationMethod": "Dynamic"}
            if ip_id:  # deleted with the NIC, which is deleted with the VM
                ip_config["publicIPAddress"] = {"id": ip_id, "properties": {"deleteOption": "Delete"}}
            nic = self.az.call(net.network_interfaces.begin_create_or_update, "networkInterfaces.create", node_type,
                               zone, self.rg, f"{name}-nic", {
                                   "location": loc, "tags": dict(tags), "properties": {
                                       "ipConfigurations": [{"name": "ipconfig1", "properties": ip_config}],
                                       "enableAcceleratedNetworking": bool(params.get("enableAcceleratedNetworking"))}})
            vm = self._vm_body(node_type, name, zone, nic.id, tags, params)
            self.az.call(compute.virtual_machines.begin_create_or_update, "virtualMachines.create", node_type, zone,
                         self.rg, name, vm)
        except LaunchError:
            self._clean_failed(name)
            raise
        return self._node(name)

    def _vm_body(self, node_type: str, name: str, zone: str | None, nic_id: str, tags: dict[str, str],
                 params: dict) -> dict:
        image = ({"id": params["imageId"]} if params.get("imageId") else {
            "publisher": params.get("imagePublisher", DEFAULT_IMAGE["imagePublisher"]),
            "offer": params.get("imageOffer", DEFAULT_IMAGE["imageOffer"]),
            "sku": params.get("imageSku", DEFAULT_IMAGE["imageSku"]),
            "version": params.get("imageVersion", DEFAULT_IMAGE["imageVersion"])})
        user = self.state.get("ssh_user") or "ubuntu"
        # ARM's own JSON: the SDKs send a dict body as it is
        props: dict[str, Any] = {
            "hardwareProfile": {"vmSize": params["vmSize"]},
            "storageProfile": {"imageReference": image, "osDisk": {
                "createOption": "FromImage", "deleteOption": "Delete", "diskSizeGB": params.get("osDiskSize", 64),
                "managedDisk": {"storageAccountType": "Premium_LRS"}}},
            "osProfile": {"computerName": name, "adminUsername": user, "linuxConfiguration": {
                "disablePasswordAuthentication": True, "ssh": {"publicKeys": [
                    {"path": f"/home/{user}/.ssh/authorized_keys", "keyData": self.state["ssh_public_key"]}]}}},
            "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True,
                                                                                  "deleteOption": "Delete"}}]},
        }
        vm: dict[str, Any] = {"location": self.section.location, "tags": dict(tags), "properties": props}
        if zone:
            vm["zones"] = [zone]
        if self._spot(node_type):
            props["priority"] = "Spot"
            props["evictionPolicy"] = params.get("evictionPolicy", "Delete")
            props["billingProfile"] = {"maxPrice": (params.get("billingProfile") or {}).get("maxPrice", -1)}
        if tags.get(TAG_KIND) == KIND_HEAD and self.state.get("identity"):
            vm["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {self.state["identity"]: {}}}
        return vm

    def _clean_failed(self, name: str) -> None:
        """A VM whose creation failed: it, its NIC and its IP go (Azure keeps a failed VM resource)."""
        for fn, rname in ((self.az.compute.virtual_machines.begin_delete, name),
                          (self.az.network.network_interfaces.begin_delete, f"{name}-nic"),
                          (self.az.network.public_ip_addresses.begin_delete, f"{name}-ip")):
            try:
                self.az.call(fn, "delete", "", None, self.rg, rname)
            except LaunchError:  # gone already, or not ours to delete: the create's own error is the news
                pass

    def _start_stopped(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        match = {k: v for k, v in tags.items() if k in (TAG_CLUSTER, TAG_LAUNCH_HASH)}
        match[TAG_NODE_TYPE] = node_type
        cached = [n for n in self._scan(match) if n.state == "stopped" and not n.spot][:count]
        out = []
        for n in cached:
            try:
                self.az.call(self.az.compute.virtual_machines.begin_start, "virtualMachines.start", node_type, None,
                             self.rg, n.id)
            except (CapacityError, NodeNotFound):
                continue
            self.set_tags(n.id, tags)
            n.tags.update(tags)
            n.state = "pending"
            out.append(n)
        return out

    def _node(self, name: str) -> NodeInfo:
        vm = self.az.call(self.az.compute.virtual_machines.get, "virtualMachines.get", "", None, self.rg, name,
                          expand="instanceView")
        return self._info(vm)

    def _info(self, vm) -> NodeInfo:
        tags = dict(vm.tags or {})
        nic_id = vm.network_profile.network_interfaces[0].id if vm.network_profile else None
        internal = external = None
        if nic_id:
            try:
                nic = self.az.call(self.az.network.network_interfaces.get, "networkInterfaces.get", "", None, self.rg,
                                   nic_id.rsplit("/", 1)[-1])
                cfg = nic.ip_configurations[0]
                internal = cfg.private_ip_address
                if cfg.public_ip_address is not None:
                    pip = self.az.call(self.az.network.public_ip_addresses.get, "publicIPAddresses.get", "", None,
                                       self.rg, cfg.public_ip_address.id.rsplit("/", 1)[-1])
                    external = pip.ip_address
            except NodeNotFound:
                pass
        power = ""
        if vm.instance_view is not None:
            power = next((s.code for s in vm.instance_view.statuses or [] if s.code.startswith("PowerState/")), "")
        state = {"PowerState/running": "running", "PowerState/starting": "pending", "PowerState/deallocated": "stopped",
                 "PowerState/deallocating": "stopping", "PowerState/stopped": "stopped",
                 "PowerState/stopping": "stopping"}.get(power, "pending")
        if vm.provisioning_state in ("Failed", "Deleting"):
            state = "failed" if vm.provisioning_state == "Failed" else "terminating"
        created = vm.time_created.timestamp() if getattr(vm, "time_created", None) else time.time()
        return NodeInfo(id=vm.name, node_type=tags.get(TAG_NODE_TYPE, vm.hardware_profile.vm_size), state=state,
                        tags=tags, internal_ip=internal, external_ip=external, launched_at=created,
                        spot=vm.priority == "Spot", machine=vm.hardware_profile.vm_size,
                        zone=(vm.zones or [""])[0])

    def _scan(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        nodes = []
        for vm in self.az.call(self.az.compute.virtual_machines.list, "virtualMachines.list", "", None, self.rg,
                               expand="instanceView"):  # the pager follows nextLink
            tags = vm.tags or {}
            if all(tags.get(k) == v for k, v in tag_filters.items()):
                nodes.append(self._info(vm))
        return sorted(nodes, key=lambda n: (n.launched_at, n.id))

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        return self._live_sweeping_preempted(self._scan(tag_filters))

    def stopped(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        return [n for n in self._scan(tag_filters) if n.state in ("stopped", "stopping", "failed")]

    def stop(self, node_ids: list[str]) -> None:
        self._each(node_ids, self.az.compute.virtual_machines.begin_deallocate, "virtualMachines.deallocate")

    def terminate(self, node_ids: list[str]) -> None:
        self._each(node_ids, self.az.compute.virtual_machines.begin_delete, "virtualMachines.delete")

    def _each(self, node_ids: list[str], fn, op: str) -> None:
        for_each_node(node_ids, lambda name: self.az.call(fn, op, "", None, self.rg, name))

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        try:
            vm = self.az.call(self.az.compute.virtual_machines.get, "virtualMachines.get", "", None, self.rg, node_id)
        except NodeNotFound:
            raise NodeNotFound(node_id) from None
        self.az.call(self.az.compute.virtual_machines.begin_update, "virtualMachines.update", "", None, self.rg,
                     node_id, {"tags": {**(vm.tags or {}), **tags}})


    def cleanup(self, purge: bool = False) -> list[str]:
        """Every VM is gone (with its NIC, disk and IP). The resource group and its network stay, unless
        launch made the group and `down --purge` asks: then the group goes, with all that is in it."""
        if not purge:
            return []
        try:  # the group's own tag says whether launch made it (the spec may be gone after an earlier down)
            group = self.az.call(self.az.resource.resource_groups.get, "resourceGroups.get", "", None, self.rg)
        except NodeNotFound:
            return []
        if (group.tags or {}).get(TAG_CREATED) != self.spec.name:
            return [f"resource group {self.rg} kept: launch did not create it"]
        try:
            self.az.call(self.az.resource.resource_groups.begin_delete, "resourceGroups.delete", "", None, self.rg)
        except NodeNotFound:
            pass
        return [f"resource group {self.rg} deleted"]


def _params(node_config: dict) -> dict:
    return dict(node_config.get("azure_arm_parameters") or {})
