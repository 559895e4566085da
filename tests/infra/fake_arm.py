"""A fake Azure Resource Manager endpoint over https (a self-signed certificate, ../shared/TESTING.md),
stateful and driven by the real azure-mgmt-* clients. Faithful to the public REST reference where launch
touches it:

- resource ids as ARM writes them (`/subscriptions/S/resourceGroups/RG/providers/NS/TYPE/NAME`),
  matched case-insensitively as ARM does; `properties.provisioningState`; tags;
- resource groups (PUT, GET, HEAD, DELETE as a 202 long-running operation), virtual networks and
  subnets, network security groups, public IPs, NICs (PUT answers at once, Succeeded), user-assigned
  managed identities, role definitions (list by roleName) and role assignments;
- virtual machines: PUT answers 201 with `Azure-AsyncOperation` and `Retry-After`; the operation goes
  InProgress -> Succeeded (or Failed with `error.code`) on the server's clock; DELETE, deallocate and
  start are 202 operations; GET with `$expand=instanceView` carries the power state; list pages through
  `nextLink`; a VM's NIC, public IP and OS disk go with it when their deleteOption is Delete;
- resource SKUs with vCPUs, MemoryGB and GPUs capabilities;
- error bodies {"error": {"code", "message"}}, 429 with Retry-After.

Every VM that reaches Succeeded is a VM twin at its NIC's private IP (hostname = the VM's name);
deallocate or delete kills it; start boots it again with its disk kept. Faults: allocation failure per
zone, SKU not available, quota, a burst of 429s, a spot eviction (deallocated or deleted by Azure).
Each twin has IMDS (tests/infra/metadata.py): tokens of the VM's user-assigned identities, its Scheduled
Events (`notice()` posts a Preempt). The bearer tokens callers used are counted (`bearers`); `cli_login`
makes the `az` command a laptop with `az login` has.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import ssl
import subprocess
import threading
import time
import uuid
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs

from tests.infra.fake_http import JsonApi, Reply
from tests.infra.metadata import Metadata

# name -> (vCPUs, MemoryGB, GPUs)
VM_SIZES = {"Standard_D2s_v3": (2, 8, 0), "Standard_D2s_v5": (2, 8, 0), "Standard_D4s_v5": (4, 16, 0), "Standard_D8s_v5": (8, 32, 0),
            "Standard_NC4as_T4_v3": (4, 28, 1), "Standard_NC8as_T4_v3": (8, 56, 1)}
GPU_NAMES = {"Standard_NC4as_T4_v3": "T4", "Standard_NC8as_T4_v3": "T4"}
TENANT = "00000000-0000-4000-8000-0000000000aa"
RETAIL_REGIONS = ("westus2", "eastus")
RETAIL_RATE = {"cpu": 0.048, "gpu": 0.35, "spot": 0.2}  # the fake's prices: $/h per vCPU and GPU; spot's share


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    cert, key = directory / "arm-cert.pem", directory / "arm-key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}"],
                       check=True, capture_output=True)
    return cert, key


class FakeARM(JsonApi):
    def __init__(self, host: str, subscription: str, location: str, cert_dir: Path, net=None, first_ip: int = 160,
                 op_step_s: float = 0.1):
        self.subscription, self.location = subscription, location
        self.net, self.first_ip, self.op_step_s = net, first_ip, op_step_s
        self.lock = threading.RLock()
        self.resources: dict[str, dict] = {}  # lower-case id -> resource
        self.operations: dict[str, dict] = {}  # id -> {status, error, steps, created}
        self.calls: list[tuple[str, str]] = []
        self.bearers: collections.Counter[str] = collections.Counter()  # the tokens calls carried
        self.metadata: dict[str, Metadata] = {}  # VM name -> its twin's IMDS
        self.cert, key = self_signed_cert(cert_dir, host)
        # faults
        self.allocation_failure_zones: set[str] = set()
        self.sku_not_available: set[str] = set()
        self.quota_exceeded = False
        self.throttle_next = 0
        self.max_page = 100
        self.httpd = self.http_server(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://{host}:{self.httpd.server_address[1]}"
        self._stop = threading.Event()
        self._ops = itertools.count(1)
        for target in (self.httpd.serve_forever, self._clock):
            threading.Thread(target=target, daemon=True).start()

    # --- test controls ---------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            for vm in self.of_type("virtualMachines"):
                self._kill_twin(vm["name"], destroy=True)
            self.resources.clear()
            self.operations.clear()
            self.calls.clear()
            self.allocation_failure_zones.clear()
            self.sku_not_available.clear()
            self.quota_exceeded, self.throttle_next = False, 0

    def of_type(self, rtype: str) -> list[dict]:
        """Every resource of a type ('virtualMachines', 'networkInterfaces', 'publicIPAddresses', 'disks', ...)."""
        with self.lock:
            return [r for r in self.resources.values() if r["type"].rsplit("/", 1)[-1].lower() == rtype.lower()]

    def evict(self, vm_name: str, delete: bool) -> None:
        """Azure takes a spot VM back: its processes die; it is deleted or deallocated (its eviction policy)."""
        with self.lock:
            vm = [v for v in self.of_type("virtualMachines") if v["name"] == vm_name][0]
            if delete:
                self._delete_vm(vm)
            else:
                self._kill_twin(vm_name, destroy=False)
                vm["_power"] = "PowerState/deallocated"

    def twin(self, name: str):
        return self.net.twins.get(name) if self.net else None

    def notice(self, vm_name: str, ahead_s: float = 30.0) -> str:
        """Azure schedules a spot VM's eviction: a Preempt event in its Scheduled Events. Returns its id."""
        event_id = str(uuid.uuid4())
        self.metadata[vm_name].set(events=[{
            "EventId": event_id, "EventType": "Preempt", "ResourceType": "VirtualMachine",
            "Resources": [vm_name], "EventStatus": "Scheduled", "EventSource": "Platform", "DurationInSeconds": -1,
            "NotBefore": formatdate(time.time() + ahead_s, usegmt=True), "Description": "Spot eviction"}])
        return event_id

    def cli_login(self, directory: Path) -> Path:
        """An `az` command in `directory` that answers `az account get-access-token` as the Azure CLI does
        after `az login` (the laptop's credential: azure-identity's AzureCliCredential runs it)."""
        az = directory / "az"
        az.write_text("#!/bin/sh\n"
                      f"echo '{{\"accessToken\": \"laptop-cli-token\", \"expires_on\": '$(( $(date +%s) + 3600 ))', "
                      f"\"subscription\": \"{self.subscription}\", \"tenant\": \"{TENANT}\", "
                      "\"tokenType\": \"Bearer\"}'\n")
        az.chmod(0o755)
        return az

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.reset()

    # --- operations on the server's clock --------------------------------------------------------------

    def _clock(self) -> None:
        while not self._stop.wait(self.op_step_s / 2):
            with self.lock:
                for op in self.operations.values():
                    if op["status"] != "InProgress" or time.monotonic() - op["created"] < op["after"]:
                        continue
                    try:
                        for effect in op["effects"]:
                            effect()
                        op["status"] = "Succeeded"
                    except ApiError as e:
                        op["status"], op["error"] = "Failed", {"code": e.code, "message": e.message}

    def _operation(self, effects: list, steps: int = 3) -> tuple[str, dict]:
        op_id = str(uuid.uuid4())
        self.operations[op_id] = {"status": "InProgress", "error": None, "effects": effects,
                                  "created": time.monotonic(), "after": self.op_step_s * steps}
        url = (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/locations/"
               f"{self.location}/operations/{op_id}?api-version=2024-07-01")
        return op_id, {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "1"}

    # --- resources ---------------------------------------------------------------------------------------

    def _get(self, rid: str) -> dict:
        r = self.resources.get(rid.lower())
        if r is None:
            kind = rid.split("/providers/")[-1].split("/")[1] if "/providers/" in rid else "resourcegroups"
            raise ApiError(404, "ResourceNotFound" if "/providers/" in rid else "ResourceGroupNotFound",
                           f"The Resource '{rid.split('/providers/')[-1]}' under resource group was not found "
                           f"({kind}).")
        return r

    def _rg_of(self, rid: str) -> str:
        m = re.match(r"(?i)/subscriptions/[^/]+/resourcegroups/([^/]+)", rid)
        return m.group(1).lower() if m else ""

    def _ip(self) -> str:
        used = {nic["properties"]["ipConfigurations"][0]["properties"].get("privateIPAddress")
                for nic in self.of_type("networkInterfaces")}
        for host in range(self.first_ip, 250):
            ip = f"10.{self.net.n}.0.{host}" if self.net else f"10.0.0.{host}"
            if ip not in used:
                return ip
        raise ApiError(409, "SubnetIsFull", "no free address in the subnet")

    def put(self, rid: str, body: dict) -> tuple[int, dict, dict]:
        parts = rid.strip("/").split("/")
        if len(parts) == 4:  # a resource group
            existed = rid.lower() in self.resources
            rg = {"id": rid, "name": parts[3], "type": "Microsoft.Resources/resourceGroups",
                  "location": body.get("location", self.location), "tags": body.get("tags", {}),
                  "properties": {"provisioningState": "Succeeded"}}
            self.resources[rid.lower()] = rg
            return (200 if existed else 201), rg, {}
        if self._rg_of(rid) and f"/subscriptions/{self.subscription}/resourcegroups/{self._rg_of(rid)}" not in self.resources:
            raise ApiError(404, "ResourceGroupNotFound", f"Resource group '{self._rg_of(rid)}' could not be found.")
        provider_path = rid.split("/providers/", 1)[1]
        segs = provider_path.split("/")
        rtype = "/".join([segs[0]] + segs[1::2])
        name = segs[-1]
        res = json.loads(json.dumps(body))
        res.update(id=rid, name=name, type=rtype)
        res.setdefault("location", self.location)
        props = res.setdefault("properties", {})
        props["provisioningState"] = "Succeeded"
        low = rtype.lower()
        if low == "microsoft.managedidentity/userassignedidentities":
            old = self.resources.get(rid.lower())
            props.update(old["properties"] if old else {"principalId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
                                                       "tenantId": "72f988bf-0000-0000-0000-000000000000"})
        if low == "microsoft.network/networkinterfaces":
            for cfg in props.get("ipConfigurations", []):
                cfg.setdefault("properties", {})["privateIPAddress"] = self._ip() if not self.resources.get(rid.lower()) \
                    else self.resources[rid.lower()]["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
                subnet = cfg["properties"].get("subnet", {}).get("id", "")
                if subnet and subnet.lower() not in self.resources:
                    raise ApiError(400, "InvalidResourceReference", f"Resource {subnet} referenced by resource "
                                                                    f"{rid} was not found.")
        if low == "microsoft.network/publicipaddresses":
            props["ipAddress"] = f"20.1.{len(self.of_type('publicIPAddresses')) // 250}.{len(self.of_type('publicIPAddresses')) % 250 + 1}"
        if low == "microsoft.authorization/roleassignments":
            if rid.lower() in self.resources:
                raise ApiError(409, "RoleAssignmentExists", "The role assignment already exists.")
        if low == "microsoft.compute/virtualmachines":
            return self._put_vm(rid, res)
        existed = rid.lower() in self.resources
        self.resources[rid.lower()] = res
        return (200 if existed else 201), res, {}

    def _put_vm(self, rid: str, vm: dict) -> tuple[int, dict, dict]:
        props = vm["properties"]
        size = props.get("hardwareProfile", {}).get("vmSize", "")
        zone = (vm.get("zones") or [""])[0]
        if size not in VM_SIZES:
            raise ApiError(400, "InvalidParameter", f"The value {size} provided for the VM size is not valid. "
                                                    "Target: 'vmSize'")
        if size in self.sku_not_available:
            raise ApiError(409, "SkuNotAvailable", f"The requested VM size for resource 'Following SKUs have failed "
                                                   f"for Capacity Restrictions: {size}' is currently not available "
                                                   f"in location '{self.location}'.")
        if self.quota_exceeded:
            raise ApiError(409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding "
                                                       "approved standardDSv5Family Cores quota.")
        nics = props.get("networkProfile", {}).get("networkInterfaces", [])
        if not nics or nics[0]["id"].lower() not in self.resources:
            raise ApiError(400, "InvalidParameter", "A NIC is required: networkProfile.networkInterfaces")
        if not props.get("osProfile", {}).get("linuxConfiguration", {}).get("ssh", {}).get("publicKeys"):
            raise ApiError(400, "InvalidParameter", "Authentication using either SSH or by user name and password "
                                                    "must be enabled in Linux profile. Target: 'linuxConfiguration'")
        if rid.lower() in self.resources:
            raise ApiError(409, "Conflict", "launch never updates a VM in place")
        os_disk = props.setdefault("storageProfile", {}).setdefault("osDisk", {})
        disk_name = os_disk.get("name") or f"{vm['name']}_OsDisk_1_{uuid.uuid4().hex[:8]}"
        disk_id = f"{rid.split('/providers/')[0]}/providers/Microsoft.Compute/disks/{disk_name}"
        os_disk["name"] = disk_name
        os_disk.setdefault("managedDisk", {})["id"] = disk_id
        props["provisioningState"] = "Creating"
        props["vmId"] = str(uuid.uuid4())
        props["timeCreated"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        vm["_power"] = "PowerState/starting"
        self.resources[rid.lower()] = vm
        self.resources[disk_id.lower()] = {"id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks",
                                           "location": self.location, "properties": {"provisioningState": "Succeeded"}}

        def allocate():
            if zone and zone in self.allocation_failure_zones or (not zone and "" in self.allocation_failure_zones):
                props["provisioningState"] = "Failed"
                vm["_power"] = "PowerState/stopped"
                raise ApiError(200, "ZonalAllocationFailed" if zone else "AllocationFailed",
                               "Allocation failed. We do not have sufficient capacity for the requested VM size in "
                               "this zone. Read more about improving likelihood of allocation success at "
                               "http://aka.ms/allocation-guidance")
            self._boot(vm)
            props["provisioningState"] = "Succeeded"
        _, headers = self._operation([allocate])
        return 201, self._view(vm), headers

    def _boot(self, vm: dict) -> None:
        if self.net is not None:
            nic = self._get(vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"])
            ip = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
            twin = self.net.twins.get(vm["name"])
            if twin is None:
                twin = self.net.twin(vm["name"], ip)
                # IMDS gives tokens of the user-assigned identities the VM has
                identities = [self.resources.get(i.lower(), {}).get("properties", {}).get("clientId")
                              for i in (vm.get("identity") or {}).get("userAssignedIdentities") or {}]
                self.metadata[vm["name"]] = Metadata(twin, cloud="azure", name=vm["name"],
                                                     identities=[c for c in identities if c])
                if vm.get("tags", {}).get("launch-kind") == "head":
                    twin.block_laptop()
            else:
                twin.boot()
        vm["_power"] = "PowerState/running"

    def _kill_twin(self, name: str, destroy: bool) -> None:
        if self.net is None:
            return
        if destroy:
            metadata = self.metadata.pop(name, None)
            if metadata is not None:
                metadata.close()
            self.net.remove(name)
        elif name in self.net.twins:
            self.net.twins[name].kill()

    def _delete_vm(self, vm: dict) -> None:
        self._kill_twin(vm["name"], destroy=True)
        self.resources.pop(vm["id"].lower(), None)
        props = vm["properties"]
        os_disk = props.get("storageProfile", {}).get("osDisk", {})
        if os_disk.get("deleteOption", "Detach") == "Delete":
            self.resources.pop(os_disk.get("managedDisk", {}).get("id", "").lower(), None)
        for ref in props.get("networkProfile", {}).get("networkInterfaces", []):
            if ref.get("properties", {}).get("deleteOption", "Detach") != "Delete":
                continue
            nic = self.resources.pop(ref["id"].lower(), None)
            for cfg in (nic or {}).get("properties", {}).get("ipConfigurations", []):
                pip = cfg.get("properties", {}).get("publicIPAddress") or {}
                if pip.get("properties", {}).get("deleteOption") == "Delete":
                    self.resources.pop(pip.get("id", "").lower(), None)

    def delete(self, rid: str) -> tuple[int, dict, dict]:
        r = self.resources.get(rid.lower())
        if r is None:
            return 204, {}, {}
        if r["type"].lower() == "microsoft.compute/virtualmachines":
            r["properties"]["provisioningState"] = "Deleting"
            _, headers = self._operation([lambda: self._delete_vm(r)])
            return 202, {}, headers
        if r["type"] == "Microsoft.Resources/resourceGroups":
            prefix = rid.lower() + "/"

            def drop_group():
                for key in [k for k in self.resources if k.startswith(prefix)]:
                    gone = self.resources.pop(key)
                    if gone["type"].lower() == "microsoft.compute/virtualmachines":
                        self._kill_twin(gone["name"], destroy=True)
                self.resources.pop(rid.lower(), None)
            _, headers = self._operation([drop_group])
            return 202, {}, headers
        if r["type"].lower() == "microsoft.network/networkinterfaces":
            users = [v for v in self.of_type("virtualMachines") if any(
                n["id"].lower() == rid.lower() for n in v["properties"]["networkProfile"]["networkInterfaces"])]
            if users:
                raise ApiError(400, "NicInUse", f"Network Interface {rid} is used by existing resource "
                                                f"{users[0]['id']}.")
        self.resources.pop(rid.lower())
        return 200, {}, {}

    def action(self, rid: str, verb: str) -> tuple[int, dict, dict]:
        vm = self._get(rid)
        if verb == "deallocate":
            def stop():
                self._kill_twin(vm["name"], destroy=False)
                vm["_power"] = "PowerState/deallocated"
            vm["_power"] = "PowerState/deallocating"
            _, headers = self._operation([stop])
        elif verb == "start":
            _, headers = self._operation([lambda: self._boot(vm)])
        else:
            raise ApiError(404, "NotFound", f"no action {verb}")
        return 202, {}, headers

    def _view(self, vm: dict, instance_view: bool = False) -> dict:
        out = {k: v for k, v in vm.items() if not k.startswith("_")}
        if instance_view:
            out = json.loads(json.dumps(out))
            out["properties"]["instanceView"] = {"statuses": [
                {"code": f"ProvisioningState/{vm['properties']['provisioningState'].lower()}", "level": "Info"},
                {"code": vm["_power"], "level": "Info"}]}
        return out

    def list_vms(self, rg_id: str, query: dict) -> dict:
        prefix = rg_id.lower() + "/providers/microsoft.compute/virtualmachines/"
        vms = sorted((v for k, v in self.resources.items() if k.startswith(prefix)), key=lambda v: v["name"])
        start = int(query.get("$skiptoken", ["0"])[0])
        page = vms[start:start + self.max_page]
        expand = query.get("$expand", [""])[0].lower() == "instanceview"
        out = {"value": [self._view(v, expand) for v in page]}
        if start + self.max_page < len(vms):
            out["nextLink"] = (f"{self.url}{rg_id}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"
                               f"&$skiptoken={start + self.max_page}" + ("&$expand=instanceView" if expand else ""))
        return out

    def skus(self) -> dict:
        return {"value": [{"resourceType": "virtualMachines", "name": name, "tier": "Standard",
                           "locations": [self.location], "capabilities": [
                               {"name": "vCPUs", "value": str(c)}, {"name": "MemoryGB", "value": str(m)},
                               {"name": "GPUs", "value": str(g)}], "restrictions": []}
                          for name, (c, m, g) in VM_SIZES.items()]}

    def role_definitions(self, scope: str, query: dict) -> dict:
        flt = query.get("$filter", [""])[0]
        m = re.search(r"roleName eq '([^']+)'", flt)
        roles = ["Virtual Machine Contributor", "Network Contributor", "Contributor", "Reader"]
        wanted = [r for r in roles if not m or r == m.group(1)]
        return {"value": [{"id": f"/subscriptions/{self.subscription}/providers/Microsoft.Authorization/"
                                 f"roleDefinitions/{uuid.uuid5(uuid.NAMESPACE_DNS, r)}",
                           "name": str(uuid.uuid5(uuid.NAMESPACE_DNS, r)),
                           "type": "Microsoft.Authorization/roleDefinitions",
                           "properties": {"roleName": r, "type": "BuiltInRole"}} for r in wanted]}

    def retail_prices(self, flt: str) -> dict:
        """Azure's Retail Prices API as its reference shows it: one item per (size, region, meter): the Linux
        pay-as-you-go and Spot meters and a Windows one, for every size in RETAIL_REGIONS; `$filter` on
        armRegionName and armSkuName (ORed) honoured. Prices are the fake's own (RETAIL_RATE)."""
        regions = re.findall(r"armRegionName eq '([^']+)'", flt)
        sizes = set(re.findall(r"armSkuName eq '([^']+)'", flt))
        items = []
        for size, (cpus, _mem, gpus) in VM_SIZES.items():
            for region in RETAIL_REGIONS:
                if (regions and region not in regions) or (sizes and size not in sizes):
                    continue
                base = round(RETAIL_RATE["cpu"] * cpus + RETAIL_RATE["gpu"] * gpus, 4)
                short = size.replace("Standard_", "").replace("_", " ")
                for sku, product, price in ((short, "Virtual Machines Series", base),
                                            (f"{short} Spot", "Virtual Machines Series", round(base * RETAIL_RATE["spot"], 4)),
                                            (f"{short} Spot", "Virtual Machines Series Windows", round(base * 1.8, 4))):
                    items.append({"currencyCode": "USD", "retailPrice": price, "unitPrice": price,
                                  "armRegionName": region, "location": region, "armSkuName": size,
                                  "skuName": sku, "productName": product, "serviceName": "Virtual Machines",
                                  "priceType": "Consumption", "type": "Consumption", "unitOfMeasure": "1 Hour",
                                  "isPrimaryMeterRegion": True})
        return {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                "Items": items, "NextPageLink": None, "Count": len(items)}

    # --- HTTP ----------------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict, dict]:
        low = path.lower().rstrip("/")
        sub = f"/subscriptions/{self.subscription}".lower()
        if not low.startswith(sub):
            kinds = re.findall(r"/providers/([^/]+/[^/]+)", path)  # the RBAC action: <namespace>/<type>/<verb>
            action = f"{kinds[-1] if kinds else 'Microsoft.Resources/subscriptions'}/" \
                     f"{ {'GET': 'read', 'DELETE': 'delete', 'POST': 'action'}.get(method, 'write')}"
            raise ApiError(403, "AuthorizationFailed", f"The client 'launch' with object id '{TENANT}' does not have "
                                                       f"authorization to perform action '{action}' over scope "
                                                       f"'{path}' or the scope is invalid.")
        with self.lock:
            m = re.fullmatch(r"/subscriptions/[^/]+/providers/microsoft\.compute/locations/[^/]+/operations/([^/]+)", low)
            if m:
                op = self.operations.get(m.group(1))
                if op is None:
                    raise ApiError(404, "NotFound", "no such operation")
                out = {"name": m.group(1), "status": op["status"]}
                if op["error"]:
                    out["error"] = op["error"]
                return 200, out, ({"Retry-After": "1"} if op["status"] == "InProgress" else {})
            if low.endswith("/providers/microsoft.compute/skus"):
                return 200, self.skus(), {}
            if low.endswith("/providers/microsoft.authorization/roledefinitions"):
                return 200, self.role_definitions(path, query), {}
            if low.endswith("/providers/microsoft.authorization/roleassignments") and method == "GET":
                prefix = low.rsplit("/providers/", 1)[0]
                return 200, {"value": [r for k, r in self.resources.items()
                                       if "/providers/microsoft.authorization/roleassignments/" in k and
                                       k.startswith(prefix)]}, {}
            if low.endswith("/providers/microsoft.compute/virtualmachines") and method == "GET":
                return 200, self.list_vms(path[: low.index("/providers/")], query), {}
            m = re.fullmatch(r"(.*/virtualmachines/[^/]+)/(deallocate|start)", low)
            if m and method == "POST":
                return self.action(path[: len(m.group(1))], m.group(2))
            if method == "PUT":
                return self.put(path, body)
            if method == "PATCH":  # tags only: what launch updates in place
                r = self._get(path)
                r["tags"] = body.get("tags", r.get("tags", {}))
                return 200, (self._view(r) if r["type"].lower() == "microsoft.compute/virtualmachines" else r), {}
            if method == "DELETE":
                return self.delete(path)
            if method in ("GET", "HEAD"):
                r = self._get(path)
                if r["type"].lower() == "microsoft.compute/virtualmachines":
                    return 200, self._view(r, query.get("$expand", [""])[0].lower() == "instanceview"), {}
                return 200, r, {}
        raise ApiError(405, "MethodNotAllowed", f"{method} {path}")

    def throttled(self) -> Reply:
        return self._error(ApiError(429, "TooManyRequests", "The request is being throttled.", {"Retry-After": "1"}))

    def answer(self, method: str, url, headers, raw: bytes) -> Reply:
        if url.path.rstrip("/") == "/api/retail/prices":  # Azure's Retail Prices API: public, no token
            return Reply(200, self.retail_prices(parse_qs(url.query).get("$filter", [""])[0]), {})
        try:
            if not (headers.get("Authorization") or "").startswith("Bearer "):
                raise ApiError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' "
                                                            "header is missing.")
            self.bearers[headers["Authorization"].removeprefix("Bearer ")] += 1
            body = json.loads(raw) if raw else {}
            code, out, extra = self.route(method, url.path, parse_qs(url.query), body)
        except ApiError as e:
            return self._error(e)
        return Reply(code, out if (out or code not in (202, 204)) else None,
                     {"x-ms-request-id": str(uuid.uuid4()), **extra})

    @staticmethod
    def _error(e: ApiError) -> Reply:
        return Reply(e.status, {"error": {"code": e.code, "message": e.message}},
                     {"x-ms-request-id": str(uuid.uuid4()), **e.headers})
