"""The head service: node registry, heartbeats, and the cluster state the autoscaler reads.

Started on the head node by `python -m runtime.node start`; serves gRPC on the node config's bind host
and port (0: any free port), behind the cluster-token interceptor, and writes the address it serves on
to ~/.launch-runtime/head.address once it is listening.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from runtime.auth import TokenInterceptor
from runtime.node_config import NodeRuntimeConfig, runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc

log = logging.getLogger("launch.runtime.head")

ALIVE, DEAD = "alive", "dead"


@dataclass
class NodeRecord:
    node_id: str
    node_type: str
    address: str
    is_head: bool
    total: dict[str, float]
    labels: dict[str, str]
    registered_at: float
    last_heartbeat: float
    available: dict[str, float] = field(default_factory=dict)
    idle_since: float = 0.0
    state: str = ALIVE


class HeadServicer(pb_grpc.HeadServicer):
    def __init__(self, heartbeat_interval_s: float, node_timeout_s: float, clock=time.time):
        self.heartbeat_interval_s = heartbeat_interval_s
        self.node_timeout_s = node_timeout_s
        self.clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.lock = threading.Lock()

    def RegisterNode(self, request, context):
        now = self.clock()
        total = dict(request.total.amounts)
        with self.lock:
            self.nodes[request.node_id] = NodeRecord(
                node_id=request.node_id,
                node_type=request.node_type,
                address=request.address,
                is_head=request.is_head,
                total=total,
                labels=dict(request.labels),
                registered_at=now,
                last_heartbeat=now,
                available=dict(total),
                idle_since=now,
            )
        log.info("node %s (%s) registered from %s: %s", request.node_id, request.node_type, request.address, total)
        return pb.RegisterNodeReply(heartbeat_interval_s=self.heartbeat_interval_s)

    def Heartbeat(self, request, context):
        with self.lock:
            rec = self.nodes.get(request.node_id)
            if rec is None or rec.state == DEAD:
                return pb.HeartbeatReply(known=False)
            rec.last_heartbeat = self.clock()
            rec.available = dict(request.available.amounts)
            rec.idle_since = request.idle_since
        return pb.HeartbeatReply(known=True)

    def GetClusterState(self, request, context):
        with self.lock:
            nodes = [
                pb.NodeState(
                    node_id=r.node_id,
                    node_type=r.node_type,
                    address=r.address,
                    is_head=r.is_head,
                    state=r.state,
                    total=pb.Resources(amounts=r.total),
                    available=pb.Resources(amounts=r.available),
                    labels=r.labels,
                    registered_at=r.registered_at,
                    last_heartbeat=r.last_heartbeat,
                    idle_since=r.idle_since,
                )
                for r in self.nodes.values()
            ]
        return pb.ClusterState(nodes=nodes, now=self.clock())

    def mark_dead_nodes(self) -> list[str]:
        """Nodes silent for longer than the timeout are dead; returns the ones newly declared so."""
        now = self.clock()
        newly = []
        with self.lock:
            for r in self.nodes.values():
                if r.state == ALIVE and now - r.last_heartbeat > self.node_timeout_s:
                    r.state = DEAD
                    newly.append(r.node_id)
        for node_id in newly:
            log.warning("node %s missed heartbeats for %.0fs: declared dead", node_id, self.node_timeout_s)
        return newly


def serve(cfg: NodeRuntimeConfig) -> tuple[grpc.Server, HeadServicer, int]:
    servicer = HeadServicer(cfg.heartbeat_interval_s, cfg.node_timeout_s)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), interceptors=[TokenInterceptor(cfg.token)]
    )
    pb_grpc.add_HeadServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{cfg.bind_host}:{cfg.head_port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {cfg.bind_host}:{cfg.head_port}")
    server.start()
    return server, servicer, port


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = NodeRuntimeConfig.load()
    server, servicer, port = serve(cfg)
    address = f"{cfg.address}:{port}"
    # Written last and atomically: its presence means the head is serving.
    addr_file = runtime_dir() / "head.address"
    tmp = addr_file.with_suffix(".tmp")
    tmp.write_text(address)
    os.replace(tmp, addr_file)
    log.info("head service listening on %s (bound to %s)", address, cfg.bind_host)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(min(1.0, cfg.node_timeout_s / 4)):
        servicer.mark_dead_nodes()
    addr_file.unlink(missing_ok=True)
    server.stop(grace=2).wait()
    log.info("head service stopped")


if __name__ == "__main__":
    main()
