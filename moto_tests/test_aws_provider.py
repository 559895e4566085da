"""The aws provider against moto: bootstrap, tags, heterogeneous nodes, capacity and throttling faults."""

from __future__ import annotations

import copy
import json
import os
import stat

import boto3
import pytest
from botocore.awsrequest import AWSResponse

import providers
from core.errors import CapacityError, ConfigError, InvalidRequest, PermissionDenied, TransientError
from core.spec import ClusterSpec
from lifecycle.config import parse_config
from lifecycle.spec import resolve
from moto_tests.conftest import REGION

AMI = "ami-12c6146b"
BASE = {
    "cluster_name": "aws1",
    "max_workers": 6,
    "provider": {"type": "aws", "region": REGION, "availability_zone": "us-west-2a,us-west-2b",
                 "retry_attempts": 3},
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


def spec_of(tmp_path, **overrides) -> ClusterSpec:
    data = copy.deepcopy(BASE)
    data.update(overrides)
    return resolve(parse_config(data, base_dir=tmp_path), tmp_path / "cluster")


def provider(tmp_path, **overrides):
    (tmp_path / "cluster").mkdir(exist_ok=True)
    return providers.build(spec_of(tmp_path, **overrides))


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
    key = tmp_path / "cluster" / "launch-aws1.pem"
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in key.read_text()
    assert p.spec.ssh_private_key == str(key.resolve())
    sg = aws.describe_security_groups(GroupNames=["launch-aws1"])["SecurityGroups"][0]
    ports = {(r.get("FromPort"), r["IpProtocol"]) for r in sg["IpPermissions"]}
    assert (22, "tcp") in ports and (6380, "tcp") not in ports  # the runtime's port is never opened
    assert any(pair["GroupId"] == sg["GroupId"] for r in sg["IpPermissions"] for pair in r.get("UserIdGroupPairs", []))
    head_params = p._params("head", {})
    assert head_params["IamInstanceProfile"] == {"Name": "launch-head-aws1"} and head_params["KeyName"] == "launch-aws1"
    assert "IamInstanceProfile" not in p._params("cpu", {})  # workers get no role
    assert [s["zone"] for s in p.state["subnets"]] == ["us-west-2a", "us-west-2b"]
    before = counts(aws)
    assert before == {"keys": 1, "groups": 1, "roles": 1, "profiles": 1}

    provider(tmp_path)  # a prepared account: nothing is made twice
    assert counts(aws) == before


def test_imported_public_key(aws, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    pub = tmp_path / "id.pub"
    p = provider(tmp_path, auth={"ssh_user": "ubuntu", "ssh_public_key": str(pub), "ssh_private_key": str(tmp_path / "id")})
    assert aws.describe_key_pairs()["KeyPairs"][0]["KeyName"] == "launch-aws1"
    assert not (tmp_path / "cluster" / "launch-aws1.pem").exists()
    assert p.spec.ssh_private_key == str(tmp_path / "id")


def test_resources_filled_from_instance_types(aws, tmp_path):
    spec = spec_of(tmp_path)
    gpu = spec.node_resources["gpu"]
    assert gpu["CPU"] == 4 and gpu["GPU"] == 1 and gpu["accelerator_type:T4"] == 1 and gpu["memory"] == 16 * 2**30
    assert spec.node_resources["cpu"] == {"CPU": 4.0, "memory": 16 * 2**30}
    declared = copy.deepcopy(BASE["available_node_types"])
    declared["cpu"]["resources"] = {"CPU": 3}
    assert spec_of(tmp_path, available_node_types=declared).node_resources["cpu"] == {"CPU": 3, "memory": 16 * 2**30}


def test_a_provider_rebuilt_from_the_stored_spec_keeps_key_and_zones(aws, tmp_path):
    # what `exec`, `status` and the head do: no bootstrap, only the spec `up` stored (defect: they
    # used to get no SSH key, and the head lost the subnets, so no zone order and no fallback)
    stored = spec_of(tmp_path).to_json()
    again = providers.build(ClusterSpec.from_json(stored))
    assert again.spec.ssh_private_key and again.spec.ssh_private_key.endswith("launch-aws1.pem")
    first = again.state["subnets"][0]["id"]
    calls, hook = _inject(again.aws.ec2, "InsufficientInstanceCapacity", lambda params, n: params.get("SubnetId") == first)
    again.aws.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    (node,) = again.create("cpu", 1, {"launch-cluster": "aws1"})
    assert [c.get("SubnetId") for c in calls] == [first, again.state["subnets"][1]["id"]]
    inst = aws.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert inst["KeyName"] == "launch-aws1"


def test_the_heads_role_may_do_only_what_the_autoscaler_does(aws, tmp_path):
    provider(tmp_path)
    iam = boto3.client("iam", region_name=REGION)
    doc = iam.get_role_policy(RoleName="launch-head-aws1", PolicyName="launch-autoscaler")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    actions = {a for st in doc["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert not any(a.endswith(":*") or a == "*" for a in actions)
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances"} <= actions
    by_action = {a: st for st in doc["Statement"]
                 for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    role_arn = iam.get_role(RoleName="launch-head-aws1")["Role"]["Arn"]
    assert by_action["iam:PassRole"]["Resource"] == role_arn  # its own role only
    own = by_action["ec2:TerminateInstances"]
    assert own["Condition"] == {"StringEquals": {"ec2:ResourceTag/launch-cluster": "aws1"}}


def test_a_head_profile_named_in_node_config_is_used_and_none_is_made(aws, tmp_path):
    """Ray's way of giving the head its credentials: IamInstanceProfile in the head's node_config."""
    iam = boto3.client("iam", region_name=REGION)
    iam.create_instance_profile(InstanceProfileName="team-head")
    types = copy.deepcopy(BASE["available_node_types"])
    types["head"]["node_config"]["IamInstanceProfile"] = {"Name": "team-head"}
    p = provider(tmp_path, available_node_types=types)
    assert counts(aws)["roles"] == 0 and counts(aws)["profiles"] == 0
    (head,) = p.create("head", 1, {"launch-cluster": "aws1", "launch-kind": "head"})
    (inst,) = [i for r in aws.describe_instances(InstanceIds=[head.id])["Reservations"] for i in r["Instances"]]
    assert inst["IamInstanceProfile"]["Arn"].endswith("/team-head")
    (worker,) = p.create("cpu", 1, {"launch-cluster": "aws1", "launch-kind": "worker"})
    (inst,) = [i for r in aws.describe_instances(InstanceIds=[worker.id])["Reservations"] for i in r["Instances"]]
    assert "IamInstanceProfile" not in inst  # workers get no credentials at all


def _publish_image(ami_id: str, name: str, owner: str, alias: str | None, created: str) -> None:
    """An image as its vendor publishes it (moto has none of today's Ubuntu or Deep Learning AMIs)."""
    from datetime import datetime

    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami

    backend = ec2_backends["123456789012"][REGION]
    backend.amis[ami_id] = Ami(backend, ami_id, name=name, owner_id=owner, owner_alias=alias, public=True,
                               architecture="x86_64", creation_date=datetime.fromisoformat(created))


def test_node_configs_without_an_image_get_the_regions_current_default_and_subnet_ids_are_honoured(aws, tmp_path):
    _publish_image("ami-0ubuntu2601", "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20260101",
                   "099720109477", None, "2026-01-01T00:00:00")
    _publish_image("ami-0ubuntu2610", "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20261001",
                   "099720109477", None, "2026-10-01T00:00:00")
    _publish_image("ami-0dlami2610", "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261001",
                   "898082745236", "amazon", "2026-10-01T00:00:00")
    _publish_image("ami-0squatter", "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20991231",
                   "666666666666", None, "2026-11-01T00:00:00")  # newest, but not from a vendor: never picked
    zone_b = [sn for sn in aws.describe_subnets()["Subnets"] if sn["AvailabilityZone"] == "us-west-2b"][0]
    types = copy.deepcopy(BASE["available_node_types"])
    for name in ("cpu", "gpu"):
        del types[name]["node_config"]["ImageId"]
    types["cpu"]["node_config"]["SubnetIds"] = [zone_b["SubnetId"]]
    p = provider(tmp_path, available_node_types=types)
    assert p.state["images"] == {"cpu": "ami-0ubuntu2610", "gpu": "ami-0dlami2610"}
    (cpu,) = p.create("cpu", 1, {"launch-cluster": "aws1", "launch-kind": "worker"})
    (gpu,) = p.create("gpu", 1, {"launch-cluster": "aws1", "launch-kind": "worker"})
    by_id = {i["InstanceId"]: i for r in aws.describe_instances(InstanceIds=[cpu.id, gpu.id])["Reservations"]
             for i in r["Instances"]}
    assert by_id[cpu.id]["ImageId"] == "ami-0ubuntu2610" and by_id[gpu.id]["ImageId"] == "ami-0dlami2610"
    assert by_id[cpu.id]["SubnetId"] == zone_b["SubnetId"]  # SubnetIds honoured, not passed to EC2 raw
    assert by_id[gpu.id]["Placement"]["AvailabilityZone"] == "us-west-2a"  # the cluster's zones otherwise


def test_heterogeneous_nodes_tagged_from_birth_and_all_gone_after_terminate(aws, tmp_path):
    p = provider(tmp_path)
    tags = {"launch-cluster": "aws1", "launch-kind": "worker", "launch-request-id": "r1"}
    made = []
    for t in ("cpu", "gpu", "gpu-spot"):
        made += p.create(t, 1, {**tags, "launch-node-type": t})
    assert len(made) == 3
    listed = {n.id: n for n in p.list({"launch-cluster": "aws1"})}
    assert set(listed) == {n.id for n in made}
    # every instance carries the tags in EC2 itself, from the RunInstances call
    for r in aws.describe_instances(InstanceIds=list(listed))["Reservations"]:
        for inst in r["Instances"]:
            got = {t["Key"]: t["Value"] for t in inst["Tags"]}
            assert got["launch-cluster"] == "aws1" and got["launch-request-id"] == "r1"
            assert inst["KeyName"] == "launch-aws1"
    spot = [n for n in listed.values() if n.node_type == "gpu-spot"]
    assert spot[0].spot and not [n for n in listed.values() if n.spot and n.node_type != "gpu-spot"]
    assert p.list({"launch-node-type": "gpu"})[0].node_type == "gpu"
    p.set_tags(made[0].id, {"launch-status": "up-to-date"})
    assert p.list({"launch-status": "up-to-date"})[0].id == made[0].id

    p.terminate([n.id for n in made])
    p.terminate([n.id for n in made])  # idempotent
    assert p.list({"launch-cluster": "aws1"}) == []


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
    first_subnet = p.state["subnets"][0]["id"]
    calls, hook = _inject(p.aws.ec2, "InsufficientInstanceCapacity", lambda params, n: params.get("SubnetId") == first_subnet)
    p.aws.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    (node,) = p.create("gpu", 1, {"launch-cluster": "aws1"})
    second = p.state["subnets"][1]
    inst = aws.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert inst["SubnetId"] == second["id"] and second["zone"] == "us-west-2b"
    assert [c.get("SubnetId") for c in calls] == [first_subnet, second["id"]]

    calls2, always = _inject(p.aws.ec2, "InsufficientInstanceCapacity", lambda params, n: True)
    p.aws.ec2.meta.events.unregister("before-call.ec2.RunInstances", hook)
    p.aws.ec2.meta.events.register("before-call.ec2.RunInstances", always)
    with pytest.raises(CapacityError) as e:
        p.create("gpu", 1, {"launch-cluster": "aws1"})
    # out everywhere, as on every cloud: no one zone to blame, and each one named; us-west-2a, out of
    # capacity a moment ago, was tried last (for 3 minutes, as Karpenter's capacity cache does)
    assert e.value.node_type == "gpu" and e.value.zone is None and len(calls2) == 2
    assert "every zone is out (us-west-2b, us-west-2a)" in str(e.value)
    assert [c.get("SubnetId") for c in calls2] == [second["id"], first_subnet]


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **kw):
        yield self.data


def _throttle_on_the_wire(client, op: str, times) -> list:
    """Answer `op` with EC2's throttling error at the HTTP layer, so botocore's own retries see it."""
    sent = []
    body = (b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error>"
            b"</Errors><RequestID>r</RequestID></Response>")

    def hook(request, **kwargs):
        sent.append(request)
        if times is None or len(sent) <= times:
            return AWSResponse(request.url, 503, {}, _Body(body))
        return None

    client.meta.events.register(f"before-send.ec2.{op}", hook)
    return sent


def test_throttling_is_retried_by_the_sdk_then_reported(aws, tmp_path):
    p = provider(tmp_path)
    sent = _throttle_on_the_wire(p.aws.ec2, "DescribeInstances", times=2)
    assert p.list({"launch-cluster": "aws1"}) == []
    assert len(sent) == 3  # two throttled answers, then through: retried by botocore, not by us
    again = provider(tmp_path)
    _throttle_on_the_wire(again.aws.ec2, "DescribeInstances", times=None)
    with pytest.raises(TransientError, match="still throttled after 3 tries"):
        again.list({})


@pytest.mark.parametrize("code,error,text", [
    ("UnauthorizedOperation", PermissionDenied, "aws run_instances refused: UnauthorizedOperation"),
    ("InvalidAMIID.NotFound", InvalidRequest, "available_node_types.cpu.node_config: aws run_instances refused: "
                                              "InvalidAMIID.NotFound"),
    ("VcpuLimitExceeded", Exception, "quota exceeded for node type 'cpu'"),
])
def test_each_ec2_error_maps_to_one_typed_error(aws, tmp_path, code, error, text):
    # not a ConfigError any more: the autoscaler backs the type off and keeps serving the others
    p = provider(tmp_path)
    _, hook = _inject(p.aws.ec2, code, lambda params, n: True)
    p.aws.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    with pytest.raises(error) as e:
        p.create("cpu", 1, {})
    assert text in str(e.value) and not isinstance(e.value, ConfigError)
    if error is PermissionDenied:  # IAM's name of the action, for the one line `launch status` shows
        assert e.value.permission == "ec2:RunInstances"


def test_terminate_batches_of_at_most_1000_and_skips_ids_already_gone(aws, tmp_path):
    p = provider(tmp_path)
    real = [n.id for n in p.create("cpu", 3, {"launch-cluster": "aws1"})]
    while len(real) < 3:
        real += [n.id for n in p.create("cpu", 1, {"launch-cluster": "aws1"})]
    batches = []
    p.aws.ec2.meta.events.register("before-call.ec2.TerminateInstances", lambda params, **kw: batches.append(
        [v for k, v in params["body"].items() if k.startswith("InstanceId.")]))
    gone = [f"i-{n:017x}" for n in range(2497)]  # never existed, or terminated long ago
    p.terminate(gone[:1200] + real + gone[1200:])
    assert max(len(b) for b in batches) <= 1000
    sent = {i for b in batches for i in b}
    assert set(real) <= sent and len([b for b in batches if len(b) == 1000]) >= 2
    assert p.list({"launch-cluster": "aws1"}) == []


def test_missing_region_and_missing_sdk_message(tmp_path, moto_server, monkeypatch):
    data = copy.deepcopy(BASE)
    del data["provider"]["region"]
    with pytest.raises(ConfigError, match="provider.region: required"):
        parse_config(data)
    import builtins

    real_import = builtins.__import__

    def no_boto(name, *a, **kw):
        if name.startswith("boto"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_boto)
    with pytest.raises(ConfigError, match=r"pip install 'launch\[aws\]'"):
        resolve(parse_config(BASE), tmp_path)
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")


def _states(aws, ids) -> dict[str, str]:
    return {i["InstanceId"]: i["State"]["Name"] for r in aws.describe_instances(InstanceIds=list(ids))["Reservations"]
            for i in r["Instances"]}


def test_cache_stopped_nodes_stops_idle_nodes_and_starts_them_before_creating_new_ones(aws, tmp_path):
    """Ray's provider.cache_stopped_nodes (default true on AWS)."""
    from lifecycle.cluster import Lifecycle
    from lifecycle.state import ClusterDir

    (tmp_path / "cluster").mkdir()
    lc = Lifecycle(spec_of(tmp_path), ClusterDir("aws1", path=tmp_path / "state"))
    assert lc.caches_stopped_nodes
    (a,), (b,) = lc.create("cpu", 1), lc.create("cpu", 1)  # moto launches MinCount: one per call
    (spot,) = lc.create("gpu-spot", 1)
    lc.retire([a, spot])
    assert _states(aws, [a.id, spot.id]) in ({a.id: "stopped", spot.id: "terminated"},
                                             {a.id: "stopping", spot.id: "terminated"})  # spot: terminated, as in Ray
    assert {n.id for n in lc.nodes()} == {b.id}  # a stopped node is no capacity
    assert [n.id for n in lc.provider.stopped({"launch-cluster": "aws1"})] == [a.id]

    again = lc.create("cpu", 2, request_id="r2")
    assert a.id in {n.id for n in again} and len(again) == 2  # started again first, one new
    assert _states(aws, [a.id])[a.id] in ("pending", "running")
    tags = {n.id: n.tags for n in lc.nodes()}
    assert tags[a.id]["launch-request-id"] == "r2" and tags[a.id]["launch-status"] == "pending"

    # a stopped node whose node config changed since is never started again for the new config
    lc.retire([n for n in lc.nodes() if n.id == a.id])
    changed = copy.deepcopy(BASE["available_node_types"])
    changed["cpu"]["node_config"]["InstanceType"] = "m5.2xlarge"
    lc2 = Lifecycle(spec_of(tmp_path, available_node_types=changed), ClusterDir("aws1", path=tmp_path / "state"))
    (fresh,) = lc2.create("cpu", 1)
    assert fresh.id != a.id

    # down --keep-stopped stops what runs and keeps what is stopped; down terminates them all
    lc.down(keep_stopped=True)
    assert lc.nodes() == [] and len(lc.provider.stopped({"launch-cluster": "aws1"})) >= 2
    lc.down()
    assert lc.nodes() == [] and lc.provider.stopped({"launch-cluster": "aws1"}) == []


def test_down_keep_stopped_stops_even_where_idle_nodes_are_not_cached(aws, tmp_path):
    from lifecycle.cluster import Lifecycle
    from lifecycle.state import ClusterDir

    (tmp_path / "cluster").mkdir()
    data = copy.deepcopy(BASE["provider"])
    lc = Lifecycle(spec_of(tmp_path, provider={**data, "cache_stopped_nodes": False}),
                   ClusterDir("aws1", path=tmp_path / "state"))
    assert not lc.caches_stopped_nodes
    (node,) = lc.create("cpu", 1)
    lc.down(keep_stopped=True)
    assert [n.id for n in lc.provider.stopped({"launch-cluster": "aws1"})] == [node.id]
    lc.down()
    assert lc.provider.stopped({"launch-cluster": "aws1"}) == []


@pytest.mark.parametrize("provider, env, code, line", [
    ({}, {}, 1, "error: provider.aws_credentials: no usable AWS credentials found: run `aws configure`"),
    ({}, {"AWS_PROFILE": "nope"}, 1, "error: aws: the AWS profile 'nope' does not exist"),
    ({"region": "mars-1"}, {}, 2, "error: provider.region: 'mars-1' is not an AWS region"),
    ({"aws_credentials": {"bogus_key": "x"}}, {}, 2, "error: provider.aws_credentials.bogus_key: unknown key"),
], ids=["no-credentials", "unknown-profile", "unknown-region", "unknown-credential-key"])
def test_a_user_without_usable_credentials_or_region_gets_one_line(tmp_path, monkeypatch, provider, env, code, line):
    """As a new user meets it: `launch up` on a machine with no AWS setup (nothing in the environment or
    ~/.aws, no instance role) says what to fix in one line, before any call to AWS."""
    from tests.infra import cli, write_config

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # not on EC2: no instance role to ask for
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = copy.deepcopy(BASE)
    data["provider"].update(provider)
    r = cli("up", str(write_config(tmp_path / "c.yaml", data)), "--yes", home=tmp_path / "home")
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(line), r.stderr
    assert not list((tmp_path / "home").rglob("*.pem"))  # no key pair made


def test_the_clouds_spot_prices_in_the_clusters_zones_price_its_spot_types_and_age(aws, tmp_path):
    from autoscaler import pricing

    p = provider(tmp_path)
    assert p.capabilities.live_spot_prices
    found = p.spot_prices(["g4dn.xlarge", "m5.xlarge"])
    # moto answers EC2's API with one price for every offering of the cluster's zones
    assert set(found) == {"g4dn.xlarge", "m5.xlarge"} and all(v > 0 for v in found.values())
    cfg = parse_config({**copy.deepcopy(BASE), "available_node_types": {
        **BASE["available_node_types"],
        "gpu-spot": {"node_config": {"InstanceType": "g4dn.xlarge", "ImageId": AMI,
                                     "InstanceMarketOptions": {"MarketType": "spot"}}, "max_workers": 2}}})
    assert pricing.live_wanted(cfg) == ["g4dn.xlarge"]  # on-demand and declared types need none
    live = {m: pricing.LivePrice(v, at=1000.0) for m, v in found.items()}
    fresh = pricing.quote(cfg, "gpu-spot", live=live, now=1000.0 + 120)
    assert fresh.per_hour == found["g4dn.xlarge"] and fresh.source == "live: the cloud's spot price, 2 min ago"
    old = pricing.quote(cfg, "gpu-spot", live=live, now=1000.0 + 2 * pricing.LIVE_STALE_S)
    assert old.per_hour == found["g4dn.xlarge"] and "STALE" in old.source  # used, and flagged
    assert pricing.quote(cfg, "gpu", live=live, now=1000.0).source.startswith(("catalog", "estimate"))  # on demand


def test_equivalent_instance_types_launch_the_cheapest_with_capacity_and_plan_with_what_all_have(aws, tmp_path):
    from autoscaler import pricing

    types = copy.deepcopy(BASE["available_node_types"])
    # the user's order is not the price order: g4dn.xlarge is the cheaper of the two in the catalog
    types["gpu"]["node_config"]["InstanceType"] = ["g5.xlarge", "g4dn.xlarge"]
    p = provider(tmp_path, available_node_types=types)
    res = p.node_types()["gpu"]
    # what both have (4 vCPUs, 16 GiB, one GPU), not which GPU: work placed on the type fits either one
    assert res == {"CPU": 4.0, "memory": 16 * 2**30, "GPU": 1.0}
    (node,) = p.create("gpu", 1, {"launch-cluster": "aws1"})
    inst = aws.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert inst["InstanceType"] == "g4dn.xlarge"
    # the cheapest out of capacity everywhere: the next one
    calls, hook = _inject(p.aws.ec2, "InsufficientInstanceCapacity", lambda params, n: params["InstanceType"] == "g4dn.xlarge")
    p.aws.ec2.meta.events.register("before-call.ec2.RunInstances", hook)
    (node,) = p.create("gpu", 1, {"launch-cluster": "aws1"})
    inst = aws.describe_instances(InstanceIds=[node.id])["Reservations"][0]["Instances"][0]
    assert inst["InstanceType"] == "g5.xlarge"
    assert [c["InstanceType"] for c in calls] == ["g4dn.xlarge", "g4dn.xlarge", "g5.xlarge"]
    # and for 3 minutes it is tried last, so the next launch goes straight to what has room
    calls.clear()
    p.create("gpu", 1, {"launch-cluster": "aws1"})
    assert [c["InstanceType"] for c in calls] == ["g5.xlarge"]
    cfg = p.spec.config
    q = pricing.quote(cfg, "gpu")
    assert q.per_hour == pricing.catalog_price("aws", {"InstanceType": "g4dn.xlarge"}, "us-east-1")
    assert q.source.endswith("g4dn.xlarge, the cheapest of 2")


@pytest.mark.parametrize("value", [[], ["g5.xlarge", 3], {"type": "g5.xlarge"}])
def test_equivalent_instance_types_that_are_not_a_list_of_names_are_refused_by_name(value):
    data = copy.deepcopy(BASE)
    data["available_node_types"]["gpu"]["node_config"]["InstanceType"] = value
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert "available_node_types.gpu.node_config.InstanceType:" in str(e.value)


def test_a_preempted_nodes_offering_is_tried_last_for_a_while(aws, tmp_path):
    p = provider(tmp_path)
    (node,) = p.create("gpu-spot", 1, {"launch-cluster": "aws1"})
    first, second = (s["zone"] for s in p.state["subnets"])
    assert (node.machine, node.zone) == ("g4dn.xlarge", first)  # what the cloud says it is, from listing too
    assert [(n.machine, n.zone) for n in p.list({"launch-cluster": "aws1"})] == [("g4dn.xlarge", first)]
    p.avoid(node)  # its cloud gave notice: that zone is short of spot g4dn for now
    (again,) = p.create("gpu-spot", 1, {"launch-cluster": "aws1"})
    assert again.zone == second
