"""The node agent: registers its node's resources with the head and heartbeats.

If the head forgets the node (a head restart) the agent registers again; if the head is unreachable it
keeps retrying with capped backoff, so a worker started before its head catches up.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import grpc

from runtime.client import HeadClient
from runtime.node_config import NodeRuntimeConfig, runtime_dir
from runtime.proto import head_pb2 as pb
from runtime.resources import node_resources

log = logging.getLogger("launch.runtime.agent")


class Agent:
    def __init__(self, cfg: NodeRuntimeConfig, head_address: str):
        self.cfg = cfg
        self.client = HeadClient(head_address, cfg.token, timeout_s=5.0)
        self.total = node_resources(cfg.resources)
        self.idle_since = time.time()
        self.interval = cfg.heartbeat_interval_s
        self.stop = threading.Event()

    def register(self) -> None:
        reply = self.client.register(
            pb.RegisterNodeRequest(
                node_id=self.cfg.node_id,
                node_type=self.cfg.node_type,
                address=self.cfg.address,
                is_head=self.cfg.is_head,
                total=pb.Resources(amounts=self.total),
                labels=self.cfg.labels,
            )
        )
        self.interval = reply.heartbeat_interval_s or self.interval
        log.info("registered with the head at %s: %s", self.client.address, self.total)

    def run(self) -> None:
        registered = False
        backoff = 0.2
        while not self.stop.is_set():
            try:
                if not registered:
                    self.register()
                    registered = True
                reply = self.client.heartbeat(
                    pb.HeartbeatRequest(
                        node_id=self.cfg.node_id,
                        available=pb.Resources(amounts=self.total),
                        idle_since=self.idle_since,
                    )
                )
                if not reply.known:
                    log.warning("the head does not know this node; registering again")
                    registered = False
                    continue
                backoff = 0.2
                self.stop.wait(self.interval)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the head refused this node's cluster token")
                else:
                    log.warning("head unreachable (%s); retrying in %.1fs", e.code().name, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.client.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = NodeRuntimeConfig.load()
    head_address = cfg.head_address or (runtime_dir() / "head.address").read_text().strip()
    agent = Agent(cfg, head_address)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    agent.run()
    log.info("agent stopped")


if __name__ == "__main__":
    main()
