"""The `aws` provider (EC2 through boto3, imported only when an aws cluster is used).

- bootstrap finds or creates, idempotently: a key pair (imported from auth.ssh_public_key, or created
  and its private key saved 0600), one security group per cluster (SSH from provider.ssh_cidr, all
  traffic within the group; never the runtime's port), the subnets of the requested availability
  zones (in the user's order), and an instance profile for the head whose role may do only what the
  autoscaler does, on this cluster's instances. All of it is returned as the provider state.
- create: run_instances with TagSpecifications, so an instance is tagged from birth; node_config
  passes through, completed with the bootstrap's key, security group and (head) profile; spot through
  InstanceMarketOptions. An out-of-capacity answer moves on to the next subnet (zone); when all are
  out, CapacityError(type, zone) tells the planner to back off.
- Every EC2 error code is mapped once (`map_error`) onto the core's typed errors. Throttling is
  retried by botocore's own adaptive retry mode, configured once per client.
- list by tag filters, paginated; terminate in batches of at most 1,000 ids, idempotent.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from core.config import ClusterConfig
from core.errors import (CapacityError, ConfigError, InvalidRequest, LaunchError, NodeNotFound, PermissionDenied,
                         ProviderError, QuotaError, TransientError, first_line)
from core.files import atomic_write
from core.spec import ClusterSpec
from core.tags import TAG_CLUSTER, TAG_LAUNCH_HASH, TAG_NODE_TYPE
from providers.base import Bootstrapped, Capabilities, NodeInfo, ProviderFacts, zone_list
from providers.cloud import CloudProvider, CloudSection, equivalents_problems

THROTTLING = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
              "TooManyRequestsException", "ServiceUnavailable", "Unavailable", "InternalError"}
CAPACITY = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity",
            "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet",
            "UnfulfillableCapacity", "MaxSpotInstanceCountExceeded"}
QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "ResourceLimitExceeded"}
PERMISSION = {"UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId", "OptInRequired",
              "SignatureDoesNotMatch", "AccessDenied", "AccessDeniedException", "Blocked"}
NOT_FOUND = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
LIVE_STATES = ["pending", "running"]  # what `list` shows: a stopped instance is cached, not capacity
STOPPED_STATES = ["stopping", "stopped"]
TERMINATE_BATCH = 1000


def _unused_by_head(parts: list[str]) -> bool:
    """botocore's models of the services the head never calls (it calls ec2, iam, sts): most of its size."""
    return parts[:2] == ["botocore", "data"] and len(parts) > 3 and parts[2] not in ("ec2", "iam", "sts")


def _spot_of(node_config: dict) -> bool:
    return str((node_config.get("InstanceMarketOptions") or {}).get("MarketType", "")).lower() == "spot"


def machines_of(node_config: dict) -> list[str]:
    """The instance types a node type may be: `InstanceType` is one, or a list of equivalents (ours, as
    Karpenter's offerings: the cheapest with capacity is launched)."""
    it = node_config.get("InstanceType")
    if isinstance(it, str) and it:
        return [it]
    if isinstance(it, list):
        return [m for m in it if isinstance(m, str) and m]
    return []


