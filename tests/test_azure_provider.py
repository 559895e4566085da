"""The azure provider through the real azure-mgmt-* clients against the fake ARM endpoint over https
(tests/infra/fake_arm.py): bootstrap, Ray's azure_arm_parameters, spot, zone failover on allocation
failures, typed errors, long-running operations, and nothing left behind when a VM goes."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("azure.mgmt.compute")

import providers  # noqa: E402
from conftest import ARM_LOCATION, ARM_SUBSCRIPTION  # noqa: E402
from core.config import parse_config  # noqa: E402
from core.errors import CapacityError, InvalidRequest, QuotaError, TransientError  # noqa: E402
from core.spec import ClusterSpec  # noqa: E402
from core.tags import TAG_CLUSTER, TAG_KIND, TAG_NODE_TYPE, TAG_STATUS  # noqa: E402

IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204", "imageSku": "2204-gen2",
         "imageVersion": "latest"}


def config(arm, name: str = "az-test", **provider) -> dict:
    return {
        "cluster_name": name,
        "provider": {"type": "azure", "location": ARM_LOCATION, "resource_group": "launch-rg",
                     "subscription_id": ARM_SUBSCRIPTION, "availability_zone": "1,2", "api_endpoint": arm.url,
                     "ca_bundle": str(arm.cert), "access_token": "test-token", **provider},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {"azure_arm_parameters": {
                "vmSize": "Standard_D2s_v5", **IMAGE}}},
            "ray.worker.default": {"max_workers": 4, "node_config": {"azure_arm_parameters": {
                "vmSize": "Standard_D4s_v5", **IMAGE}}},
            "gpu.spot": {"max_workers": 4, "node_config": {"azure_arm_parameters": {
                "vmSize": "Standard_NC4as_T4_v3", "priority": "Spot", "evictionPolicy": "Deallocate",
                "billingProfile": {"maxPrice": 0.3}, **IMAGE}}},
        },
        "head_node_type": "ray.head.default",
    }


def make(arm, tmp_path, **provider):
    cfg = parse_config(config(arm, **provider))
    boot = providers.bootstrap(cfg, tmp_path)
    return providers.build(ClusterSpec(config=cfg, provider_state=boot.state)), boot


def tags(node_type: str, kind: str = "worker") -> dict[str, str]:
    return {TAG_CLUSTER: "az-test", TAG_KIND: kind, TAG_NODE_TYPE: node_type}


def vm_puts(arm) -> int:
    return sum(1 for m, p in arm.calls if m == "PUT" and "/virtualMachines/" in p)


def leftovers(arm) -> list[str]:
    return [r["name"] for t in ("virtualMachines", "networkInterfaces", "publicIPAddresses", "disks")
            for r in arm.of_type(t)]


def test_bootstrap_is_idempotent_opens_ssh_only_and_scopes_the_heads_identity(arm, tmp_path):
    _, boot = make(arm, tmp_path)
    (nsg,) = arm.of_type("networkSecurityGroups")
    rules = nsg["properties"]["securityRules"]
    assert [(r["properties"]["destinationPortRange"], r["properties"]["direction"]) for r in rules] == [("22", "Inbound")]
    (subnet,) = arm.of_type("subnets")
    assert subnet["properties"]["networkSecurityGroup"]["id"] == nsg["id"]
    (rg,) = arm.of_type("resourceGroups")
    assert rg["tags"] == {"launch-created-by": "az-test"} and boot.state["resource_group_created"]
    assignments = arm.of_type("roleAssignments")
    (identity,) = arm.of_type("userAssignedIdentities")
    assert len(assignments) == 2 and all(
        a["id"].lower().startswith(rg["id"].lower() + "/") and  # the resource group only, not the subscription
        a["properties"]["principalId"] == identity["properties"]["principalId"] for a in assignments)
    _, again = make(arm, tmp_path)  # a second up: the same state, nothing duplicated
    assert again.state == boot.state and len(arm.of_type("roleAssignments")) == 2


def test_vms_carry_tags_spot_settings_and_leave_nothing_when_deleted(arm, tmp_path):
    provider, _ = make(arm, tmp_path)
    (node,) = provider.create("gpu.spot", 1, tags("gpu.spot"))
    assert node.state == "running" and node.spot and node.tags == tags("gpu.spot") and node.external_ip
    (vm,) = arm.of_type("virtualMachines")
    props = vm["properties"]
    assert (props["priority"], props["evictionPolicy"], props["billingProfile"]) == ("Spot", "Deallocate", {"maxPrice": 0.3})
    assert props["storageProfile"]["imageReference"]["offer"] == "ubuntu-2204" and vm["zones"] == ["1"]
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert "identity" not in vm  # only the head gets the managed identity
    provider.set_tags(node.id, {TAG_STATUS: "up-to-date"})
    assert provider.list({TAG_STATUS: "up-to-date"})[0].id == node.id
    provider.terminate([node.id, "never-existed"])
    assert leftovers(arm) == []  # NIC, public IP and OS disk went with the VM


def test_the_head_gets_the_managed_identity(arm, tmp_path):
    provider, boot = make(arm, tmp_path, use_internal_ips=True)
    provider.create("ray.head.default", 1, tags("ray.head.default", kind="head"))
    (vm,) = arm.of_type("virtualMachines")
    assert list(vm["identity"]["userAssignedIdentities"]) == [boot.state["identity"]]
    assert arm.of_type("publicIPAddresses") == []  # use_internal_ips: no public address


def test_allocation_failures_fail_over_to_the_next_zone_then_back_off(arm, tmp_path):
    provider, _ = make(arm, tmp_path)
    arm.allocation_failure_zones.add("1")
    nodes = provider.create("ray.worker.default", 2, tags("ray.worker.default"))
    assert len(nodes) == 2 and {v["zones"][0] for v in arm.of_type("virtualMachines")} == {"2"}
    arm.allocation_failure_zones.add("2")
    with pytest.raises(CapacityError, match="ZonalAllocationFailed"):
        provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    assert len(arm.of_type("virtualMachines")) == 2 and len(arm.of_type("networkInterfaces")) == 2  # failed ones cleaned
    arm.sku_not_available.add("Standard_NC4as_T4_v3")
    with pytest.raises(CapacityError, match="SkuNotAvailable"):
        provider.create("gpu.spot", 1, tags("gpu.spot"))
    provider.terminate([n.id for n in nodes])
    assert leftovers(arm) == []


def test_quota_429s_and_bad_arguments(arm, tmp_path):
    provider, _ = make(arm, tmp_path)
    arm.quota_exceeded = True
    with pytest.raises(QuotaError, match="ray.worker.default.*quota"):
        provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    arm.quota_exceeded = False
    arm.throttle_next = 2  # 429 with Retry-After: azure-core waits and retries
    (node,) = provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    assert node.state == "running"
    data = config(arm)
    data["available_node_types"]["ray.worker.default"]["node_config"]["azure_arm_parameters"]["vmSize"] = "Standard_Z9"
    cfg = parse_config(data)
    bad = providers.build(ClusterSpec(config=cfg, provider_state=providers.bootstrap(cfg, tmp_path).state))
    with pytest.raises(InvalidRequest, match=r"available_node_types\.ray\.worker\.default\.node_config\.azure_arm_parameters"):
        bad.create("ray.worker.default", 1, tags("ray.worker.default"))
    provider.terminate([node.id])
    assert leftovers(arm) == []


def test_resources_from_skus_eviction_and_stop_start(arm, tmp_path):
    provider, _ = make(arm, tmp_path, cache_stopped_nodes=True)
    types = provider.node_types()
    assert types["gpu.spot"] == {"CPU": 4.0, "memory": 28 * 2**30, "GPU": 1.0, "accelerator_type:T4": 1.0}
    assert types["ray.worker.default"] == {"CPU": 4.0, "memory": 16 * 2**30}
    (spot,) = provider.create("gpu.spot", 1, tags("gpu.spot"))
    arm.evict(spot.id, delete=False)  # deallocated by Azure: not capacity, deleted when seen
    assert provider.list({TAG_CLUSTER: "az-test"}) == [] and leftovers(arm) == []
    (node,) = provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    provider.stop([node.id])
    assert provider.list({TAG_CLUSTER: "az-test"}) == []
    assert [n.id for n in provider.stopped({TAG_CLUSTER: "az-test"})] == [node.id]
    before = vm_puts(arm)
    (again,) = provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    assert again.id == node.id and vm_puts(arm) == before  # started again, not made anew
    provider.terminate([node.id])
    assert leftovers(arm) == []


def test_lists_page_through_next_link(arm, tmp_path):
    provider, _ = make(arm, tmp_path, use_internal_ips=True)
    nodes = provider.create("ray.worker.default", 3, tags("ray.worker.default"))
    arm.max_page = 2
    try:
        assert sorted(n.id for n in provider.list({TAG_CLUSTER: "az-test"})) == sorted(n.id for n in nodes)
    finally:
        arm.max_page = 100
    provider.terminate([n.id for n in nodes])


def test_purge_deletes_the_resource_group_only_when_launch_made_it(arm, tmp_path):
    provider, boot = make(arm, tmp_path)
    assert provider.cleanup(purge=False) == [] and arm.of_type("resourceGroups")
    assert provider.cleanup(purge=True) == ["resource group launch-rg deleted"]
    assert arm.resources == {}
    arm.put(f"/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/launch-rg", {"location": ARM_LOCATION})  # the user's
    provider, boot = make(arm, tmp_path)
    assert not boot.state["resource_group_created"]
    assert provider.cleanup(purge=True) == ["resource group launch-rg kept: launch did not create it"]
    assert arm.of_type("resourceGroups")


def test_rays_documented_azure_file_launches_as_it_is(arm, tmp_path, monkeypatch):
    import copy

    from tests.test_ray_configs import RAY_FILES

    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("key\n")
    (ssh / "id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E user@laptop\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    data = copy.deepcopy(RAY_FILES["azure-full"])
    data["provider"].update(subscription_id=ARM_SUBSCRIPTION, api_endpoint=arm.url, ca_bundle=str(arm.cert),
                            access_token="test-token")
    cfg = parse_config(data)
    provider = providers.build(ClusterSpec(config=cfg, provider_state=providers.bootstrap(cfg, tmp_path).state))
    for node_type, kind in (("ray.head.default", "head"), ("ray.worker.default", "worker")):
        (node,) = provider.create(node_type, 1, {TAG_CLUSTER: "default", TAG_KIND: kind, TAG_NODE_TYPE: node_type})
        assert node.state == "running" and node.external_ip  # not use_internal_ips: a public address
    vms = {v["tags"][TAG_NODE_TYPE]: v for v in arm.of_type("virtualMachines")}
    assert vms["ray.worker.default"]["properties"]["priority"] == "Spot"  # Ray's `priority: Spot`
    keys = vms["ray.head.default"]["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
    assert keys[0]["keyData"] == "ssh-rsa AAAAB3NzaC1yc2E user@laptop"  # auth.ssh_public_key


def test_permission_errors_fail_fast_naming_the_node_type(arm, tmp_path):
    from core.errors import PermissionDenied

    cfg = parse_config(config(arm))
    state = dict(providers.bootstrap(cfg, tmp_path).state, subscription_id="someone-elses-subscription")
    provider = providers.build(ClusterSpec(config=cfg, provider_state=state))
    with pytest.raises(PermissionDenied, match="for node type 'ray.worker.default' refused: AuthorizationFailed") as e:
        provider.create("ray.worker.default", 1, tags("ray.worker.default"))
    assert e.value.permission.startswith("Microsoft.")  # the RBAC action ARM named
    assert leftovers(arm) == []


@pytest.mark.parametrize("provider, line", [
    ({"access_token": None}, "error: provider: no usable Azure credentials found: run `az login`"),
    ({"api_endpoint": "https://127.0.0.1:9", "retry_attempts": 1}, "error: azure resourceGroups.get: the API does not answer"),
], ids=["no-credentials", "arm-unreachable"])
def test_a_user_without_credentials_or_a_reachable_arm_gets_one_line(arm, tmp_path, monkeypatch, provider, line):
    """As a new user meets it: `launch up` with no Azure login (no environment, no ~/.azure, no managed
    identity), or with ARM out of reach, says so in one line: no list of every credential tried, no
    traceback."""
    from tests.infra import cli, write_config

    for key in [k for k in os.environ if k.startswith(("AZURE_", "MSI_", "IDENTITY_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    data = config(arm)
    data["provider"].update(provider)
    data["provider"] = {k: v for k, v in data["provider"].items() if v is not None}
    key = tmp_path / "id_rsa"
    key.write_text("key\n")
    (tmp_path / "id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E user@laptop\n")
    data["auth"].update(ssh_private_key=str(key), ssh_public_key=f"{key}.pub")
    r = cli("up", str(write_config(tmp_path / "c.yaml", data)), "--yes", home=tmp_path / "home", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), r.stderr
    assert not any(m == "PUT" for m, _ in arm.calls)  # nothing made


def test_the_heads_live_spot_prices_come_from_azures_retail_prices_in_the_clusters_location(arm, tmp_path):
    from autoscaler import pricing
    from tests.infra.fake_arm import RETAIL_RATE

    p, _ = make(arm, tmp_path, prices_endpoint=arm.url)
    assert p.capabilities.live_spot_prices and p.spot_prices_every_s == 24 * 3600  # a published list: daily
    cfg = p.spec.config
    assert pricing.live_wanted(cfg) == ["Standard_NC4as_T4_v3"]  # the spot type's size only
    found = p.spot_prices(pricing.live_wanted(cfg) + ["Standard_D4s_v5", "Standard_Nope"])
    # Linux Spot meters only (not pay-as-you-go, not Windows); a size Azure does not list is left out
    t4 = round((RETAIL_RATE["cpu"] * 4 + RETAIL_RATE["gpu"]) * RETAIL_RATE["spot"], 4)
    assert found == {"Standard_NC4as_T4_v3": t4, "Standard_D4s_v5": round(RETAIL_RATE["cpu"] * 4 * RETAIL_RATE["spot"], 4)}
    q = pricing.quote(cfg, "gpu.spot", live={m: pricing.LivePrice(v, 100.0) for m, v in found.items()}, now=160.0)
    assert (q.per_hour, q.source) == (t4, "live: the cloud's spot price, 1 min ago")
    with pytest.raises(TransientError):  # unreachable: said as a transient error (the catalog serves meanwhile)
        make(arm, tmp_path, prices_endpoint="https://127.0.0.1:9")[0].spot_prices(["Standard_D4s_v5"])


def test_equivalent_vm_sizes_create_the_cheapest_with_capacity(arm, tmp_path):
    """vmSize as a list (as AWS's InstanceType list): the node type has what every size has, is priced as
    the cheapest, and a VM is created of the cheapest size with capacity; a size out of capacity is tried
    last for a while."""
    from autoscaler.pricing import catalog_price
    from providers.azure import config_problems

    provider, _ = make(arm, tmp_path)
    nt = provider.spec.config.available_node_types["gpu.spot"]
    nt.node_config["azure_arm_parameters"]["vmSize"] = ["Standard_NC8as_T4_v3", "Standard_NC4as_T4_v3"]
    assert provider.node_types()["gpu.spot"] == {"CPU": 4.0, "memory": 28 * 2**30, "GPU": 1.0, "accelerator_type:T4": 1.0}
    assert catalog_price("azure", nt.node_config) == catalog_price(
        "azure", {"azure_arm_parameters": {"vmSize": "Standard_NC4as_T4_v3"}})  # the cheaper one's
    (first,) = provider.create("gpu.spot", 1, tags("gpu.spot"))
    size = {v["name"]: v["properties"]["hardwareProfile"]["vmSize"] for v in arm.of_type("virtualMachines")}
    assert size[first.id] == "Standard_NC4as_T4_v3" and first.machine == "Standard_NC4as_T4_v3"
    arm.sku_not_available.add("Standard_NC4as_T4_v3")  # out: the next size
    (second,) = provider.create("gpu.spot", 1, tags("gpu.spot"))
    arm.sku_not_available.clear()  # back, but tried last for a while
    (third,) = provider.create("gpu.spot", 1, tags("gpu.spot"))
    size = {v["name"]: v["properties"]["hardwareProfile"]["vmSize"] for v in arm.of_type("virtualMachines")}
    assert size[second.id] == size[third.id] == "Standard_NC8as_T4_v3"
    provider.terminate([first.id, second.id, third.id])
    assert leftovers(arm) == []

    bad = parse_config(config(arm))
    bad.available_node_types["gpu.spot"].node_config["azure_arm_parameters"]["vmSize"] = []
    assert config_problems(bad) == ["available_node_types.gpu.spot.node_config.azure_arm_parameters.vmSize: "
                                    "equivalent VM sizes are a list of one or more VM size names"]
