"""A fake Compute Engine REST endpoint (compute/v1), stateful and driven by the real google-cloud-compute
clients (../shared/TESTING.md). Faithful to the public REST reference where launch touches it:

- instances: insert, get, list (filter, maxResults/pageToken pagination), delete, stop, start,
  setLabels (labelFingerprint checked: 412 conditionNotMet when stale); status PROVISIONING -> STAGING
  -> RUNNING, STOPPING -> TERMINATED; boot disks made from initializeParams, deleted with the instance
  when autoDelete; SPOT with instanceTerminationAction DELETE is deleted when preempted, else stopped.
- zoneOperations / globalOperations: get and wait; an operation goes PENDING -> RUNNING -> DONE on the
  server's clock, and a failed one ends DONE with `error.errors[]` and `httpErrorStatusCode`.
- firewalls (insert, get, list, delete), networks.get, subnetworks.list, machineTypes.get,
  acceleratorTypes.get from a small catalog with the real shapes.
- the Cloud Billing Catalog API's Compute Engine SKUs (services/6F81-5844-456A/skus, paged), from the
  recorded slice tests/data/prices/gcp-billing-skus.json: the head's spot prices.
- error bodies as GCE writes them: {"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}.

Every instance that reaches RUNNING is a VM twin at its networkIP (hostname = instance name); stop or
delete kills it; start boots it again with its disk (/root) kept. Each twin has the metadata server
(tests/infra/metadata.py): the token of the instance's service account ("default": the project's compute
account), and `instance/preempted` for `notice()`. The bearer tokens callers used are counted
(`bearers`), so a test sees whose identity made a call. Faults: a stockout per zone (or per machine type in a zone), quota,
a burst of 429s, an insert whose reply is lost (a 503 after it was done), an operation that fails after it started (leaving a stopped instance behind, as a
half-made create can), and preemption.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

from tests.infra.fake_http import JsonApi, Reply
from tests.infra.metadata import Metadata

BASE = "/compute/v1/projects/"
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# name -> (guestCpus, memoryMb, built-in accelerators)
MACHINE_TYPES = {
    "e2-standard-2": (2, 8192, None), "e2-standard-4": (4, 16384, None),
    "n1-standard-2": (2, 7680, None), "n1-standard-4": (4, 15360, None), "n1-standard-8": (8, 30720, None),
    "n2-standard-4": (4, 16384, None), "n4-standard-2": (2, 8192, None),
    "g2-standard-4": (4, 16384, ("nvidia-l4", 1)), "a2-highgpu-1g": (12, 87040, ("nvidia-tesla-a100", 1)),
}
BILLING_SKUS = Path(__file__).resolve().parents[1] / "data" / "prices" / "gcp-billing-skus.json"
PROJECT_NUMBER = 123456789012  # the project's compute service account is <number>-compute@...
ACCELERATOR_TYPES = {"nvidia-tesla-t4": "NVIDIA T4", "nvidia-l4": "NVIDIA L4", "nvidia-tesla-a100": "NVIDIA A100 40GB",
                     "nvidia-tesla-v100": "NVIDIA V100"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message,
                          "errors": [{"domain": "global", "reason": self.reason, "message": self.message}]}}


@dataclass
class Operation:
    name: str
    scope: str  # "zones/Z" or "global"
    kind: str  # insert, delete, stop, start, setLabels
    target: str  # selfLink of the resource
    # what happens at each step: (seconds after insert, status, effect to apply then)
    steps: list = field(default_factory=list)
    status: str = "PENDING"
    error: list | None = None
    http_error: int = 0
    created: float = field(default_factory=time.monotonic)
    progress: int = 0

    def json(self, project: str) -> dict:
        out = {"kind": "compute#operation", "id": str(abs(hash(self.name)) % 10**18), "name": self.name,
               "operationType": self.kind, "targetLink": self.target, "status": self.status,
               "progress": self.progress, "insertTime": _now(),
               "selfLink": f"https://compute.googleapis.com{BASE}{project}/{self.scope}/operations/{self.name}"}
        if self.scope.startswith("zones/"):
            out["zone"] = f"https://compute.googleapis.com{BASE}{project}/{self.scope}"
        if self.error is not None:
            out["error"] = {"errors": self.error}
            out["httpErrorStatusCode"] = self.http_error
        return out


class FakeGCE(JsonApi):
    def __init__(self, host: str, project: str, region: str, zones: list[str], net=None, first_ip: int = 128,
                 op_step_s: float = 0.1):
        self.project, self.region, self.zones = project, region, zones
        self.net = net  # a TwinNet: instances become twins (None: plain state, no hosts)
        self.op_step_s = op_step_s
        self.lock = threading.RLock()
        self.instances: dict[str, dict[str, dict]] = {z: {} for z in zones}
        self.disks: dict[str, dict[str, dict]] = {z: {} for z in zones}
        self.operations: dict[str, Operation] = {}
        self.firewalls: dict[str, dict] = {}
        self.requests: dict[str, str] = {}  # requestId -> operation name
        self.ids = itertools.count(4_000_000_000_000_000_001)
        self.ops = itertools.count(1)
        self.first_ip = first_ip
        self.max_page = 500  # GCE caps maxResults at 500
        self.freed: list[str] = []  # internal IPs of deleted instances, reused last-freed first
        self.calls: list[tuple[str, str]] = []  # (method, path): what the clients asked, in order
        # faults
        self.stockout_zones: set[str] = set()
        self.stockout_offerings: set[tuple[str, str]] = set()  # (machine type, zone) with no capacity
        self.quota_exceeded = False
        self.throttle_next = 0
        self.fail_after_start_zones: set[str] = set()
        self.lose_insert_replies = 0
        # IAM: (permission, bearer token) pairs refused, "*" for every caller (compute.instances.<verb>)
        self.denied: set[tuple[str, str]] = set()
        self.caller = threading.local()  # the bearer token of the request this thread answers
        self.billing_page = 5  # SKUs per page of the Cloud Billing catalog (tests/data/prices/gcp-billing-skus.json)
        self.billing_asked = 0
        self.tokens_issued = 0  # access tokens given for service account keys (POST /token)
        self.last_authorization = ""
        self.bearers: collections.Counter[str] = collections.Counter()  # the tokens calls carried
        self.metadata: dict[str, Metadata] = {}  # instance name -> its twin's metadata server
        self.httpd = self.http_server(host)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fake-gce"),
                         threading.Thread(target=self._clock, daemon=True, name="fake-gce-clock")]
        for t in self._threads:
            t.start()

    # --- test controls ---------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            for zone in self.zones:
                for name in list(self.instances[zone]):
                    self._kill_twin(name, destroy=True)
                self.instances[zone].clear()
                self.disks[zone].clear()
            self.operations.clear()
            self.firewalls.clear()
            self.requests.clear()
            self.freed.clear()
            self.calls.clear()
            self.stockout_zones.clear()
            self.stockout_offerings.clear()
            self.fail_after_start_zones.clear()
            self.quota_exceeded, self.throttle_next, self.lose_insert_replies = False, 0, 0
            self.denied.clear()

    def live(self, label_filters: dict[str, str] | None = None) -> list[dict]:
        """Every instance not deleted, in any status, whose labels include the filters."""
        with self.lock:
            return [i for z in self.zones for i in self.instances[z].values()
                    if all(i.get("labels", {}).get(k) == v for k, v in (label_filters or {}).items())]

    def all_disks(self) -> list[dict]:
        with self.lock:
            return [d for z in self.zones for d in self.disks[z].values()]

    def preempt(self, name: str) -> None:
        """GCE takes a spot VM back: its processes die; it is deleted (instanceTerminationAction DELETE)
        or left TERMINATED."""
        with self.lock:
            zone, inst = self._find(name)
            self._kill_twin(name, destroy=True)
            if inst.get("scheduling", {}).get("instanceTerminationAction") == "DELETE":
                self._delete_now(zone, name)
            else:
                inst["status"] = "TERMINATED"

    def twin(self, name: str):
        return self.net.twins.get(name) if self.net else None

    def notice(self, name: str) -> None:
        """GCE starts preempting a spot VM: its metadata says so (`preempted()` then takes it)."""
        self.metadata[name].set(preempted=True)

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.reset()

    # --- the server's clock: operations progress whether or not anyone polls -------------------------

    def _clock(self) -> None:
        while not self._stop.wait(self.op_step_s / 2):
            now = time.monotonic()
            with self.lock:
                for op in list(self.operations.values()):
                    while op.steps and now - op.created >= op.steps[0][0]:
                        _, status, effect = op.steps.pop(0)
                        if effect is not None:
                            try:
                                effect()
                            except ApiError as e:
                                op.error = [{"code": e.reason, "message": e.message}]
                                op.http_error = e.code
                                op.steps = [(0, "DONE", None)]
                                continue
                        op.status = status
                        op.progress = 100 if status == "DONE" else 50

    def _operation(self, scope: str, kind: str, target: str, effects: list) -> Operation:
        """effects: callables run in order as the operation moves RUNNING -> DONE."""
        op = Operation(name=f"operation-{next(self.ops)}-{int(time.time() * 1000)}", scope=scope, kind=kind,
                       target=target)
        step = self.op_step_s
        op.steps = [(step, "RUNNING", None)] + [(step * (i + 2), "RUNNING", e) for i, e in enumerate(effects)]
        op.steps.append((step * (len(effects) + 2), "DONE", None))
        self.operations[op.name] = op
        return op

    def _fail(self, code: str, message: str, http: int):
        def effect():
            raise ApiError(http, code, message)
        return effect

    # --- instances -----------------------------------------------------------------------------------

    def _link(self, *parts: str) -> str:
        return f"https://compute.googleapis.com{BASE}{self.project}/" + "/".join(parts)

    def _find(self, name: str) -> tuple[str, dict]:
        for zone in self.zones:
            if name in self.instances[zone]:
                return zone, self.instances[zone][name]
        raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/zones/?/instances/{name}' was not found")

    def _instance(self, zone: str, name: str) -> dict:
        inst = self.instances.get(zone, {}).get(name)
        if inst is None:
            raise ApiError(404, "notFound",
                           f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' was not found")
        return inst

    def _ip(self) -> str:
        used = {nic.get("networkIP") for z in self.zones for i in self.instances[z].values()
                for nic in i.get("networkInterfaces", [])}
        while self.freed:  # the address freed last is given out first: GCE reuses internal IPs
            ip = self.freed.pop()
            if ip not in used:
                return ip
        for host in range(self.first_ip, 250):
            ip = f"10.{self.net.n}.0.{host}" if self.net else f"10.128.0.{host}"
            if ip not in used:
                return ip
        raise ApiError(503, "resourceExhausted", "no free address in the subnetwork")

    def _check_labels(self, labels: dict) -> None:
        if len(labels) > 64:
            raise ApiError(400, "invalid", "Invalid value for field 'resource.labels': too many labels (max 64)")
        for k, v in labels.items():
            if not LABEL_KEY.match(k) or not isinstance(v, str) or not LABEL_VALUE.match(v):
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.labels': '{k}: {v}'. "
                                               "Label keys and values can only contain lowercase letters, "
                                               "numeric characters, underscores and dashes.")

    def insert(self, zone: str, body: dict) -> Operation:
        if zone not in self.zones:
            raise ApiError(400, "invalid", f"Invalid value for field 'zone': '{zone}'. Unknown zone.")
        name = body.get("name", "")
        if not NAME.match(name):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match "
                                           "of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if name in self.instances[zone]:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' already exists")
        machine = str(body.get("machineType", "")).rsplit("/", 1)[-1]
        if machine not in MACHINE_TYPES or f"zones/{zone}/machineTypes/" not in str(body.get("machineType")):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.machineType': "
                                           f"'{body.get('machineType')}'. Machine type with name '{machine}' does not "
                                           f"exist in zone '{zone}'.")
        self._check_labels(body.get("labels", {}))
        scheduling = body.get("scheduling", {})
        accels = body.get("guestAccelerators", [])
        for a in accels:
            t = str(a.get("acceleratorType", "")).rsplit("/", 1)[-1]
            if t not in ACCELERATOR_TYPES or f"zones/{zone}/acceleratorTypes/" not in str(a.get("acceleratorType")):
                raise ApiError(400, "invalid", f"Invalid value for field 'resource.guestAccelerators[0].acceleratorType'"
                                               f": '{a.get('acceleratorType')}'. Accelerator type '{t}' does not exist "
                                               f"in zone '{zone}'.")
        if (accels or MACHINE_TYPES[machine][2]) and scheduling.get("onHostMaintenance") != "TERMINATE":
            raise ApiError(400, "invalid", "Invalid value for field 'resource.scheduling.onHostMaintenance': "
                                           "'MIGRATE'. Instances with guest accelerators do not support live migration.")
        boots = [d for d in body.get("disks", []) if d.get("boot")]
        if len(boots) != 1 or not (boots[0].get("source") or boots[0].get("initializeParams", {}).get("sourceImage")):
            raise ApiError(400, "invalid", "Invalid value for field 'resource.disks': a boot disk with a source or "
                                           "initializeParams.sourceImage is required.")
        nics = body.get("networkInterfaces") or [{"network": "global/networks/default"}]
        for nic in nics:
            if not str(nic.get("network", "default")).endswith("networks/default") and not nic.get("subnetwork"):
                raise ApiError(404, "notFound", f"The resource '{nic.get('network')}' was not found")
        if self.quota_exceeded:
            raise ApiError(403, "quotaExceeded", f"Quota 'CPUS' exceeded.  Limit: 24.0 in region {self.region}.")
        inst = json.loads(json.dumps(body))
        inst.update(kind="compute#instance", id=str(next(self.ids)), status="PROVISIONING",
                    zone=self._link("zones", zone), machineType=self._link("zones", zone, "machineTypes", machine),
                    selfLink=self._link("zones", zone, "instances", name), creationTimestamp=_now(),
                    labels=body.get("labels", {}), labelFingerprint=self._fingerprint(body.get("labels", {})))
        inst.setdefault("metadata", {})["fingerprint"] = "fp-" + str(next(self.ops))
        inst["metadata"]["kind"] = "compute#metadata"
        inst["networkInterfaces"] = [dict(nic, name=f"nic{i}", networkIP=self._ip() if i == 0 else "",
                                          network=self._link("global", "networks", "default"),
                                          subnetwork=self._link("regions", self.region, "subnetworks", "default"))
                                     for i, nic in enumerate(nics)]
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                ac["natIP"] = "203.0.113." + nic["networkIP"].rsplit(".", 1)[1]
        disks = []
        for i, d in enumerate(body.get("disks", [])):
            disk_name = d.get("initializeParams", {}).get("diskName") or (name if d.get("boot") else f"{name}-{i}")
            self.disks[zone][disk_name] = {"name": disk_name, "zone": zone, "users": [name],
                                           "sizeGb": str(d.get("initializeParams", {}).get("diskSizeGb", 10))}
            disks.append({"boot": bool(d.get("boot")), "autoDelete": d.get("autoDelete", True), "deviceName": disk_name,
                          "source": self._link("zones", zone, "disks", disk_name), "index": i})
        inst["disks"] = disks
        self.instances[zone][name] = inst
        link = inst["selfLink"]
        if zone in self.stockout_zones or (machine, zone) in self.stockout_offerings:
            return self._operation(f"zones/{zone}", "insert", link, [
                lambda: self._delete_now(zone, name),
                self._fail("ZONE_RESOURCE_POOL_EXHAUSTED", f"The zone 'projects/{self.project}/zones/{zone}' does not "
                           "have enough resources available to fulfill the request.  Try a different zone, or try "
                           "again later.", 503)])
        if zone in self.fail_after_start_zones:
            def half_made():
                inst["status"] = "TERMINATED"
                raise ApiError(500, "INTERNAL_ERROR", "Internal error. Please try again or contact Google Support.")
            return self._operation(f"zones/{zone}", "insert", link, [lambda: inst.update(status="STAGING"), half_made])
        return self._operation(f"zones/{zone}", "insert", link, [
            lambda: inst.update(status="STAGING"), lambda: self._boot(zone, name)])

    @staticmethod
    def _fingerprint(labels: dict) -> str:
        return base64.b64encode(json.dumps(labels, sort_keys=True).encode()).decode()[:16] + str(len(labels))

    def _boot(self, zone: str, name: str) -> None:
        inst = self.instances[zone].get(name)
        if inst is None:
            return
        if self.net is not None:
            twin = self.net.twins.get(name)
            if twin is None:
                twin = self.net.twin(name, inst["networkInterfaces"][0]["networkIP"])
                accounts = [a.get("email") for a in inst.get("serviceAccounts") or []]
                email = {"default": f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"}.get(
                    accounts[0], accounts[0]) if accounts else None
                self.metadata[name] = Metadata(twin, cloud="gcp", project=self.project, name=name,
                                               service_account=email, token=f"instance-token-{name}")
                if inst.get("labels", {}).get("launch-kind") == "head":
                    twin.block_laptop()  # a head behind a firewall that lets SSH in only
            else:
                twin.boot()
        inst["status"] = "RUNNING"

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

    def _delete_now(self, zone: str, name: str) -> None:
        inst = self.instances[zone].pop(name, None)
        if inst is None:
            return
        self._kill_twin(name, destroy=True)
        self.freed.append(inst["networkInterfaces"][0]["networkIP"])
        for d in inst.get("disks", []):
            if d.get("autoDelete"):
                self.disks[zone].pop(d["deviceName"], None)
            else:
                self.disks[zone].get(d["deviceName"], {}).get("users", []).clear()

    def delete(self, zone: str, name: str) -> Operation:
        inst = self._instance(zone, name)
        inst["status"] = "STOPPING"
        return self._operation(f"zones/{zone}", "delete", inst["selfLink"], [lambda: self._delete_now(zone, name)])

    def stop(self, zone: str, name: str) -> Operation:
        inst = self._instance(zone, name)
        if inst["status"] in ("RUNNING", "STAGING", "PROVISIONING"):
            inst["status"] = "STOPPING"

        def stopped():
            self._kill_twin(name, destroy=False)
            inst["status"] = "TERMINATED"
        return self._operation(f"zones/{zone}", "stop", inst["selfLink"], [stopped])

    def start(self, zone: str, name: str) -> Operation:
        inst = self._instance(zone, name)
        if inst["status"] != "TERMINATED":
            raise ApiError(400, "resourceNotReady", f"The resource '{name}' is not ready (status {inst['status']})")
        inst["status"] = "STAGING"
        return self._operation(f"zones/{zone}", "start", inst["selfLink"], [lambda: self._boot(zone, name)])

    def set_labels(self, zone: str, name: str, body: dict) -> Operation:
        inst = self._instance(zone, name)
        if body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed")
        labels = body.get("labels", {})
        self._check_labels(labels)
        inst["labels"] = labels
        inst["labelFingerprint"] = self._fingerprint(labels)
        return self._operation(f"zones/{zone}", "setLabels", inst["selfLink"], [])

    # --- list filters (the subset of GCE's filter grammar launch and Ray use) --------------------------

    @staticmethod
    def _matches(inst: dict, flt: str) -> bool:
        if not flt.strip():
            return True
        terms = re.split(r"\s+AND\s+", flt.strip()) if " AND " in flt else re.findall(r"\(([^()]*)\)", flt) or [flt]
        for term in terms:
            term = term.strip().strip("()").strip()
            m = re.fullmatch(r'([a-zA-Z][\w.-]*)\s*(=|!=|eq|ne)\s*"?([^"]*)"?', term)
            if not m:
                raise ApiError(400, "invalid", f"Invalid value for field 'filter': '{flt}'. Invalid list filter "
                                               "expression.")
            path, op, want = m.groups()
            value = inst
            for part in path.split("."):
                value = value.get(part, "") if isinstance(value, dict) else ""
            equal = str(value) == want
            if (op in ("=", "eq")) != equal:
                return False
        return True

    def list(self, zone: str, query: dict) -> dict:
        if zone not in self.zones:
            raise ApiError(400, "invalid", f"Invalid value for field 'zone': '{zone}'. Unknown zone.")
        flt = query.get("filter", [""])[0]
        items = [i for i in self.instances[zone].values() if self._matches(i, flt)]
        items.sort(key=lambda i: i["name"])
        size = min(int(query.get("maxResults", ["500"])[0]), self.max_page)
        start = int(base64.b64decode(query["pageToken"][0]).decode()) if query.get("pageToken") else 0
        page = items[start:start + size]
        out = {"kind": "compute#instanceList", "id": f"projects/{self.project}/zones/{zone}/instances",
               "items": page, "selfLink": self._link("zones", zone, "instances")}
        if start + size < len(items):
            out["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
        return out

    # --- firewalls and the rest ----------------------------------------------------------------------

    def insert_firewall(self, body: dict) -> Operation:
        name = body.get("name", "")
        if not NAME.match(name):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'.")
        if name in self.firewalls:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{self.project}/global/firewalls/{name}' "
                                                 "already exists")
        fw = dict(body, kind="compute#firewall", id=str(next(self.ids)), selfLink=self._link("global", "firewalls", name),
                  network=body.get("network") or self._link("global", "networks", "default"))
        return self._operation("global", "insert", fw["selfLink"], [lambda: self.firewalls.__setitem__(name, fw)])

    def firewall(self, name: str) -> dict:
        if name not in self.firewalls:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/global/firewalls/{name}' was not found")
        return self.firewalls[name]

    def delete_firewall(self, name: str) -> Operation:
        fw = self.firewall(name)
        return self._operation("global", "delete", fw["selfLink"], [lambda: self.firewalls.pop(name, None)])

    def machine_type(self, zone: str, name: str) -> dict:
        if name not in MACHINE_TYPES or zone not in self.zones:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/zones/{zone}/machineTypes/{name}' "
                                            "was not found")
        cpus, mem, accel = MACHINE_TYPES[name]
        out = {"kind": "compute#machineType", "name": name, "guestCpus": cpus, "memoryMb": mem, "zone": zone,
               "selfLink": self._link("zones", zone, "machineTypes", name)}
        if accel:
            out["accelerators"] = [{"guestAcceleratorType": accel[0], "guestAcceleratorCount": accel[1]}]
        return out

    def accelerator_type(self, zone: str, name: str) -> dict:
        if name not in ACCELERATOR_TYPES or zone not in self.zones:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/zones/{zone}/acceleratorTypes/{name}' "
                                            "was not found")
        return {"kind": "compute#acceleratorType", "name": name, "description": ACCELERATOR_TYPES[name],
                "maximumCardsPerInstance": 8, "selfLink": self._link("zones", zone, "acceleratorTypes", name)}

    def network(self, name: str) -> dict:
        if name != "default":
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/global/networks/{name}' was not found")
        return {"kind": "compute#network", "name": "default", "autoCreateSubnetworks": True,
                "selfLink": self._link("global", "networks", "default"),
                "subnetworks": [self._link("regions", self.region, "subnetworks", "default")]}

    def subnetworks(self, region: str) -> dict:
        items = [] if region != self.region else [{
            "kind": "compute#subnetwork", "name": "default", "region": self._link("regions", region),
            "network": self._link("global", "networks", "default"), "ipCidrRange": "10.128.0.0/20",
            "selfLink": self._link("regions", region, "subnetworks", "default")}]
        return {"kind": "compute#subnetworkList", "items": items}

    def operation(self, scope: str, name: str) -> Operation:
        op = self.operations.get(name)
        if op is None or op.scope != scope:
            raise ApiError(404, "notFound", f"The resource 'projects/{self.project}/{scope}/operations/{name}' was not found")
        return op

    # --- HTTP ----------------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict, body: dict) -> dict:
        if not path.startswith(BASE):
            raise ApiError(404, "notFound", f"no such path {path}")
        rest = path[len(BASE):].split("/")
        if rest[0] != self.project:
            raise ApiError(403, "forbidden", f"Required 'compute.instances.list' permission for 'projects/{rest[0]}'")
        r = rest[1:]
        with self.lock:
            if r[:1] == ["zones"] and len(r) >= 3:
                zone = r[1]
                if r[2] == "instances":
                    self._authorize(method, r)
                    if len(r) == 3:
                        if method == "GET":
                            return self.list(zone, query)
                        # requestId: the same request sent again (a retry) is the same operation, not a new VM
                        rid = query.get("requestId", [""])[0]
                        if rid and rid in self.requests:
                            return self.operations[self.requests[rid]].json(self.project)
                        op = self.insert(zone, body)
                        if rid:
                            self.requests[rid] = op.name
                        if self.lose_insert_replies > 0:  # done, but the answer never reaches the client
                            self.lose_insert_replies -= 1
                            raise ApiError(503, "backendError", "Backend Error")
                        return op.json(self.project)
                    name = r[3]
                    if len(r) == 4:
                        if method == "GET":
                            return self._instance(zone, name)
                        if method == "DELETE":
                            return self.delete(zone, name).json(self.project)
                    action = r[4] if len(r) == 5 else ""
                    if action == "stop":
                        return self.stop(zone, name).json(self.project)
                    if action == "start":
                        return self.start(zone, name).json(self.project)
                    if action == "setLabels":
                        return self.set_labels(zone, name, body).json(self.project)
                if r[2] == "operations" and len(r) >= 4:
                    op = self.operation(f"zones/{zone}", r[3])
                    return op.json(self.project)
                if r[2] == "machineTypes" and len(r) == 4:
                    return self.machine_type(zone, r[3])
                if r[2] == "acceleratorTypes" and len(r) == 4:
                    return self.accelerator_type(zone, r[3])
            if r[:1] == ["global"] and len(r) >= 2:
                if r[1] == "firewalls":
                    if len(r) == 2:
                        if method == "GET":
                            return {"kind": "compute#firewallList", "items": [
                                f for f in self.firewalls.values() if self._matches(f, query.get("filter", [""])[0])]}
                        return self.insert_firewall(body).json(self.project)
                    if method == "GET":
                        return self.firewall(r[2])
                    if method == "DELETE":
                        return self.delete_firewall(r[2]).json(self.project)
                if r[1] == "operations" and len(r) >= 3:
                    return self.operation("global", r[2]).json(self.project)
                if r[1] == "networks" and len(r) == 3:
                    return self.network(r[2])
            if r[:1] == ["regions"] and len(r) == 3 and r[2] == "subnetworks":
                return self.subnetworks(r[1])
        raise ApiError(404, "notFound", f"no such resource {method} {path}")

    def _authorize(self, method: str, r: list[str]) -> None:
        """IAM: a call on instances needs its permission, which `denied` takes from a caller (or all)."""
        verb = {("GET", 3): "list", ("POST", 3): "create", ("GET", 4): "get", ("DELETE", 4): "delete"}.get(
            (method, len(r)), {"setLabels": "setLabels"}.get(r[-1], r[-1]))
        permission = f"compute.instances.{verb}"
        if {(permission, "*"), (permission, self.caller.token)} & self.denied:
            raise ApiError(403, "forbidden", f"Required '{permission}' permission for 'projects/{self.project}/"
                                             f"zones/{r[1]}/instances{'/' + r[3] if len(r) > 3 else ''}'")

    def service_account_key(self) -> dict:
        """A service account key file's contents (`gcloud iam service-accounts keys create`), its token_uri
        this endpoint (POST /token)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": self.project, "private_key_id": "k1", "private_key": pem,
                "client_email": f"launch@{self.project}.iam.gserviceaccount.com", "client_id": "1",
                "token_uri": f"{self.url}/token"}

    def throttled(self) -> Reply:
        return Reply(429, ApiError(429, "rateLimitExceeded", "Rate Limit Exceeded").body(),
                     content_type="application/json; charset=UTF-8")

    def answer(self, method: str, url, headers, raw: bytes) -> Reply:
        if method == "POST" and url.path == "/token":  # OAuth2 for service account keys
            form = parse_qs(raw.decode())
            if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                e = ApiError(400, "invalid_grant", "unsupported grant type")
                return Reply(e.code, e.body(), content_type="application/json; charset=UTF-8")
            self.tokens_issued += 1
            return Reply(200, {"access_token": "sa-token", "token_type": "Bearer", "expires_in": 3600},
                         content_type="application/json")
        if method == "GET" and url.path == "/v1/services/6F81-5844-456A/skus":  # the Cloud Billing catalog
            if not (headers.get("Authorization") or "").startswith("Bearer "):
                return Reply(401, ApiError(401, "required", "no credentials").body(), content_type="application/json")
            self.billing_asked += 1
            start = int(parse_qs(url.query).get("pageToken", ["0"])[0])
            skus = json.loads(BILLING_SKUS.read_text())["skus"]
            more = start + self.billing_page < len(skus)
            return Reply(200, {"skus": skus[start:start + self.billing_page],
                               "nextPageToken": str(start + self.billing_page) if more else ""},
                         content_type="application/json")
        try:
            self.last_authorization = headers.get("Authorization") or ""
            if not self.last_authorization.startswith("Bearer "):
                raise ApiError(401, "required", "Request is missing required authentication credential.")
            self.caller.token = self.last_authorization.removeprefix("Bearer ")
            self.bearers[self.caller.token] += 1
            body = json.loads(raw) if raw else {}
            out, code = self.route(method, url.path, parse_qs(url.query), body), 200
        except ApiError as e:
            out, code = e.body(), e.code
        return Reply(code, out, content_type="application/json; charset=UTF-8")
