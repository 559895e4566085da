"""A whole GCP cluster on the fake Compute Engine endpoint whose instances are VM twins: `up` from the
laptop makes the head (in the second zone: the first is stocked out), the autoscaler on the head calls
the API over the bridge for GPU and CPU work and sets the nodes up over SSH from the head, a preempted
spot VM is drained and its task runs again on a replacement, idle workers go, and `down` leaves no
instance, disk or firewall rule. The laptop reaches the head on port 22 only."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("google.cloud.compute_v1")

import runtime  # noqa: E402
from conftest import GCE_PROJECT, GCE_REGION  # noqa: E402
from tests.infra import cli, wait_for, write_config  # noqa: E402

CLUSTER = "gcp-twins"
DISK = {"boot": True, "autoDelete": True, "initializeParams": {
    "diskSizeGb": 50, "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}}


@pytest.fixture
def cluster(gce_twins, twin_net, ssh_lab):
    gce_twins.reset()
    laptop, key = twin_net.laptop_for(CLUSTER, ssh_lab.client_key)
    data = {
        "cluster_name": CLUSTER,
        "max_workers": 3,
        "idle_timeout_minutes": 0.1,
        "provider": {"type": "gcp", "project_id": GCE_PROJECT, "region": GCE_REGION,
                     "availability_zone": ["us-west1-a", "us-west1-b"], "api_endpoint": gce_twins.url,
                     "gcp_credentials": {"type": "credentials_token", "credentials": "test-token"},
                     "use_internal_ips": True, "ssh_wait_s": 60, "retry_attempts": 3},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key), "ssh_public_key": f"{key}.pub"},
        "autoscaler": {"tick_s": 0.5},
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
        "available_node_types": {
            "head": {"node_config": {"machineType": "n1-standard-2", "disks": [DISK]}, "resources": {"CPU": 0}},
            "cpu": {"node_config": {"machineType": "e2-standard-4", "disks": [DISK]}, "max_workers": 2},
            "gpu-spot": {"node_config": {"machineType": "n1-standard-4", "disks": [DISK], "guestAccelerators": [
                {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]},
                "spot": True, "cost_per_hour": 0.2, "max_workers": 2},
        },
        "head_node_type": "head",
    }
    path = write_config(laptop / "gcp.yaml", data)
    home = laptop / "home"
    old_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)  # for runtime.init() in this process
    yield path, home, gce_twins
    runtime.shutdown()
    cli("down", str(path), "--yes", home=home, timeout=180)
    if old_home is None:
        os.environ.pop("LAUNCH_HOME", None)
    else:
        os.environ["LAUNCH_HOME"] = old_home


def _status(path, home) -> dict:
    r = cli("status", str(path), "--json", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _ours(gce) -> list[dict]:
    return gce.live({"launch-cluster": CLUSTER})


def test_head_autoscales_through_the_compute_api_over_ssh_from_the_head(cluster):
    path, home, gce = cluster
    gce.stockout_zones.add("us-west1-a")  # every create fails over to the second zone
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = _ours(gce)
    assert head["zone"].endswith("/us-west1-b") and head["labels"]["launch-kind"] == "head"
    assert head["serviceAccounts"] == [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
    rules = {name: fw for name, fw in gce.firewalls.items()}
    assert [fw["allowed"] for fw in rules.values() if fw.get("sourceRanges")] == [[{"IPProtocol": "tcp", "ports": ["22"]}]]

    runtime.init(cluster=CLUSTER)  # through an SSH tunnel: the head's port is closed to the laptop

    @runtime.remote(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1}, max_retries=2)
    def infer(sleep_s):
        import os
        import socket
        import time as t
        t.sleep(sleep_s)
        return socket.gethostname(), os.environ["CUDA_VISIBLE_DEVICES"]

    @runtime.remote(num_cpus=4)
    def crunch():
        import socket
        return socket.gethostname()

    # GPU and CPU work: the head's autoscaler inserts a spot n1 with a T4 and an e2-standard-4 through
    # the API and sets them up over SSH from the head; each twin's hostname is its instance name
    (gpu_host, cuda), cpu_host = runtime.get([infer.remote(0.1), crunch.remote()], timeout=240)
    by_name = {i["name"]: i for i in _ours(gce)}
    assert by_name[gpu_host]["scheduling"]["provisioningModel"] == "SPOT" and cuda == "0"
    assert by_name[gpu_host]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert cpu_host in by_name and all(i["zone"].endswith("/us-west1-b") for i in by_name.values())
    head_twin = gce.twin(head["name"])
    logs = head_twin.root / ".launch-runtime" / "cluster" / "logs"
    assert (logs / f"{gpu_host}.log").exists()  # set up by the head, which logged it

    # GCE takes the spot VM back while a task runs on it: the head drains it, the task runs again on
    # a replacement the head makes
    ref = infer.remote(6.0)
    busy = wait_for(lambda: [n["id"] for n in _status(path, home)["nodes"]
                             if n["resources_total"].get("GPU") and n["resources_available"].get("GPU") == 0],
                    timeout=120, what="the task running")[0]
    ip_of = lambda name: [i for i in gce.live() if i["name"] == name][0]["networkInterfaces"][0]["networkIP"]  # noqa: E731
    worker_ips = {ip_of(i["name"]) for i in _ours(gce) if i["name"] != head["name"]}
    gce.preempt(busy)
    rerun_on, _ = runtime.get(ref, timeout=240)
    assert rerun_on != busy and rerun_on in {i["name"] for i in _ours(gce)}
    # GCE reuses internal IPs (the fake gives the last freed first): the replacement, a new machine with a
    # new host key at a former worker's address, is trusted as the new instance it is (keys pinned per
    # instance, not per address)
    assert ip_of(rerun_on) in worker_ips
    events = (head_twin.root / ".launch-runtime" / "logs" / "autoscaler.log").read_text()
    assert '"event": "instance-gone"' in events

    # idle past the timeout: back to the head alone, the workers' twins gone
    wait_for(lambda: [i["name"] for i in _ours(gce)] == [head["name"]], timeout=120, what="scale-down to the head")
    runtime.shutdown()
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert gce.live() == [] and gce.all_disks() == [] and gce.firewalls == {}
    assert not any(name.startswith(CLUSTER) for name in gce.net.twins)
