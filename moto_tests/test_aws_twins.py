"""A whole AWS cluster on moto whose instances are VM twins: `up` from the laptop makes the head, the
autoscaler on the head creates GPU and CPU instances through the EC2 API and sets them up over SSH from
the head, a spot interruption is drained and replaced, idle workers are stopped (on-demand) or
terminated (spot) and a stopped one is started again for new work, `down` leaves no instance. The laptop reaches the head on port 22 only, and its state is invisible to the twins."""

from __future__ import annotations

import json
import os
import time

import pytest

import runtime
from tests.infra import cli, cluster_status, wait_for
from tests.infra.cloud_work import autoscaler_story, busy_gpu_node, checkpointed_work, cloud_cluster, gpu_and_cpu_tasks
from tests.infra.moto_twins import LAPTOP_ENV

CLUSTER = "aws-twins"
AMI = "ami-12c6146b"


def live_instances(ec2) -> list[dict]:
    reply = ec2.describe_instances(Filters=[{"Name": "tag:launch-cluster", "Values": [CLUSTER]},
                                            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


@pytest.fixture
def cluster(moto_twins, twin_net, ssh_lab):
    moto_twins.reset()
    node_types = {
        "head": {"node_config": {"InstanceType": "m5.large", "ImageId": AMI}, "resources": {"CPU": 0}},
        "cpu": {"node_config": {"InstanceType": "m5.xlarge", "ImageId": AMI}, "max_workers": 2},
        "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "spot": True,
                     "cost_per_hour": 0.2, "max_workers": 2},
    }
    # the user's key is imported as the cluster's key pair: the twins accept it. No AWS key in the config:
    # the laptop's are its environment's, the head's its instance profile's (the twin's metadata service)
    saved = {k: os.environ.get(k) for k in LAPTOP_ENV}
    os.environ.update(LAPTOP_ENV)
    try:
        with cloud_cluster(twin_net, ssh_lab, CLUSTER, moto_twins.provider(keys=False, retry_attempts=3),
                           node_types) as (path, home):
            yield path, home, moto_twins
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _state(ec2, instance_id: str) -> str:
    (inst,) = [i for r in ec2.describe_instances(InstanceIds=[instance_id])["Reservations"] for i in r["Instances"]]
    return inst["State"]["Name"]




def test_head_autoscales_through_ec2_over_ssh_from_the_head(cluster):
    path, home, cloud = cluster
    ec2 = cloud.ec2
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = live_instances(ec2)
    tags = {t["Key"]: t["Value"] for t in head["Tags"]}
    assert tags["launch-kind"] == "head" and tags["launch-status"] == "up-to-date"
    assert head["IamInstanceProfile"]["Arn"].endswith(f"launch-head-{CLUSTER}")
    # no key of the user's went to the head: its autoscaler calls EC2 as its instance profile
    held = cloud.twin(head["InstanceId"]).root / ".launch-runtime" / "cluster" / "spec.json"
    assert json.loads(held.read_text())["config"]["provider"]["aws_credentials"] == {"endpoint_url": cloud.url}
    assert LAPTOP_ENV["AWS_SECRET_ACCESS_KEY"] not in held.read_text()
    role = head["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
    assert f"/latest/meta-data/iam/security-credentials/{role}" in cloud.metadata[head["InstanceId"]].asked()
    # the security group lets SSH in, and nothing else from outside the cluster
    (sg,) = ec2.describe_security_groups(GroupIds=[head["SecurityGroups"][0]["GroupId"]])["SecurityGroups"]
    assert [(p.get("FromPort"), p.get("ToPort")) for p in sg["IpPermissions"] if p.get("IpRanges")] == [(22, 22)]

    runtime.init(cluster=CLUSTER)  # through an SSH tunnel: the head's port is closed to the laptop

    infer, crunch = gpu_and_cpu_tasks()

    # GPU and CPU work: the head's autoscaler creates a spot g4dn and an m5.xlarge through EC2 and sets
    # them up over SSH from the head; each twin's hostname is its instance id
    gpu_ref, cpu_ref = infer.remote(0.1), crunch.remote()
    (gpu_host, cuda), cpu_host = runtime.get([gpu_ref, cpu_ref], timeout=240)
    types = {i["InstanceId"]: i for i in live_instances(ec2)}
    assert types[gpu_host]["InstanceType"] == "g4dn.xlarge" and types[gpu_host].get("InstanceLifecycle") == "spot"
    assert cuda == "0" and cpu_host in types  # (the GPU node, once free, may take the CPU work too)
    (cpu_node,) = [i for i, inst in types.items() if inst["InstanceType"] == "m5.xlarge"]  # launched for it
    head_twin = cloud.twin(head["InstanceId"])
    logs = head_twin.root / ".launch-runtime" / "cluster" / "logs"
    assert (logs / f"{gpu_host}.log").exists()  # set up by the head, which logged it

    # a spot interruption while a long task runs. EC2's two-minute notice first (the instance's metadata
    # service): the node's agent says it to the head, which drains the node and counts its task as
    # demand, and the replacement registers while the node still runs; the task's preemption hook saves
    # its progress. Then the instance (and its twin) goes at the deadline, and the task resumes on the
    # replacement from where it was, which costs none of its retries (it has none).
    store, work = checkpointed_work(steps=300, step_s=0.1)
    ref = work.remote(store, "train")
    busy = busy_gpu_node(path, home)
    deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    cloud.metadata[busy].set(spot_action={"action": "terminate", "time": deadline})

    def replacement_registered() -> bool:
        return any(n["id"] != busy and n["resources_total"].get("GPU") and n.get("runtime") == "alive"
                   for n in cluster_status(path, home)["nodes"])

    wait_for(replacement_registered, timeout=120, what="a replacement registered, the preempted node still up")
    # `launch status` says it, with the cloud's reason
    (going,) = [n for n in cluster_status(path, home)["nodes"] if n["id"] == busy]
    assert going["preempting"]["reason"] == f"spot terminate at {deadline}" and going["preempting"]["in_s"] > 0
    ec2.terminate_instances(InstanceIds=[busy])
    rerun_on, resumed_at, preempting = runtime.get(ref, timeout=240)
    assert rerun_on != busy and rerun_on in {i["InstanceId"] for i in live_instances(ec2)} and not preempting
    assert resumed_at > 0
    # the autoscaler's log tells the story with times: the notice (the node drained), the replacement's
    # launch, the node gone
    log = head_twin.node_dir / "logs" / "autoscaler.log"
    wait_for(lambda: '"event": "preempted-node-gone"' in log.read_text(), timeout=30, what="the loss logged")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (notice,) = [e for e in events if e["event"] == "preempt-notice"]
    assert notice["node"] == busy and notice["reason"] == f"spot terminate at {deadline}" and notice["drained"]
    launched = [e for e in events if e["event"] == "launch" and e["node_type"] == "gpu-spot" and e["ts"] > notice["ts"]]
    (gone,) = [e for e in events if e["event"] == "preempted-node-gone"]
    assert launched and launched[0]["ts"] < gone["ts"] and gone["node"] == busy

    # idle past the timeout: back to the head alone, their twins gone; the on-demand node is stopped
    # (Ray's cache_stopped_nodes, on by default), the spot ones terminated
    wait_for(lambda: [i["InstanceId"] for i in live_instances(ec2)] == [head["InstanceId"]], timeout=120,
             what="scale-down to the head only")
    wait_for(lambda: _state(ec2, cpu_node) == "stopped", timeout=30, what="the idle cpu node stopped")

    # new CPU work starts the stopped node again, before any new instance: its disk kept the runtime
    ran_on = runtime.get(crunch.remote(), timeout=240)
    assert ran_on == cpu_node, autoscaler_story(head_twin.node_dir)
    assert "already installed" in (logs / f"{cpu_node}.log").read_text().split("=== ")[-1]
    runtime.shutdown()
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert live_instances(ec2) == []
    wait_for(lambda: cloud.instances == {}, timeout=15, what="every twin gone")
