"""A small client of the head service, for the launcher, the agent and tests."""

from __future__ import annotations

import grpc

from runtime.auth import call_metadata
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc


class HeadClient:
    def __init__(self, address: str, token: str, timeout_s: float = 10.0):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.HeadStub(self._channel)
        self._md = call_metadata(token)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cluster_state(self) -> pb.ClusterState:
        return self._stub.GetClusterState(pb.ClusterStateRequest(), metadata=self._md, timeout=self.timeout_s)

    def register(self, request: pb.RegisterNodeRequest) -> pb.RegisterNodeReply:
        return self._stub.RegisterNode(request, metadata=self._md, timeout=self.timeout_s)

    def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        return self._stub.Heartbeat(request, metadata=self._md, timeout=self.timeout_s)
