"""Ray's AWS `example-full.yaml` in its own shape, docker section included, on moto whose instances are VM
twins with a Docker daemon each (tests/infra/containers.py): the image is pulled from the registry on
the twins' bridge, the head and its worker run in containers (the head's autoscaler in its container
makes and sets up the worker through EC2 and SSH), a job and its tasks run inside the containers on the
image's Python, Ray's start commands run there too, and `down` leaves no instance, container or process."""

from __future__ import annotations

import json
import os

import pytest

import runtime
from tests.infra import cli, job_result, wait_for, write_config

CLUSTER = "aws-docker"
DOCKER_AMI = "ami-0d0c0e0d0c0e0d0c0"  # instances of it are twins with a Docker daemon

# Ray's start commands run as they are: `ray` is what the user's setup installs (here, a stand-in
# that records how it was called)
RAY_SHIM = ("printf '#!/bin/sh\\necho \"$@\" >> ~/ray-calls.txt\\n' > /usr/local/bin/ray && "
            "chmod +x /usr/local/bin/ray")

JOB = '''
import json, os, socket, sys
import runtime

runtime.init()


def where():
    return {"host": socket.gethostname(), "python": "%d.%d" % sys.version_info[:2],
            "in_container": os.path.exists("/.dockerenv"), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


task = runtime.remote(num_cpus=1, num_gpus=1)(where).remote()
print("RESULT " + json.dumps({"job": where(), "task": runtime.get(task, timeout=300)}))
'''


def live(ec2) -> list[dict]:
    reply = ec2.describe_instances(Filters=[{"Name": "tag:launch-cluster", "Values": [CLUSTER]},
                                            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


@pytest.fixture
def example_full(moto_twins, twin_net, ssh_lab, container_images):
    moto_twins.reset()
    moto_twins.docker_amis.add(DOCKER_AMI)
    laptop, key = twin_net.laptop_for(CLUSTER, ssh_lab.client_key)
    node_config = {"InstanceType": "m5.large", "ImageId": DOCKER_AMI,
                   "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 140, "VolumeType": "gp3"}}]}
    data = {  # Ray's aws/example-full.yaml, with this bridge's image and registry, and twins' settings
        "cluster_name": CLUSTER,
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "docker": {"image": container_images["py313"], "container_name": "ray_container", "pull_before_run": True,
                   "run_options": ["--ulimit nofile=4096:8192"]},
        "idle_timeout_minutes": 5,
        "provider": {**moto_twins.provider(), "cache_stopped_nodes": True, "use_internal_ips": True, "ssh_wait_s": 60},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key), "ssh_public_key": f"{key}.pub"},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": node_config},
            "ray.worker.default": {"min_workers": 1, "max_workers": 2, "resources": {"CPU": 2, "GPU": 1},
                                   "node_config": {**node_config, "InstanceMarketOptions": {"MarketType": "spot"}}},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": ["**/.git", "**/.git/**"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [],
        "setup_commands": [RAY_SHIM],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": ["ray stop", "ulimit -n 4096; ray start --head --port=6379 --object-manager-port=8076 "
                                    "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076"],
        "autoscaler": {"tick_s": 0.5},
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
    }
    path = write_config(laptop / "example-full.yaml", data)
    home = laptop / "home"
    old_home = os.environ.get("LAUNCH_HOME")
    os.environ["LAUNCH_HOME"] = str(home)
    try:
        yield path, home, laptop
    finally:
        runtime.shutdown()
        cli("down", str(path), "--yes", home=home, timeout=180)
        moto_twins.docker_amis.discard(DOCKER_AMI)
        os.environ.pop("LAUNCH_HOME") if old_home is None else os.environ.__setitem__("LAUNCH_HOME", old_home)


def test_rays_example_full_runs_head_and_workers_in_containers(example_full, moto_twins):
    path, home, laptop = example_full
    ec2 = moto_twins.ec2
    r = cli("up", str(path), "--yes", home=home, timeout=480)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = [i for i in live(ec2) if {"Key": "launch-kind", "Value": "head"} in i["Tags"]]
    head_twin = moto_twins.twin(head["InstanceId"])
    box = json.loads(head_twin.inside("docker", "inspect", "ray_container").stdout)[0]
    assert box["State"]["Running"] and box["HostConfig"]["NetworkMode"] == "host"

    # the worker (min_workers: 1) in a container of its own
    worker = wait_for(lambda: [i for i in live(ec2) if i["InstanceId"] != head["InstanceId"]], timeout=240,
                      what="the worker instance")[0]
    wait_for(lambda: [n["runtime"] for n in json.loads(cli("status", str(path), "--json", home=home).stdout)["nodes"]]
             == ["alive", "alive"], timeout=300, what="the worker's runtime registered")
    worker_twin = moto_twins.twin(worker["InstanceId"])
    assert json.loads(worker_twin.inside("docker", "inspect", "ray_container").stdout)[0]["State"]["Running"]

    # a job (on the head) and its GPU task (on the worker) run in the containers, on the image's Python
    seen = job_result(path, JOB, home, timeout=300)
    assert seen["job"]["host"] in (head["InstanceId"], worker["InstanceId"]) and seen["task"]["host"] == worker["InstanceId"]
    assert all(x["python"] == "3.13" and x["in_container"] for x in seen.values()), seen
    assert seen["task"]["gpus"] == "0"  # exactly the GPU the runtime gave it

    # Ray's start commands ran in the containers, with the head's address
    calls = cli("exec", str(path), "cat ~/ray-calls.txt", home=home).stdout
    assert "start --head --port=6379" in calls
    r = cli("exec", str(path), "cat ~/ray-calls.txt", "--node", worker["InstanceId"], home=home)
    assert f"start --address={head['PrivateIpAddress']}:6379" in r.stdout, r.stdout + r.stderr

    # down: no instance; the twins (and every process and container in them) go with their instances
    r = cli("down", str(path), "--yes", home=home, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert live(ec2) == []
    wait_for(lambda: moto_twins.twin(head["InstanceId"]) is None and moto_twins.twin(worker["InstanceId"]) is None,
             timeout=30, what="the instances' twins gone")
