"""A whole GCP cluster on the fake Compute Engine endpoint whose instances are VM twins: `up` from the
laptop makes the head (in the second zone: the first is stocked out), the autoscaler on the head calls
the API over the bridge for GPU and CPU work and sets the nodes up over SSH from the head, a preempted
spot VM is drained and its task runs again on a replacement, idle workers go, and `down` leaves no
instance, disk or firewall rule. The laptop reaches the head on port 22 only.

No credential is in the config: the laptop's are a service account key its environment names
(GOOGLE_APPLICATION_CREDENTIALS), the head's its instance's service account (the metadata server)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("google.cloud.compute_v1")

import runtime  # noqa: E402
from conftest import GCE_PROJECT, GCE_REGION  # noqa: E402
from tests.infra import cli, cluster_status, wait_for  # noqa: E402
from tests.infra.cloud_work import busy_gpu_node, checkpointed_work, cloud_cluster, gpu_and_cpu_tasks  # noqa: E402

CLUSTER = "gcp-twins"
DISK = {"boot": True, "autoDelete": True, "initializeParams": {
    "diskSizeGb": 50, "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"}}


@pytest.fixture
def cluster(gce_twins, twin_net, ssh_lab, monkeypatch):
    gce_twins.reset()
    provider = {"type": "gcp", "project_id": GCE_PROJECT, "region": GCE_REGION,
                "availability_zone": ["us-west1-a", "us-west1-b"], "api_endpoint": gce_twins.url, "retry_attempts": 3}
    node_types = {
        "head": {"node_config": {"machineType": "n1-standard-2", "disks": [DISK]}, "resources": {"CPU": 0}},
        "cpu": {"node_config": {"machineType": "e2-standard-4", "disks": [DISK]}, "max_workers": 2},
        "gpu-spot": {"node_config": {"machineType": "n1-standard-4", "disks": [DISK], "guestAccelerators": [
            {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]},
            "spot": True, "cost_per_hour": 0.2, "max_workers": 2},
    }
    with cloud_cluster(twin_net, ssh_lab, CLUSTER, provider, node_types) as (path, home):
        key = path.parent / "laptop-sa.json"  # `gcloud iam service-accounts keys create`: the user's own
        key.write_text(json.dumps(gce_twins.service_account_key()))
        key.chmod(0o600)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        yield path, home, gce_twins


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
    # no credential of the user's went to the head: its autoscaler calls GCE as the instance's account
    held = gce.twin(head["name"]).root / ".launch-runtime" / "cluster" / "spec.json"
    assert "gcp_credentials" not in json.loads(held.read_text())["config"]["provider"]
    assert "PRIVATE KEY" not in held.read_text()
    # the instance's role lacks a permission for a while: the autoscaler says which, in its log and as one
    # line of `launch status`, retries with backoff, and goes on once the role has it
    gce.denied.add(("compute.instances.list", f"instance-token-{head['name']}"))
    wait_for(lambda: cluster_status(path, home)["autoscaler"].get("denied"), timeout=30, what="the refusal said")
    shown = cli("status", str(path), home=home, timeout=60).stdout
    assert "denied: the head's cloud identity lacks compute.instances.list (the autoscaler's tick)" in shown
    gce.denied.clear()
    wait_for(lambda: not cluster_status(path, home)["autoscaler"].get("denied"), timeout=60, what="the tick again")
    events = [json.loads(line) for line in (gce.twin(head["name"]).node_dir / "logs" / "autoscaler.log").open()]
    (refused,) = [e for e in events if e["event"] == "permission-denied"]
    assert refused["permission"] == "compute.instances.list"
    assert [e["event"] for e in events if e["event"].startswith("permission-")][-1] == "permission-granted"
    rules = {name: fw for name, fw in gce.firewalls.items()}
    assert [fw["allowed"] for fw in rules.values() if fw.get("sourceRanges")] == [[{"IPProtocol": "tcp", "ports": ["22"]}]]

    runtime.init(cluster=CLUSTER)  # through an SSH tunnel: the head's port is closed to the laptop

    infer, crunch = gpu_and_cpu_tasks()

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

    # the head's own calls carried its instance's token, from the metadata server
    assert gce.bearers[f"instance-token-{head['name']}"] > 0
    asked = gce.metadata[head["name"]].asked()
    assert any(p.startswith("/computeMetadata/v1/instance/service-accounts/") and "/token" in p for p in asked)

    # GCE preempts the spot VM while a long task runs on it. Its metadata says so first (about 30 s
    # ahead): the node's agent reads it, the head drains the node and counts the task as demand, and a
    # replacement registers while the node still runs; the task's hook saves its progress. Then the VM
    # goes, and the task resumes on the replacement from where it was.
    store, work = checkpointed_work(steps=300, step_s=0.1)
    ref = work.remote(store, "train")
    busy = busy_gpu_node(path, home)
    ip_of = lambda name: [i for i in gce.live() if i["name"] == name][0]["networkInterfaces"][0]["networkIP"]  # noqa: E731
    worker_ips = {ip_of(i["name"]) for i in _ours(gce) if i["name"] != head["name"]}
    gce.notice(busy)

    def replacement_registered() -> bool:
        nodes = cluster_status(path, home)["nodes"]
        return any(n["id"] != busy and n["resources_total"].get("GPU") for n in nodes if n.get("runtime") == "alive")

    wait_for(replacement_registered, timeout=120, what="a replacement registered, the preempted node still up")
    (going,) = [n for n in cluster_status(path, home)["nodes"] if n["id"] == busy]
    assert going["preempting"]["reason"] == "spot VM preempted by GCE"
    gce.preempt(busy)  # the deadline
    rerun_on, resumed_at, _ = runtime.get(ref, timeout=240)
    assert rerun_on != busy and rerun_on in {i["name"] for i in _ours(gce)} and resumed_at > 0
    events = (head_twin.node_dir / "logs" / "autoscaler.log").read_text()
    assert '"event": "preempt-notice"' in events

    # idle past the timeout: back to the head alone, the workers' twins gone
    worker_ips |= {ip_of(i["name"]) for i in _ours(gce) if i["name"] != head["name"]}
    wait_for(lambda: [i["name"] for i in _ours(gce)] == [head["name"]], timeout=120, what="scale-down to the head")
    # GCE reuses internal IPs (the fake gives the last freed first): a new node, a new machine with a new
    # host key at a former worker's address, is trusted as the new instance it is (keys pinned per
    # instance, not per address)
    again, _ = runtime.get(infer.remote(0.1), timeout=240)
    assert ip_of(again) in worker_ips
    runtime.shutdown()
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert gce.live() == [] and gce.all_disks() == [] and gce.firewalls == {}
    assert not any(name.startswith(CLUSTER) for name in gce.net.twins)
