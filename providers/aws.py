"""The `aws` provider (EC2 through boto3, imported only when an aws cluster is used).

- bootstrap_config fills in what is missing and reuses what exists: a key pair (imported from
  auth.ssh_public_key, or created and its private key saved 0600), one security group per cluster
  (SSH and the head's port from provider.ssh_cidr, all traffic within the group), subnets of the
  requested availability zones, and an IAM instance profile for the head so the autoscaler there calls
  EC2 with a role, never with the user's keys. Node types without `resources` get CPU, memory, GPUs and
  the accelerator type from describe_instance_types.
- create_nodes: run_instances with TagSpecifications, so an instance is tagged from birth; node_config
  passes through; spot through InstanceMarketOptions. An out-of-capacity answer moves on to the next
  subnet (zone); when all are out, CapacityError(type, zone) tells the planner to back off. Throttling
  is retried with exponential backoff and jitter; auth and parameter errors become a one-line ConfigError.
- list_nodes by tag filters, paginated; terminate in batches of at most 1,000 ids, idempotent.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from launcher.config import ClusterConfig
from launcher.errors import ConfigError
from launcher.ssh import SSHCommandRunner
from providers.base import (
    TAG_CLUSTER, CapacityError, NodeInfo, NodeNotFound, ProviderError, QuotaError, TransientError,
)

THROTTLING = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
              "TooManyRequestsException", "ServiceUnavailable", "Unavailable", "InternalError"}
CAPACITY = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity",
            "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "InsufficientFreeAddressesInSubnet",
            "UnfulfillableCapacity"}
QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"}
CONFIG = {"UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId", "OptInRequired", "SignatureDoesNotMatch",
          "InvalidParameterValue", "InvalidParameterCombination", "InvalidParameter", "MissingParameter",
          "InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidKeyPair.NotFound", "InvalidSubnetID.NotFound",
          "InvalidGroup.NotFound", "InvalidInstanceType", "Unsupported", "AccessDenied", "AccessDeniedException"}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
TERMINATE_BATCH = 1000
DEFAULT_HEAD_PORT = 6380


def _boto3():
    try:
        import boto3
        import botocore
    except ImportError:
        raise ConfigError("provider.type: aws needs the AWS SDK: pip install 'launch[aws]'") from None
    return boto3, botocore


def error_code(e: Exception) -> str:
    return getattr(e, "response", {}).get("Error", {}).get("Code", "") if hasattr(e, "response") else ""


class AWSProvider:

    def __init__(self, cfg: ClusterConfig, cluster_dir: Path):
        boto3, botocore = _boto3()
        self._ClientError = botocore.exceptions.ClientError
        self.cfg = cfg
        self.cluster_dir = cluster_dir
        p = cfg.provider
        if not p.region:
            raise ConfigError("provider.region: required for aws (e.g. us-west-2)")
        self.region = p.region
        self.zones = [z.strip() for z in (p.availability_zone or "").split(",") if z.strip()]
        self.head_port = int(p.extra.get("head_port", DEFAULT_HEAD_PORT))
        self.head_bind_host = str(p.extra.get("head_bind_host", "0.0.0.0"))
        self.ssh_cidr = str(p.extra.get("ssh_cidr", "0.0.0.0/0"))
        self.retry_base_s = float(p.extra.get("retry_base_s", 0.5))
        self.retry_attempts = int(p.extra.get("retry_attempts", 6))
        # For tests against moto, where no SSH reaches an instance: node commands run on this machine,
        # so nodes are reached at 127.0.0.1 and the head listens there, on any free port.
        self.local_runner = bool(p.extra.get("local_runner", False))
        if self.local_runner:
            self.head_bind_host = "127.0.0.1"
            self.head_port = int(p.extra.get("head_port", 0))
        # The autoscaler runs on the head. All state is in EC2 tags, but a real head also needs the
        # cluster's SSH key and file mounts shipped to it, which is not built yet: until then only
        # local_runner clusters (whose head is this machine) autoscale; others are sized by `up`.
        self.supports_autoscaler = self.local_runner
        session = boto3.session.Session(region_name=self.region)
        self.ec2 = session.client("ec2")
        self.iam = session.client("iam")
        self.known_hosts = cluster_dir / "known_hosts"
        self._instance_types: dict[str, dict] = {}
        self._runners: dict[str, object] = {}
        self.subnets: list[dict] = []

    # --- calls, with retries and typed errors -------------------------------------------------------

    def call(self, client, op: str, node_type: str = "", **kwargs):
        for attempt in range(self.retry_attempts):
            try:
                return getattr(client, op)(**kwargs)
            except self._ClientError as e:
                code = error_code(e)
                message = e.response.get("Error", {}).get("Message", str(e))
                if code in THROTTLING:
                    if attempt == self.retry_attempts - 1:
                        raise TransientError(f"aws {op}: still throttled after {self.retry_attempts} tries ({code})")
                    # full jitter: spread retries of many callers apart
                    time.sleep(random.uniform(0, self.retry_base_s * 2 ** attempt))
                    continue
                if code in CAPACITY:
                    raise CapacityError(node_type or "?", kwargs.get("SubnetId"), f"{code}: {message}") from None
                if code in QUOTA:
                    raise QuotaError(node_type or "?", f"{code}: {message}") from None
                if code in CONFIG or code.startswith("Invalid"):
                    where = f"available_node_types.{node_type}.node_config" if node_type else "provider"
                    raise ConfigError(f"{where}: aws {op} refused: {code}: {message}") from None
                raise ProviderError(f"aws {op} failed: {code or type(e).__name__}: {message}") from None

    # --- bootstrap ----------------------------------------------------------------------------------

    def bootstrap_config(self, cfg: ClusterConfig) -> ClusterConfig:
        cfg = cfg.model_copy(deep=True)
        cfg._base_dir = self.cfg.base_dir
        name = cfg.cluster_name
        vpc_id = self._vpc_id(cfg)
        self.subnets = self._subnets(vpc_id)
        key_name, key_path = self._key_pair(cfg, name)
        if key_path:
            cfg.auth.ssh_private_key = str(key_path)
        cfg.auth.ssh_user = cfg.auth.ssh_user or "ubuntu"
        sg_id = self._security_group(name, vpc_id)
        profile = self._head_profile(name)
        self._fill_resources(cfg)
        for type_name, nt in cfg.available_node_types.items():
            nc = nt.node_config
            nc.setdefault("KeyName", key_name)
            if "NetworkInterfaces" not in nc and "SecurityGroupIds" not in nc:
                nc["SecurityGroupIds"] = [sg_id]
            if type_name == cfg.head_node_type:
                nc.setdefault("IamInstanceProfile", {"Name": profile})
        self.cfg = cfg
        return cfg

    def _vpc_id(self, cfg: ClusterConfig) -> str:
        given = cfg.provider.extra.get("vpc_id")
        if given:
            return given
        vpcs = self.call(self.ec2, "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ConfigError("provider.vpc_id: this region has no default VPC; name one")
        return vpcs[0]["VpcId"]

    def _subnets(self, vpc_id: str) -> list[dict]:
        filters = [{"Name": "vpc-id", "Values": [vpc_id]}]
        if self.zones:
            filters.append({"Name": "availability-zone", "Values": self.zones})
        subnets = self.call(self.ec2, "describe_subnets", Filters=filters)["Subnets"]
        if not subnets:
            raise ConfigError(f"provider.availability_zone: no subnet of {vpc_id} in {', '.join(self.zones) or 'any zone'}")
        order = {z: i for i, z in enumerate(self.zones)}
        # one subnet per zone, in the order the user gave the zones
        by_zone: dict[str, dict] = {}
        for s in sorted(subnets, key=lambda s: (not s.get("DefaultForAz", False), s["SubnetId"])):
            by_zone.setdefault(s["AvailabilityZone"], s)
        return sorted(by_zone.values(), key=lambda s: (order.get(s["AvailabilityZone"], 99), s["AvailabilityZone"]))

    def _key_pair(self, cfg: ClusterConfig, cluster: str) -> tuple[str, Path | None]:
        key_name = str(cfg.provider.extra.get("key_name", f"launch-{cluster}"))
        existing = self.call(self.ec2, "describe_key_pairs",
                             Filters=[{"Name": "key-name", "Values": [key_name]}])["KeyPairs"]
        if cfg.auth.ssh_public_key:
            if not existing:
                public = Path(cfg.auth.ssh_public_key).expanduser().read_bytes()
                self.call(self.ec2, "import_key_pair", KeyName=key_name, PublicKeyMaterial=public)
            return key_name, None
        key_path = self.cluster_dir / f"{key_name}.pem"
        if existing:
            if not key_path.exists() and not cfg.auth.ssh_private_key:
                raise ConfigError(f"auth.ssh_private_key: key pair {key_name} exists in {self.region} but its "
                                  f"private key is not at {key_path}; point auth.ssh_private_key at it")
            return key_name, key_path if key_path.exists() else None
        material = self.call(self.ec2, "create_key_pair", KeyName=key_name,
                             TagSpecifications=[{"ResourceType": "key-pair",
                                                 "Tags": [{"Key": TAG_CLUSTER, "Value": cluster}]}])["KeyMaterial"]
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(material)
        return key_name, key_path

    def _security_group(self, cluster: str, vpc_id: str) -> str:
        name = f"launch-{cluster}"
        found = self.call(self.ec2, "describe_security_groups", Filters=[
            {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        if found:
            return found[0]["GroupId"]
        sg_id = self.call(self.ec2, "create_security_group", GroupName=name, VpcId=vpc_id,
                          Description=f"launch cluster {cluster}", TagSpecifications=[{
                              "ResourceType": "security-group", "Tags": [{"Key": TAG_CLUSTER, "Value": cluster}]}])["GroupId"]
        self.call(self.ec2, "authorize_security_group_ingress", GroupId=sg_id, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": self.ssh_cidr}]},
            {"IpProtocol": "tcp", "FromPort": self.head_port, "ToPort": self.head_port,
             "IpRanges": [{"CidrIp": self.ssh_cidr}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg_id}]},
        ])
        return sg_id

    def _head_profile(self, cluster: str) -> str:
        name = f"launch-head-{cluster}"
        no_such = self.iam.exceptions.NoSuchEntityException
        try:
            self.iam.get_role(RoleName=name)
        except no_such:
            trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                              "Principal": {"Service": "ec2.amazonaws.com"}}]}
            self.call(self.iam, "create_role", RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                      Description=f"the head node of launch cluster {cluster}: the autoscaler calls EC2 with it")
            policy = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["ec2:*"], "Resource": "*"},
                {"Effect": "Allow", "Action": ["iam:PassRole"], "Resource": "*"}]}
            self.call(self.iam, "put_role_policy", RoleName=name, PolicyName="launch-autoscaler",
                      PolicyDocument=json.dumps(policy))
        try:
            profile = self.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except no_such:
            profile = self.call(self.iam, "create_instance_profile", InstanceProfileName=name)["InstanceProfile"]
        if not any(r["RoleName"] == name for r in profile.get("Roles", [])):
            self.call(self.iam, "add_role_to_instance_profile", InstanceProfileName=name, RoleName=name)
        return name

    # --- instance types -----------------------------------------------------------------------------

    def instance_type(self, name: str) -> dict:
        if name not in self._instance_types:
            info = self.call(self.ec2, "describe_instance_types", InstanceTypes=[name])["InstanceTypes"]
            if not info:
                raise ConfigError(f"node_config.InstanceType: unknown instance type {name!r} in {self.region}")
            self._instance_types[name] = info[0]
        return self._instance_types[name]

    def resources_of(self, name: str) -> dict[str, float]:
        info = self.instance_type(name)
        res = {"CPU": float(info["VCpuInfo"]["DefaultVCpus"]), "memory": float(info["MemoryInfo"]["SizeInMiB"]) * 2**20}
        gpus = info.get("GpuInfo", {}).get("Gpus", [])
        if gpus:
            res["GPU"] = float(sum(g.get("Count", 0) for g in gpus))
            res[f"accelerator_type:{gpus[0]['Name']}"] = 1.0
        return res

    def _fill_resources(self, cfg: ClusterConfig) -> None:
        for type_name, nt in cfg.available_node_types.items():
            it = nt.node_config.get("InstanceType")
            if not nt.resources and it:
                nt.resources = self.resources_of(it)

    # --- nodes --------------------------------------------------------------------------------------

    def create_nodes(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        nt = self.cfg.available_node_types[node_type]
        params = json.loads(json.dumps(nt.node_config))
        if nt.spot and "InstanceMarketOptions" not in params:
            params["InstanceMarketOptions"] = {"MarketType": "spot"}
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params["TagSpecifications"] = [s for s in params.get("TagSpecifications", [])
                                       if s.get("ResourceType") not in ("instance", "volume")] + [
            {"ResourceType": "instance", "Tags": tag_list}, {"ResourceType": "volume", "Tags": tag_list}]
        pinned = "SubnetId" in params or "NetworkInterfaces" in params
        subnets = [None] if pinned else [s["SubnetId"] for s in self.subnets] or [None]
        last: CapacityError | None = None
        for subnet in subnets:
            call = dict(params, MinCount=1, MaxCount=count)  # fewer than asked is not an error
            if subnet:
                call["SubnetId"] = subnet
            try:
                reply = self.call(self.ec2, "run_instances", node_type=node_type, **call)
            except CapacityError as e:
                zone = next((s["AvailabilityZone"] for s in self.subnets if s["SubnetId"] == subnet), subnet)
                last = CapacityError(node_type, zone, str(e).split(": ", 1)[-1])
                continue
            return [self._info(i) for i in reply["Instances"]]
        raise last or CapacityError(node_type)

    def _info(self, inst: dict) -> NodeInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        launched = inst.get("LaunchTime")
        local = "127.0.0.1" if self.local_runner else None
        return NodeInfo(
            id=inst["InstanceId"], node_type=tags.get("launch-node-type", inst.get("InstanceType", "")),
            state=inst["State"]["Name"], tags=tags, internal_ip=local or inst.get("PrivateIpAddress"),
            external_ip=local or inst.get("PublicIpAddress"),
            launched_at=launched.timestamp() if hasattr(launched, "timestamp") else time.time(),
            spot=inst.get("InstanceLifecycle") == "spot",
        )

    def list_nodes(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tag_filters.items()]
        filters.append({"Name": "instance-state-name", "Values": LIVE_STATES})
        nodes, token = [], None
        while True:
            kwargs = {"Filters": filters, "MaxResults": 500}
            if token:
                kwargs["NextToken"] = token
            reply = self.call(self.ec2, "describe_instances", **kwargs)
            nodes += [self._info(i) for r in reply["Reservations"] for i in r["Instances"]]
            token = reply.get("NextToken")
            if not token:
                break
        return sorted(nodes, key=lambda n: (n.launched_at, n.id))

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        try:
            self.call(self.ec2, "create_tags", Resources=[node_id],
                      Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        except ConfigError as e:
            if "InvalidInstanceID" in str(e):
                raise NodeNotFound(node_id) from None
            raise

    def terminate_nodes(self, node_ids: list[str]) -> None:
        for i in range(0, len(node_ids), TERMINATE_BATCH):
            batch = list(node_ids[i:i + TERMINATE_BATCH])
            while batch:
                try:
                    self.call(self.ec2, "terminate_instances", InstanceIds=batch)
                    break
                except ConfigError as e:  # some ids are gone already: idempotent, drop them and retry
                    gone = [b for b in batch if b in str(e)]
                    if "InvalidInstanceID" not in str(e) or not gone:
                        raise
                    batch = [b for b in batch if b not in gone]
        for node_id in node_ids:
            runner = self._runners.pop(node_id, None)
            if self.local_runner:  # the "instance" ran on this machine: its processes go with it
                from providers.local import kill_node_processes

                kill_node_processes(node_id)
            elif runner is not None:
                runner.close()

    def command_runner(self, node: NodeInfo):
        if node.id not in self._runners:
            if self.local_runner:
                from launcher.command_runner import LocalCommandRunner
                from providers.local import MARKER_ENV

                home = self.cluster_dir / "aws-local" / node.id
                home.mkdir(parents=True, exist_ok=True)
                self._runners[node.id] = LocalCommandRunner(home, {MARKER_ENV: node.id}, sys.executable)
            else:
                use_internal = self.cfg.provider.use_internal_ips
                host = (node.internal_ip if use_internal else node.external_ip) or node.internal_ip
                auth = self.cfg.auth
                self._runners[node.id] = SSHCommandRunner(
                    host, 22, auth.ssh_user or "ubuntu", auth.ssh_private_key, self.known_hosts,
                    proxy_command=auth.ssh_proxy_command,
                    connect_timeout=float(self.cfg.provider.extra.get("ssh_connect_timeout_s", 10)))
        return self._runners[node.id]
