"""A whole AWS cluster through the CLI against moto: up, autoscaling a GPU type from zero and back, a
spot interruption, down. SSH cannot reach a moto instance, so node commands run on this machine
(provider.local_runner): every EC2 call is real boto3 against moto, in the CLI and in the autoscaler
on the head alike."""

from __future__ import annotations

import json

import pytest

import runtime
from moto_tests.conftest import REGION
from tests.infra import cli, processes_with_env, wait_for, write_config

AMI = "ami-12c6146b"


def live_instances(ec2, cluster: str) -> list[dict]:
    reply = ec2.describe_instances(Filters=[{"Name": "tag:launch-cluster", "Values": [cluster]},
                                            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


@pytest.fixture
def cluster(aws, tmp_path):
    data = {
        "cluster_name": "awse2e",
        "max_workers": 3,
        "idle_timeout_minutes": 0.05,
        "provider": {"type": "aws", "region": REGION, "availability_zone": "us-west-2a", "local_runner": True,
                     "retry_attempts": 3},
        "auth": {"ssh_user": "ubuntu"},
        "autoscaler": {"tick_s": 0.3},
        "runtime": {"heartbeat_interval_s": 0.2, "node_timeout_s": 2},
        "available_node_types": {
            "head": {"node_config": {"InstanceType": "m5.large", "ImageId": AMI}, "resources": {"CPU": 0}},
            "cpu": {"node_config": {"InstanceType": "m5.xlarge", "ImageId": AMI}, "max_workers": 2},
            "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "spot": True,
                         "cost_per_hour": 0.2, "max_workers": 2},
        },
        "head_node_type": "head",
    }
    path = write_config(tmp_path / "aws.yaml", data)
    home = tmp_path / "home"
    yield path, home, aws
    runtime.shutdown()
    cli("down", str(path), "--yes", home=home)


def test_up_autoscale_gpu_from_zero_and_back_spot_interruption_and_down(cluster):
    path, home, ec2 = cluster
    r = cli("up", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = live_instances(ec2, "awse2e")
    tags = {t["Key"]: t["Value"] for t in head["Tags"]}
    assert tags["launch-kind"] == "head" and tags["launch-status"] == "up-to-date"
    assert head["IamInstanceProfile"]["Arn"].endswith("launch-head-awse2e")

    cdir = home / "clusters" / "awse2e"
    info = json.loads((cdir / "cluster.json").read_text())
    runtime.init(address=info["head_address"], token=(cdir / "token").read_text().strip())

    @runtime.remote(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1}, max_retries=2)
    def infer(sleep_s):
        import os
        import time as t
        t.sleep(sleep_s)
        return os.environ["LAUNCH_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"]

    # a GPU type from zero: the autoscaler launches a g4dn through EC2, its resources from the instance type
    node_id, cuda = runtime.get(infer.remote(0.1), timeout=120)
    gpu_nodes = [i for i in live_instances(ec2, "awse2e") if i["InstanceId"] == node_id]
    assert gpu_nodes and gpu_nodes[0]["InstanceType"] == "g4dn.xlarge" and cuda == "0"
    assert gpu_nodes[0].get("InstanceLifecycle") == "spot"

    # a spot interruption while a task runs: the instance goes, its work is requeued on a replacement
    ref = infer.remote(8.0)
    wait_for(lambda: any(n["runtime"] == "alive" and n["resources_total"].get("GPU")
                      and n["resources_available"].get("GPU") == 0
                      for n in json.loads(cli("status", str(path), "--json", home=home).stdout)["nodes"]),
          what="the task running")
    busy = [n["id"] for n in json.loads(cli("status", str(path), "--json", home=home).stdout)["nodes"]
            if n["resources_total"].get("GPU") and n["resources_available"].get("GPU") == 0][0]
    ec2.terminate_instances(InstanceIds=[busy])  # AWS takes the spot instance back...
    from providers.local import kill_node_processes
    kill_node_processes(busy)  # ...and everything on it stops
    rerun_on, _ = runtime.get(ref, timeout=120)  # the interrupted task itself ran again, elsewhere
    assert rerun_on != busy
    assert rerun_on in {i["InstanceId"] for i in live_instances(ec2, "awse2e")}

    # idle past the timeout: back to zero workers, terminated in EC2
    wait_for(lambda: [i["InstanceId"] for i in live_instances(ec2, "awse2e")] == [head["InstanceId"]],
          what="scale-down to the head only")
    st = json.loads(cli("status", str(path), "--json", home=home).stdout)
    events = (cdir / "aws-local" / head["InstanceId"] / ".launch-runtime" / "logs" / "autoscaler.log").read_text()
    assert '"event": "launch"' in events and '"event": "terminate"' in events
    assert st["autoscaler"]["pending_demand"] == []

    r = cli("down", str(path), "--yes", home=home)
    assert r.returncode == 0, r.stderr
    assert live_instances(ec2, "awse2e") == []
    assert processes_with_env(f"LAUNCH_LOCAL_NODE={head['InstanceId']}\0") == []
