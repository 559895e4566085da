"""A whole Azure cluster on the fake ARM endpoint whose VMs are VM twins: `up` from the laptop makes the
head (in zone 2: zone 1 has no capacity), the autoscaler on the head creates GPU (spot) and CPU VMs
through ARM with its own credential and sets them up over SSH from the head, an evicted spot VM is
drained and its task runs again on a replacement, idle workers go, and `down` leaves no VM, NIC, disk
or public IP; `down --purge` removes the resource group launch made. The laptop reaches the head on
port 22 only.

No credential is in the config: the laptop's is its `az login` (the Azure CLI), the head's its VM's
managed identity (IMDS)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("azure.mgmt.compute")

import runtime  # noqa: E402
from conftest import ARM_LOCATION, ARM_SUBSCRIPTION  # noqa: E402
from tests.infra import cli, cluster_status, wait_for  # noqa: E402
from tests.infra.cloud_work import busy_gpu_node, checkpointed_work, cloud_cluster, gpu_and_cpu_tasks  # noqa: E402

CLUSTER = "az-twins"
IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204", "imageSku": "2204-gen2",
         "imageVersion": "latest"}


@pytest.fixture
def cluster(arm_twins, twin_net, ssh_lab, monkeypatch):
    arm_twins.reset()
    provider = {"type": "azure", "location": ARM_LOCATION, "resource_group": "launch-twins",
                "subscription_id": ARM_SUBSCRIPTION, "availability_zone": "1,2", "api_endpoint": arm_twins.url,
                "ca_bundle": str(arm_twins.cert)}
    node_types = {
        "head": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D2s_v5", **IMAGE}},
                 "resources": {"CPU": 0}},
        "cpu": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_D4s_v5", **IMAGE}}, "max_workers": 2},
        "gpu-spot": {"node_config": {"azure_arm_parameters": {"vmSize": "Standard_NC4as_T4_v3", "priority": "Spot",
                                                              **IMAGE}},
                     "cost_per_hour": 0.2, "max_workers": 2},
    }
    with cloud_cluster(twin_net, ssh_lab, CLUSTER, provider, node_types, down_args=("--purge",)) as (path, home):
        bin_dir = path.parent / "bin"
        bin_dir.mkdir(exist_ok=True)
        arm_twins.cli_login(bin_dir)  # the user ran `az login`
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        # as Microsoft advises for a developer's machine: its CLI login, never this machine's own IMDS
        monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
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
    assert arm.bearers["laptop-cli-token"] > 0  # the laptop called ARM with its CLI login
    held = arm.twin(head["name"]).root / ".launch-runtime" / "cluster" / "spec.json"
    assert "access_token" not in json.loads(held.read_text())["config"]["provider"]
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

    # the head's own calls carried its managed identity's token, from IMDS
    identity = [r for r in arm.of_type("userAssignedIdentities") if r["name"] == f"launch-{CLUSTER}-head"][0]
    assert arm.bearers[f"mi-token-{identity['properties']['clientId']}"] > 0

    # Azure schedules the spot VM's eviction while a long task runs on it (Scheduled Events, ~30 s
    # ahead): the head drains the node and launches a replacement; the task's hook saves its progress
    # and exits, so nothing runs on the node any more and its agent acknowledges the event (Azure may
    # take it now, rather than at the deadline); the task costs none of its retries (it has none) and
    # resumes on the replacement from where it was.
    store, work = checkpointed_work(steps=300, step_s=0.1, exit_when_saved=True)
    ref = work.remote(store, "train")
    busy = busy_gpu_node(path, home)
    event = arm.notice(busy)
    wait_for(lambda: any(json.loads(body or "{}") == {"StartRequests": [{"EventId": event}]}
                         for _, body in arm.metadata[busy].posted()),
             timeout=60, what="the node to acknowledge the eviction once nothing ran on it")
    (going,) = [n for n in cluster_status(path, home)["nodes"] if n["id"] == busy]
    assert going["preempting"]["reason"].startswith("spot VM evicted by Azure (Preempt")
    arm.evict(busy, delete=True)  # taken early, as acknowledged
    rerun_on, resumed_at, _ = runtime.get(ref, timeout=240)
    assert rerun_on != busy and rerun_on in _vms(arm) and resumed_at > 0
    events = (head_twin.node_dir / "logs" / "autoscaler.log").read_text()
    assert '"event": "preempt-notice"' in events

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
