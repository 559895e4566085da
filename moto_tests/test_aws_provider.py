"""The aws provider against moto: bootstrap, tags, heterogeneous nodes, capacity and throttling faults."""

from __future__ import annotations

import copy
import os
import stat

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from launcher.config import parse_config
from launcher.errors import ConfigError
from moto_tests.conftest import REGION
from providers import get_provider
from providers.aws import AWSProvider
from providers.base import CapacityError, TransientError

AMI = "ami-12c6146b"
BASE = {
    "cluster_name": "aws1",
    "max_workers": 6,
    "provider": {"type": "aws", "region": REGION, "availability_zone": "us-west-2a,us-west-2b",
                 "retry_base_s": 0.01},
    "auth": {"ssh_user": "ubuntu"},
    "available_node_types": {
        "head": {"node_config": {"InstanceType": "m5.large", "ImageId": AMI}, "max_workers": 0},
        "cpu": {"node_config": {"InstanceType": "m5.xlarge", "ImageId": AMI}, "max_workers": 4},
        "gpu": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "max_workers": 2},
        "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI}, "max_workers": 2,
                     "spot": True, "cost_per_hour": 0.2},
    },
    "head_node_type": "head",
}


def provider(tmp_path, **overrides) -> AWSProvider:
    data = copy.deepcopy(BASE)
    data.update(overrides)
    cfg = parse_config(data, base_dir=tmp_path)
    p = get_provider(cfg, tmp_path / "cluster")
    (tmp_path / "cluster").mkdir(exist_ok=True)
    p.bootstrap_config(cfg)
    return p


def counts(aws) -> dict:
    iam = boto3.client("iam", region_name=REGION)
    return {
        "keys": len(aws.describe_key_pairs()["KeyPairs"]),
        "groups": len([g for g in aws.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith("launch-")]),
        "roles": len([r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("launch-")]),
        "profiles": len([p for p in iam.list_instance_profiles()["InstanceProfiles"]
                         if p["InstanceProfileName"].startswith("launch-")]),
    }


def test_bootstrap_in_an_empty_account_then_again_reuses_everything(aws, tmp_path):
    p = provider(tmp_path)
    cfg = p.cfg
    key = tmp_path / "cluster" / "launch-aws1.pem"
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in key.read_text()
    assert cfg.auth.ssh_private_key == str(key)
    sg = aws.describe_security_groups(GroupNames=["launch-aws1"])["SecurityGroups"][0]
    ports = {(r.get("FromPort"), r["IpProtocol"]) for r in sg["IpPermissions"]}
    assert (22, "tcp") in ports and (6380, "tcp") in ports
    assert any(pair["GroupId"] == sg["GroupId"] for r in sg["IpPermissions"] for pair in r.get("UserIdGroupPairs", []))
    head_nc = cfg.available_node_types["head"].node_config
    assert head_nc["IamInstanceProfile"] == {"Name": "launch-head-aws1"} and head_nc["KeyName"] == "launch-aws1"
    assert "IamInstanceProfile" not in cfg.available_node_types["cpu"].node_config  # workers get no role
    assert [s["AvailabilityZone"] for s in p.subnets] == ["us-west-2a", "us-west-2b"]
    before = counts(aws)
    assert before == {"keys": 1, "groups": 1, "roles": 1, "profiles": 1}

    provider(tmp_path)  # a prepared account: nothing is made twice
    assert counts(aws) == before


