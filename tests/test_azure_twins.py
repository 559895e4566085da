"""A whole Azure cluster on the fake ARM endpoint whose VMs are VM twins: `up` from the laptop makes the
head (in zone 2: zone 1 has no capacity), the autoscaler on the head creates GPU (spot) and CPU VMs
through ARM with its own credential and sets them up over SSH from the head, an evicted spot VM is
drained and its task runs again on a replacement, idle workers go, and `down` leaves no VM, NIC, disk
or public IP; `down --purge` removes the resource group launch made. The laptop reaches the head on
port 22 only."""

from __future__ import annotations

import pytest

pytest.importorskip("azure.mgmt.compute")

import runtime  # noqa: E402
from conftest import ARM_LOCATION, ARM_SUBSCRIPTION  # noqa: E402
from tests.infra import cli, wait_for  # noqa: E402
from tests.infra.cloud_work import busy_gpu_node, cloud_cluster, gpu_and_cpu_tasks  # noqa: E402

CLUSTER = "az-twins"
IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204", "imageSku": "2204-gen2",
         "imageVersion": "latest"}


@pytest.fixture
def cluster(arm_twins, twin_net, ssh_lab):
    arm_twins.reset()
    provider = {"type": "azure", "location": ARM_LOCATION, "resource_group": "launch-twins",
                "subscription_id": ARM_SUBSCRIPTION, "availability_zone": "1,2", "api_endpoint": arm_twins.url,
                "ca_bundle": str(arm_twins.cert), "access_token": "test-token"}
    node_types = {
        "head": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D2s_v5", **IMAGE}},
                 "resources": {"CPU": 0}},
        "cpu": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D4s_v5", **IMAGE}}, "max_workers": 2},
        "gpu-spot": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_NC4as_T4_v3", "priority": "Spot",
                                                              **IMAGE}},
                     "cost_per_hour": 0.2, "max_workers": 2},
    }
    with cloud_cluster(twin_net, ssh_lab, CLUSTER, provider, node_types, down_args=("--purge",)) as (path, home):
        yield path, home, arm_twins


def _vms(arm) -> dict[str, dict]:
    return {v["name"]: v for v in arm.of_type("virtualMachines")}


def test_head_autoscales_through_arm_over_ssh_from_the_head(cluster):
    path, home, arm = cluster
    arm.allocation_failure_zones.add("1")  # every VM fails over to zone 2
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = _vms(arm).values()
    assert head["zones"] == ["2"] and head["tags"]["launch-kind"] == "head"
    assert list(head["identity"]["userAssignedIdentities"])[0].endswith("/launch-az-twins-head")
    (nsg,) = arm.of_type("networkSecurityGroups")
    assert [r["properties"]["destinationPortRange"] for r in nsg["properties"]["securityRules"]] == ["22"]

    runtime.init(cluster=CLUSTER)  # through an SSH tunnel: the head's port is closed to the laptop

    infer, crunch = gpu_and_cpu_tasks()

    (gpu_host, cuda), cpu_host = runtime.get([infer.remote(0.1), crunch.remote()], timeout=240)
    vms = _vms(arm)
    assert vms[gpu_host]["properties"]["priority"] == "Spot" and cuda == "0" and cpu_host in vms
    assert all(v["zones"] == ["2"] for v in vms.values())
    head_twin = arm.twin(head["name"])
    logs = head_twin.root / ".launch-runtime" / "cluster" / "logs"
    assert (logs / f"{gpu_host}.log").exists()  # set up by the head, which logged it

    # Azure evicts the spot VM while a task runs on it (eviction policy Delete): drained, rerun elsewhere
    ref = infer.remote(6.0)
    busy = busy_gpu_node(path, home)
    arm.evict(busy, delete=True)
    rerun_on, _ = runtime.get(ref, timeout=240)
    assert rerun_on != busy and rerun_on in _vms(arm)
    events = (head_twin.node_dir / "logs" / "autoscaler.log").read_text()
    assert '"event": "instance-gone"' in events

    wait_for(lambda: list(_vms(arm)) == [head["name"]], timeout=120, what="scale-down to the head")
    runtime.shutdown()
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    left = {t: arm.of_type(t) for t in ("virtualMachines", "networkInterfaces", "publicIPAddresses", "disks")}
    assert left == {t: [] for t in left}
    assert arm.of_type("resourceGroups")  # kept without --purge
    r = cli("down", str(path), "--yes", "--purge", home=home, timeout=180)
    assert r.returncode == 0 and "resource group launch-twins deleted" in r.stdout + r.stderr, r.stdout + r.stderr
    assert arm.resources == {}