FACTS = ProviderFacts(
    machines_of=machines_of,
    notices="aws",
    spot_of=_spot_of,
    head_sdk=("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "certifi"),
    head_sdk_unused=_unused_by_head,
)


class Section(CloudSection):
    region: str
    # Ray's keys: credentials for the boto3 clients (a private cloud or tests may add endpoint_url)
    aws_credentials: dict[str, str] | None = None
    security_group: dict[str, Any] | None = None
    # Ray's CloudWatch integration (agent, dashboard, alarm configs through SSM): accepted, not applied
    cloudwatch: dict[str, Any] | None = None
    # ours
    vpc_id: str | None = None
    key_name: str | None = None

    def warnings(self) -> list[str]:
        if self.cloudwatch:
            return ["provider.cloudwatch: not applied: launch does not install or configure the CloudWatch agent "
                    "(metrics: the head's Prometheus endpoint; logs: `launch monitor`, `launch job logs`)"]
        return []


def _sdk():
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ConfigError("provider.type: aws needs the AWS SDK: pip install 'launch[aws]'") from None
    return boto3, botocore


def error_code(e: Exception) -> str:
    return (getattr(e, "response", None) or {}).get("Error", {}).get("Code", "")


def map_error(e: Exception, op: str, node_type: str = "", zone: str | None = None, attempts: int = 0) -> LaunchError:
    """One EC2/IAM error -> the core's typed error, naming the node type and the field where one is at fault."""
    code = error_code(e)
    message = first_line((getattr(e, "response", None) or {}).get("Error", {}).get("Message") or str(e))
    where = f"available_node_types.{node_type}.node_config" if node_type else "provider"
    if code in CAPACITY:
        return CapacityError(node_type or "?", zone, f"{code}: {message}")
    if code in QUOTA:
        return QuotaError(node_type or "?", f"{code}: {message}")
    if code in THROTTLING:
        return TransientError(f"aws {op}: still throttled after {attempts} tries ({code})")
    if code in PERMISSION:
        return PermissionDenied(f"aws {op} refused: {code}: {message}")
    if code in NOT_FOUND:
        return NodeNotFound(message)
    if code.startswith(("Invalid", "Missing", "Unsupported")) or code in ("ValidationError", "MalformedPolicyDocument"):
        return InvalidRequest(f"{where}: aws {op} refused: {code}: {message}")
    return ProviderError(f"aws {op} failed: {code or type(e).__name__}: {message}")


# what boto3's Session takes (Ray passes provider.aws_credentials to it as they are)
CREDENTIAL_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile_name"}
NO_CREDENTIALS = ("provider.aws_credentials: no usable AWS credentials found: run `aws configure`, set "
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give provider.aws_credentials")


def map_sdk_error(e: Exception, op: str) -> LaunchError:
    """One of botocore's own errors (raised before or without an answer from AWS) -> a typed error that
    says what to fix."""
    ex = _sdk()[1].exceptions
    said = first_line(str(e))
    if isinstance(e, (ex.NoCredentialsError, ex.PartialCredentialsError, ex.CredentialRetrievalError)):
        return PermissionDenied(NO_CREDENTIALS)
    if isinstance(e, ex.ProfileNotFound):
        return PermissionDenied(f"aws: the AWS profile {e.kwargs.get('profile')!r} does not exist (AWS_PROFILE, "
                                f"~/.aws/config)")
    if isinstance(e, (ex.EndpointConnectionError, ex.ConnectTimeoutError, ex.ReadTimeoutError,
                      ex.ConnectionClosedError)):
        return TransientError(f"aws {op}: the API does not answer ({type(e).__name__}: {said})")
    if isinstance(e, ex.ParamValidationError):
        return InvalidRequest(f"aws {op} refused: {said}")
    return ProviderError(f"aws {op} failed: {type(e).__name__}: {said}")


def _known_regions(session) -> set[str]:
    return {r for partition in session.get_available_partitions()
            for r in session.get_available_regions("ec2", partition_name=partition)}


class _Clients:
    """The boto3 clients of one region, each with botocore's standard retry mode (throttling, 5xx,
    connection errors: exponential backoff with jitter), configured here once."""

    def __init__(self, section: Section):
        boto3, botocore = _sdk()
        self.ClientError = botocore.exceptions.ClientError
        self.SdkError = botocore.exceptions.BotoCoreError
        creds = dict(section.aws_credentials or {})
        endpoint = creds.pop("endpoint_url", None)
        unknown = sorted(set(creds) - CREDENTIAL_KEYS)
        if unknown:
            raise ConfigError(f"provider.aws_credentials.{unknown[0]}: unknown key (known: "
                              f"{', '.join(sorted(CREDENTIAL_KEYS | {'endpoint_url'}))})")
        try:
            session = boto3.session.Session(region_name=section.region, **creds)
            # a region botocore does not know would only fail later, as an endpoint that does not answer
            private = endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_EC2")
            if not private and section.region not in _known_regions(session):
                raise ConfigError(f"provider.region: {section.region!r} is not an AWS region "
                                  f"(e.g. us-east-1, us-west-2, eu-west-1)")
            self.attempts = section.retry_attempts
            config = botocore.config.Config(retries={"mode": "standard", "max_attempts": self.attempts})
            kw = {"config": config, **({"endpoint_url": endpoint} if endpoint else {})}
            self.ec2 = session.client("ec2", **kw)
            self.iam = session.client("iam", **kw)
        except self.SdkError as e:
            raise map_sdk_error(e, "client setup") from None

    def call(self, client, op: str, node_type: str = "", zone: str | None = None, **kwargs):
        try:
            return getattr(client, op)(**kwargs)
        except self.ClientError as e:
            error = map_error(e, op, node_type, zone, self.attempts)
            if isinstance(error, PermissionDenied):  # IAM's name of what was refused
                error.permission = f"{client.meta.service_model.endpoint_prefix}:{e.operation_name}"
            raise error from None
        except self.SdkError as e:
            raise map_sdk_error(e, op) from None


# --- bootstrap ----------------------------------------------------------------------------------------


def config_problems(config: ClusterConfig) -> list[str]:
    """Rules of this provider that span the config, beyond its typed section: an InstanceType given as
    equivalents is a list of instance type names."""
    return equivalents_problems(config, lambda nc: nc.get("InstanceType"), "InstanceType", "an", "instance type")


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    section = Section.of(config.provider)
    aws = _Clients(section)
    name = config.cluster_name
    zones = zone_list(section.availability_zone)
    vpc_id = section.vpc_id or _default_vpc(aws)
    key_name, key_path = _key_pair(aws, config, section, state_dir)
    state = {
        "vpc_id": vpc_id,
        "subnets": _subnets(aws, vpc_id, zones),
        # node type -> its subnets, for types whose node_config names them (Ray's SubnetIds)
        "type_subnets": _type_subnets(aws, config),
        # node type -> the region's default image, for types whose node_config names none
        "images": _default_images(aws, config, section),
        "key_name": key_name,
        "security_group": _security_group(aws, name, vpc_id, section),
        # the head's own credentials: the profile its node_config names (Ray's way), else one made here
        "head_profile": (None if "IamInstanceProfile" in config.node_type(config.head_node_type).node_config
                         else _head_profile(aws, name)),
    }
    return Bootstrapped(state=state, ssh_user=config.auth.ssh_user or "ubuntu",
                        ssh_private_key=str(key_path) if key_path else None)


def _default_vpc(aws: _Clients) -> str:
    vpcs = aws.call(aws.ec2, "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ConfigError("provider.vpc_id: this region has no default VPC; name one")
    return vpcs[0]["VpcId"]


def _subnets(aws: _Clients, vpc_id: str, zones: list[str]) -> list[dict[str, str]]:
    """One subnet per zone, in the order the user gave the zones."""
    filters = [{"Name": "vpc-id", "Values": [vpc_id]}]
    if zones:
        filters.append({"Name": "availability-zone", "Values": zones})
    subnets = aws.call(aws.ec2, "describe_subnets", Filters=filters)["Subnets"]
    if not subnets:
        raise ConfigError(f"provider.availability_zone: no subnet of {vpc_id} in {', '.join(zones) or 'any zone'}")
    order = {z: i for i, z in enumerate(zones)}
    by_zone: dict[str, dict] = {}
    for s in sorted(subnets, key=lambda s: (not s.get("DefaultForAz", False), s["SubnetId"])):
        by_zone.setdefault(s["AvailabilityZone"], s)
    ordered = sorted(by_zone.values(), key=lambda s: (order.get(s["AvailabilityZone"], 99), s["AvailabilityZone"]))
    return [{"id": s["SubnetId"], "zone": s["AvailabilityZone"]} for s in ordered]


# A current image per kind of node, from owners AWS vouches for (Amazon's Deep Learning AMIs for GPU
# nodes, as Ray picks; Canonical's Ubuntu otherwise). The newest match of the region wins.
IMAGE_OWNERS = ["amazon", "099720109477"]
IMAGE_NAMES = {
    "gpu": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
    "cpu": "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-{arch}-server-*",
}


def _default_images(aws: _Clients, config: ClusterConfig, section: Section) -> dict[str, str]:
    images: dict[str, str] = {}
    found: dict[tuple[str, str], str] = {}
    for name, nt in config.available_node_types.items():
        nc = nt.node_config
        if nc.get("ImageId") or "LaunchTemplate" in nc:
            continue
        itype = next(iter(machines_of(nc)), None)  # (equivalents share an architecture: the first says it)
        if not itype:
            raise ConfigError(f"available_node_types.{name}.node_config.InstanceType: required (or a LaunchTemplate)")
        info = aws.call(aws.ec2, "describe_instance_types", name, InstanceTypes=[itype])["InstanceTypes"]
        if not info:
            raise InvalidRequest(f"available_node_types.{name}.node_config.InstanceType: unknown instance type "
                                 f"{itype!r} in {section.region}")
        arch = "arm64" if "arm64" in info[0].get("ProcessorInfo", {}).get("SupportedArchitectures", []) else "x86_64"
        kind = "gpu" if info[0].get("GpuInfo", {}).get("Gpus") else "cpu"
        if (kind, arch) not in found:
            pattern = IMAGE_NAMES[kind].format(arch="amd64" if arch == "x86_64" else "arm64")
            candidates = aws.call(aws.ec2, "describe_images", name, Owners=IMAGE_OWNERS, Filters=[
                {"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [arch]},
                {"Name": "state", "Values": ["available"]}])["Images"]
            if not candidates:
                raise ConfigError(f"available_node_types.{name}.node_config.ImageId: no default image ({pattern}) "
                                  f"in {section.region}; name one")
            found[(kind, arch)] = max(candidates, key=lambda i: i.get("CreationDate", ""))["ImageId"]
        images[name] = found[(kind, arch)]
    return images


def _type_subnets(aws: _Clients, config: ClusterConfig) -> dict[str, list[dict[str, str]]]:
    """Ray's `SubnetIds` in a node_config: that type launches in those subnets, in the file's order."""
    out = {}
    for name, nt in config.available_node_types.items():
        ids = nt.node_config.get("SubnetIds")
        if not ids:
            continue
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"available_node_types.{name}.node_config.SubnetIds: must be a list of subnet ids")
        found = {s["SubnetId"]: s for s in aws.call(aws.ec2, "describe_subnets", name, SubnetIds=ids)["Subnets"]}
        out[name] = [{"id": i, "zone": found[i]["AvailabilityZone"]} for i in ids if i in found]
    return out


def _key_pair(aws: _Clients, config: ClusterConfig, section: Section, state_dir: Path) -> tuple[str, Path | None]:
    key_name = section.key_name or f"launch-{config.cluster_name}"
    existing = aws.call(aws.ec2, "describe_key_pairs", Filters=[{"Name": "key-name", "Values": [key_name]}])["KeyPairs"]
    if config.auth.ssh_public_key:
        if not existing:
            public = Path(config.auth.ssh_public_key).expanduser().read_bytes()
            aws.call(aws.ec2, "import_key_pair", KeyName=key_name, PublicKeyMaterial=public)
        return key_name, None
    key_path = state_dir / f"{key_name}.pem"
    if existing:
        if not key_path.exists() and not config.auth.ssh_private_key:
            raise ConfigError(f"auth.ssh_private_key: key pair {key_name} exists in {section.region} but its "
                              f"private key is not at {key_path}; point auth.ssh_private_key at it")
        return key_name, key_path.resolve() if key_path.exists() else None
    material = aws.call(aws.ec2, "create_key_pair", KeyName=key_name, TagSpecifications=[{
        "ResourceType": "key-pair", "Tags": [{"Key": TAG_CLUSTER, "Value": config.cluster_name}]}])["KeyMaterial"]
    atomic_write(key_path, material, mode=0o600)
    return key_name, key_path.resolve()


def _security_group(aws: _Clients, cluster: str, vpc_id: str, section: Section) -> str:
    name = (section.security_group or {}).get("GroupName") or f"launch-{cluster}"
    found = aws.call(aws.ec2, "describe_security_groups", Filters=[
        {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
    if found:
        return found[0]["GroupId"]
    sg_id = aws.call(aws.ec2, "create_security_group", GroupName=name, VpcId=vpc_id,
                     Description=f"launch cluster {cluster}", TagSpecifications=[{
                         "ResourceType": "security-group", "Tags": [{"Key": TAG_CLUSTER, "Value": cluster}]}])["GroupId"]
    # SSH from where the launcher is, everything within the cluster; the runtime's port is reached
    # through SSH only, never opened here
    permissions = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": section.ssh_cidr}]},
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg_id}]},
        *(section.security_group or {}).get("IpPermissions", []),
    ]
    aws.call(aws.ec2, "authorize_security_group_ingress", GroupId=sg_id, IpPermissions=permissions)
    return sg_id


def head_policy(cluster: str, role_arn: str) -> dict:
    """What the head's autoscaler may do: launch tagged instances of this cluster, and describe, tag,
    stop, start and terminate only instances that carry this cluster's tag; pass only its own role."""
    own = {"StringEquals": {f"ec2:ResourceTag/{TAG_CLUSTER}": cluster}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Describe", "Effect": "Allow", "Resource": "*", "Action": [
            "ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets",
            "ec2:DescribeImages", "ec2:DescribeKeyPairs", "ec2:DescribeSecurityGroups",
            "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeSpotPriceHistory"]},
        {"Sid": "LaunchTaggedInstances", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
         "Condition": {"StringEquals": {f"aws:RequestTag/{TAG_CLUSTER}": cluster}}},
        {"Sid": "LaunchFrom", "Effect": "Allow", "Action": "ec2:RunInstances", "Resource": [
            "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:network-interface/*",
            "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:key-pair/*", "arn:aws:ec2:*::snapshot/*"]},
        {"Sid": "TagAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "OwnInstances", "Effect": "Allow", "Resource": "arn:aws:ec2:*:*:instance/*", "Condition": own,
         "Action": ["ec2:CreateTags", "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"]},
        {"Sid": "PassOwnRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": role_arn},
    ]}


def _head_profile(aws: _Clients, cluster: str) -> str:
    name = f"launch-head-{cluster}"
    no_such = aws.iam.exceptions.NoSuchEntityException
    try:
        role = aws.iam.get_role(RoleName=name)["Role"]
    except no_such:
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                          "Principal": {"Service": "ec2.amazonaws.com"}}]}
        role = aws.call(aws.iam, "create_role", RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                        Description=f"the head node of launch cluster {cluster}: the autoscaler calls EC2 with it")["Role"]
    # (re)written every bootstrap, so a cluster made by an older version loses broader rights
    aws.call(aws.iam, "put_role_policy", RoleName=name, PolicyName="launch-autoscaler",
             PolicyDocument=json.dumps(head_policy(cluster, role["Arn"])))
    try:
        profile = aws.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except no_such:
        profile = aws.call(aws.iam, "create_instance_profile", InstanceProfileName=name)["InstanceProfile"]
    if not any(r["RoleName"] == name for r in profile.get("Roles", [])):
        aws.call(aws.iam, "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)
    return name


# --- the provider -------------------------------------------------------------------------------------


class Provider(CloudProvider):
    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = section = Section.of(spec.config.provider)
        self.aws = _Clients(section)
        self.state = spec.provider_state
        self.head_bind_host, self.head_port = section.head_bind_host, section.head_port
        self.capabilities = Capabilities(spot=True, zones=True, stop_start=True,
                                         reuses_ips=True, live_spot_prices=True)
        # Ray's key and default: idle nodes are stopped, and started again before new ones are made
        self.cache_stopped_nodes = section.cache_stopped_nodes is not False
        self._instance_types: dict[str, dict] = {}

    # --- catalog ----------------------------------------------------------------------------------

    def instance_type(self, name: str, node_type: str = "") -> dict:
        if name not in self._instance_types:
            info = self.aws.call(self.aws.ec2, "describe_instance_types", node_type, InstanceTypes=[name])["InstanceTypes"]
            if not info:
                raise InvalidRequest(f"available_node_types.{node_type}.node_config.InstanceType: unknown instance "
                                     f"type {name!r} in {self.section.region}")
            self._instance_types[name] = info[0]
        return self._instance_types[name]

    def resources_of(self, name: str, node_type: str = "") -> dict[str, float]:
        info = self.instance_type(name, node_type)
        res = {"CPU": float(info["VCpuInfo"]["DefaultVCpus"]), "memory": float(info["MemoryInfo"]["SizeInMiB"]) * 2**20}
        gpus = info.get("GpuInfo", {}).get("Gpus", [])
        if gpus:
            res["GPU"] = float(sum(g.get("Count", 0) for g in gpus))
            res[f"accelerator_type:{gpus[0]['Name']}"] = 1.0
        return res

    def node_types(self) -> dict[str, dict[str, float]]:
        """Each type's resources from EC2; for equivalent instance types, what every one of them has (so
        what is placed on a node of the type fits whichever of them is launched)."""
        out = {}
        for name, nt in self.spec.config.available_node_types.items():
            each = [self.resources_of(m, name) for m in machines_of(nt.node_config)]
            out[name] = {k: min(r.get(k, 0.0) for r in each) for k in set.intersection(*map(set, each))} \
                if each else {}
        return out

    # --- nodes --------------------------------------------------------------------------------------

    def _params(self, node_type: str, tags: dict[str, str]) -> dict:
        nt = self.spec.config.available_node_types[node_type]
        params = json.loads(json.dumps(nt.node_config))
        params.pop("SubnetIds", None)  # Ray's key, not EC2's: resolved at bootstrap (type_subnets)
        if node_type in (self.state.get("images") or {}):
            params.setdefault("ImageId", self.state["images"][node_type])
        if self.state.get("key_name"):
            params.setdefault("KeyName", self.state["key_name"])
        if "NetworkInterfaces" not in params and "SecurityGroupIds" not in params and self.state.get("security_group"):
            params["SecurityGroupIds"] = [self.state["security_group"]]
        if node_type == self.spec.config.head_node_type and self.state.get("head_profile"):
            params.setdefault("IamInstanceProfile", {"Name": self.state["head_profile"]})
        if nt.spot and "InstanceMarketOptions" not in params:
            params["InstanceMarketOptions"] = {"MarketType": "spot"}
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params["TagSpecifications"] = [s for s in params.get("TagSpecifications", [])
                                       if s.get("ResourceType") not in ("instance", "volume")] + [
            {"ResourceType": "instance", "Tags": tag_list}, {"ResourceType": "volume", "Tags": tag_list}]
        return params

    def _start_stopped(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        match = {k: v for k, v in tags.items() if k in (TAG_CLUSTER, TAG_NODE_TYPE, TAG_LAUNCH_HASH)}
        match[TAG_NODE_TYPE] = node_type
        cached = [n for n in self._describe(match, ["stopped"]) if not n.spot][:count]
        if not cached:
            return []
        ids = [n.id for n in cached]
        self.aws.call(self.aws.ec2, "start_instances", node_type, InstanceIds=ids)
        self.aws.call(self.aws.ec2, "create_tags", node_type, Resources=ids,
                      Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        for n in cached:
            n.tags.update(tags)
            n.state = "pending"
        return cached

    def stop(self, node_ids: list[str]) -> None:
        """Stop (not terminate) instances: their disks stay, and `create` starts them again."""
        for i in range(0, len(node_ids), TERMINATE_BATCH):
            self.aws.call(self.aws.ec2, "stop_instances", InstanceIds=list(node_ids[i:i + TERMINATE_BATCH]))

    def spot_prices(self, machines: list[str]) -> dict[str, float]:
        """EC2's spot price history from now on: each zone's latest price, the cheapest zone of the cluster's
        (all of the region's when it names none)."""
        zones = {s["zone"] for s in self.state.get("subnets") or [] if s.get("zone")}
        latest: dict[tuple[str, str], tuple] = {}
        kwargs = {"InstanceTypes": list(machines), "StartTime": datetime.now(timezone.utc),
                  "ProductDescriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"], "MaxResults": 1000}
        while True:
            reply = self.aws.call(self.aws.ec2, "describe_spot_price_history", **kwargs)
            for p in reply.get("SpotPriceHistory", []):
                key = (p["InstanceType"], p["AvailabilityZone"])
                if (not zones or key[1] in zones) and (key not in latest or p["Timestamp"] > latest[key][0]):
                    latest[key] = (p["Timestamp"], float(p["SpotPrice"]))
            if not reply.get("NextToken"):
                break
            kwargs["NextToken"] = reply["NextToken"]
        out: dict[str, float] = {}
        for (machine, _), (_, price) in latest.items():
            out[machine] = min(price, out.get(machine, price))
        return out

    def stopped(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        """Stopped (cached) instances, which `list` leaves out."""
        return self._describe(tag_filters, STOPPED_STATES)

    def _zones(self, node_type: str) -> list[dict]:
        """Where to launch, in order: for each instance type (equivalents cheapest first, by the catalog in
        the cluster's region; unknown ones last, in the user's order), the subnets (one per zone: the
        type's own, else the cluster's; none when its node_config pins a subnet or network interfaces).
        An offering out of capacity lately comes after the others (CloudProvider._offerings)."""
        nt = self.spec.config.available_node_types[node_type]
        node_config = nt.node_config
        if "SubnetId" in node_config or "NetworkInterfaces" in node_config:
            subnets = [{"id": None, "zone": None}]
        else:
            own = (self.state.get("type_subnets") or {}).get(node_type)
            subnets = own or self.state.get("subnets") or [{"id": None, "zone": None}]
        return self._offerings(machines_of(node_config), subnets, self.section.region, nt.spot or _spot_of(node_config))

    def _launch(self, node_type: str, subnet: dict, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        call = dict(self._params(node_type, tags), MinCount=1, MaxCount=count)  # fewer than asked is not an error
        call["InstanceType"] = subnet["machine"]
        if subnet["id"]:
            call["SubnetId"] = subnet["id"]
        reply = self.aws.call(self.aws.ec2, "run_instances", node_type, subnet["zone"], **call)
        return [self._info(i) for i in reply["Instances"]]

    def _info(self, inst: dict) -> NodeInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        launched = inst.get("LaunchTime")
        return NodeInfo(
            id=inst["InstanceId"], node_type=tags.get(TAG_NODE_TYPE, inst.get("InstanceType", "")),
            state=inst["State"]["Name"], tags=tags, internal_ip=inst.get("PrivateIpAddress"),
            external_ip=inst.get("PublicIpAddress"),
            launched_at=launched.timestamp() if hasattr(launched, "timestamp") else time.time(),
            spot=inst.get("InstanceLifecycle") == "spot",
            machine=inst.get("InstanceType", ""), zone=(inst.get("Placement") or {}).get("AvailabilityZone", ""),
        )

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        return self._describe(tag_filters, LIVE_STATES)

    def _describe(self, tag_filters: dict[str, str], states: list[str]) -> list[NodeInfo]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tag_filters.items()]
        filters.append({"Name": "instance-state-name", "Values": states})
        nodes, token = [], None
        while True:
            kwargs = {"Filters": filters, "MaxResults": 500, **({"NextToken": token} if token else {})}
            reply = self.aws.call(self.aws.ec2, "describe_instances", **kwargs)
            nodes += [self._info(i) for r in reply["Reservations"] for i in r["Instances"]]
            token = reply.get("NextToken")
            if not token:
                break
        return sorted(nodes, key=lambda n: (n.launched_at, n.id))

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        try:
            self.aws.call(self.aws.ec2, "create_tags", Resources=[node_id],
                          Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        except NodeNotFound:
            raise NodeNotFound(node_id) from None

    def terminate(self, node_ids: list[str]) -> None:
        for i in range(0, len(node_ids), TERMINATE_BATCH):
            batch = list(node_ids[i:i + TERMINATE_BATCH])
            while batch:
                try:
                    self.aws.call(self.aws.ec2, "terminate_instances", InstanceIds=batch)
                    break
                except NodeNotFound as e:  # some ids are gone already: idempotent, drop them and retry
                    gone = [b for b in batch if b in str(e)]
                    if not gone:
                        raise
                    batch = [b for b in batch if b not in gone]
