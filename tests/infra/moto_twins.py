"""AWS on moto whose instances are VM twins: a moto server on the twins' bridge (the head's autoscaler
calls it from its twin), a VPC and subnet in the twins' range, and a watcher that gives every running
instance a twin at its private IP and kills the twin when the instance is terminated. A head's twin
lets the laptop in on port 22 only; an instance of an image in `docker_amis` has a Docker daemon. Every
instance's twin has a metadata service (tests/infra/metadata.py) giving the credentials of its instance
profile's role, as IMDSv2 does: a head with no keys in its config calls EC2 with those."""

from __future__ import annotations

import logging
import threading

import requests

from tests.infra.metadata import Metadata
from tests.infra.twins import TwinNet

REGION = "us-west-2"
ZONE = "us-west-2a"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# the laptop's own credentials, as `aws configure` or the environment gives them
LAPTOP_ENV = {"AWS_ACCESS_KEY_ID": "laptop-key", "AWS_SECRET_ACCESS_KEY": "laptop-secret-never-on-the-head"}


class MotoTwins:
    def __init__(self, net: TwinNet):
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.net = net
        self.server = ThreadedMotoServer(ip_address=net.gateway, port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=self.url, **CREDENTIALS)
        self.instances: dict[str, str] = {}  # instance id -> twin name
        self.metadata: dict[str, Metadata] = {}  # instance id -> its twin's metadata service
        self.docker_amis: set[str] = set()  # instances of these images get a Docker daemon (containers.py)
        self.vpc_id = self.subnet_id = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.reset()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="moto-twins")
        self._thread.start()

    def provider(self, keys: bool = True, **extra) -> dict:
        """A provider section for a cluster in this cloud (Ray's keys, endpoint_url as for a private cloud);
        without `keys` the laptop's own credentials are its environment's (LAPTOP_ENV) and the head's
        its instance's (the metadata service)."""
        return {"type": "aws", "region": REGION, "availability_zone": ZONE, "vpc_id": self.vpc_id,
                "aws_credentials": {**(CREDENTIALS if keys else {}), "endpoint_url": self.url}, **extra}

    def reset(self) -> None:
        """A fresh account: every twin of an instance goes, then a VPC and subnet in the twins' range."""
        with self._lock:
            for instance in list(self.instances):
                self._remove(instance)
            requests.post(f"{self.url}/moto-api/reset", timeout=10)
            self.vpc_id = self.ec2.create_vpc(CidrBlock=f"10.{self.net.n}.0.0/16")["Vpc"]["VpcId"]
            self.subnet_id = self.ec2.create_subnet(VpcId=self.vpc_id, CidrBlock=self.net.subnet,
                                                    AvailabilityZone=ZONE)["Subnet"]["SubnetId"]

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                reply = self.ec2.describe_instances()
            except Exception:  # noqa: BLE001  the server is being reset or stopped
                continue
            running = {i["InstanceId"]: i for r in reply["Reservations"]
                       for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")}
            with self._lock:
                for instance, info in running.items():
                    ip = info.get("PrivateIpAddress") or ""
                    if instance not in self.instances and ip.startswith(f"10.{self.net.n}.0."):
                        self.instances[instance] = instance
                        twin = self.net.twin(instance, ip, docker=info.get("ImageId") in self.docker_amis)
                        profile = (info.get("IamInstanceProfile") or {}).get("Arn", "")
                        self.metadata[instance] = Metadata(twin, cloud="aws", role=profile.rsplit("/", 1)[-1] or None)
                        if any(t["Key"] == "launch-kind" and t["Value"] == "head" for t in info.get("Tags", [])):
                            twin.block_laptop()  # a head behind a firewall that lets SSH in only
                for instance in [i for i in self.instances if i not in running]:
                    self._remove(instance)  # terminated: the machine stops

    def _remove(self, instance: str) -> None:
        metadata = self.metadata.pop(instance, None)
        if metadata is not None:
            metadata.close()
        self.net.remove(self.instances.pop(instance))

    def twin(self, instance_id: str):
        return self.net.twins.get(self.instances.get(instance_id, ""))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.stop()