def test_imported_public_key(aws, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    pub = tmp_path / "id.pub"
    p = provider(tmp_path, auth={"ssh_user": "ubuntu", "ssh_public_key": str(pub), "ssh_private_key": "~/.ssh/id"})
    assert aws.describe_key_pairs()["KeyPairs"][0]["KeyName"] == "launch-aws1"
    assert not (tmp_path / "cluster" / "launch-aws1.pem").exists()
    assert p.cfg.auth.ssh_private_key == "~/.ssh/id"


def test_resources_filled_from_instance_types(aws, tmp_path):
    p = provider(tmp_path)
    gpu = p.cfg.available_node_types["gpu"].resources
    assert gpu["CPU"] == 4 and gpu["GPU"] == 1 and gpu["accelerator_type:T4"] == 1 and gpu["memory"] == 16 * 2**30
    assert p.cfg.available_node_types["cpu"].resources == {"CPU": 4.0, "memory": 16 * 2**30}
    declared = copy.deepcopy(BASE["available_node_types"])
    declared["cpu"]["resources"] = {"CPU": 3}
    assert provider(tmp_path, available_node_types=declared).cfg.available_node_types["cpu"].resources == {"CPU": 3}


def test_heterogeneous_nodes_tagged_from_birth_and_all_gone_after_terminate(aws, tmp_path):
    p = provider(tmp_path)
    tags = {"launch-cluster": "aws1", "launch-kind": "worker", "launch-request-id": "r1"}
    made = []
    for t in ("cpu", "gpu", "gpu-spot"):
        made += p.create_nodes(t, 1, {**tags, "launch-node-type": t})
    assert len(made) == 3
    listed = {n.id: n for n in p.list_nodes({"launch-cluster": "aws1"})}
    assert set(listed) == {n.id for n in made}
    # every instance carries the tags in EC2 itself, from the RunInstances call
    for r in aws.describe_instances(InstanceIds=list(listed))["Reservations"]:
        for inst in r["Instances"]:
            got = {t["Key"]: t["Value"] for t in inst["Tags"]}
            assert got["launch-cluster"] == "aws1" and got["launch-request-id"] == "r1"
            assert inst["KeyName"] == "launch-aws1"
    spot = [n for n in listed.values() if n.node_type == "gpu-spot"]
    assert spot[0].spot and not [n for n in listed.values() if n.spot and n.node_type != "gpu-spot"]
    assert p.list_nodes({"launch-node-type": "gpu"})[0].node_type == "gpu"
    p.set_tags(made[0].id, {"launch-status": "up-to-date"})
    assert p.list_nodes({"launch-status": "up-to-date"})[0].id == made[0].id

    p.terminate_nodes([n.id for n in made])
    p.terminate_nodes([n.id for n in made])  # idempotent
    assert p.list_nodes({"launch-cluster": "aws1"}) == []


def _inject(client, code: str, when) -> tuple[list, object]:
    """A before-call hook that answers an EC2 call with error `code` when `when(body, n)` says so.

    `body` is the call's wire parameters (EC2's query protocol flattens lists: InstanceId.1, ...)."""
    calls = []

    def hook(params, **kwargs):
        body = params.get("body", {})
        calls.append(body)
        if when(body, len(calls)):
            return AWSResponse("", 500, {}, None), {"Error": {"Code": code, "Message": f"injected {code}"}}
        return None

    return calls, hook


def test_capacity_error_falls_back_to_the_next_zone_then_raises(aws, tmp_path):
    p = provider(tmp_path)
    first_subnet = p.subnets[0]["SubnetId"]
    calls, hook = _inject(p.ec2, "InsufficientInstanceCapacity", lambda params, n: params.get("SubnetId") == first_subnet)
    p.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    (node,) = p.create_nodes("gpu", 1, {"launch-cluster": "aws1"})
    inst = aws.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert inst["SubnetId"] == p.subnets[1]["SubnetId"] and p.subnets[1]["AvailabilityZone"] == "us-west-2b"
    assert [c.get("SubnetId") for c in calls] == [first_subnet, p.subnets[1]["SubnetId"]]

    calls2, always = _inject(p.ec2, "InsufficientInstanceCapacity", lambda params, n: True)
    p.ec2.meta.events.unregister("before-call.ec2.RunInstances", hook)
    p.ec2.meta.events.register("before-call.ec2.RunInstances", always)
    with pytest.raises(CapacityError) as e:
        p.create_nodes("gpu", 1, {"launch-cluster": "aws1"})
    assert e.value.node_type == "gpu" and e.value.zone == "us-west-2b" and len(calls2) == 2


def test_throttling_is_retried_then_reported(aws, tmp_path):
    p = provider(tmp_path)
    calls, hook = _inject(p.ec2, "RequestLimitExceeded", lambda params, n: n <= 2)
    p.ec2.meta.events.register("before-call.ec2.DescribeInstances", hook)
    assert p.list_nodes({"launch-cluster": "aws1"}) == []
    assert len(calls) == 3  # two throttled answers, then through
    _, always = _inject(p.ec2, "RequestLimitExceeded", lambda params, n: True)
    p.ec2.meta.events.unregister("before-call.ec2.DescribeInstances", hook)
    p.ec2.meta.events.register("before-call.ec2.DescribeInstances", always)
    with pytest.raises(TransientError, match="still throttled"):
        p.list_nodes({})


def test_unauthorized_and_bad_parameters_are_clear_config_errors(aws, tmp_path):
    p = provider(tmp_path)
    _, hook = _inject(p.ec2, "UnauthorizedOperation", lambda params, n: True)
    p.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    with pytest.raises(ConfigError) as e:
        p.create_nodes("cpu", 1, {})
    assert str(e.value).startswith("available_node_types.cpu.node_config: aws run_instances refused: UnauthorizedOperation")


def test_terminate_batches_of_at_most_1000_and_skips_ids_already_gone(aws, tmp_path):
    p = provider(tmp_path)
    real = [n.id for n in p.create_nodes("cpu", 3, {"launch-cluster": "aws1"})]
    while len(real) < 3:
        real += [n.id for n in p.create_nodes("cpu", 1, {"launch-cluster": "aws1"})]
    batches = []
    p.ec2.meta.events.register("before-call.ec2.TerminateInstances", lambda params, **kw: batches.append(
        [v for k, v in params["body"].items() if k.startswith("InstanceId.")]))
    gone = [f"i-{n:017x}" for n in range(2497)]  # never existed, or terminated long ago
    p.terminate_nodes(gone[:1200] + real + gone[1200:])
    assert max(len(b) for b in batches) <= 1000
    sent = {i for b in batches for i in b}
    assert set(real) <= sent and len([b for b in batches if len(b) == 1000]) >= 2
    assert p.list_nodes({"launch-cluster": "aws1"}) == []


def test_missing_region_and_missing_sdk_message(tmp_path, moto_server, monkeypatch):
    data = copy.deepcopy(BASE)
    del data["provider"]["region"]
    with pytest.raises(ConfigError, match="provider.region: required"):
        get_provider(parse_config(data), tmp_path)
    import builtins

    real_import = builtins.__import__

    def no_boto(name, *a, **kw):
        if name.startswith("boto"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_boto)
    with pytest.raises(ConfigError, match=r"pip install 'launch\[aws\]'"):
        get_provider(parse_config(BASE), tmp_path)
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")
