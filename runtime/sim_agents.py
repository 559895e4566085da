"""The light node agents of the `sim` provider (providers/sim.py), many in one process:

    python -m runtime.sim_agents STATE_FILE

Started on the head by the provider (its HOME is the head node's, so the head's address and the cluster
token are in this node's files, as a real agent finds them). Every POLL_S it reads the provider's state:
a simulated instance that has booted gets an agent; one whose record is gone (terminated, or taken back
by the spot model) loses it, as a machine that goes. An agent speaks the head's real protocol over gRPC
(asyncio): RegisterNode with its node type's declared resources, a Heartbeat every interval (carrying
a spot notice once its record's notice time has come), the WorkStream of assignments, and a Report for
each item once it has "run" for its declared duration (DURATION_ENV; a task's value is
None, a job exits 0; an actor holds its resources until it is cancelled). The process ends once no
simulated instance has been left for IDLE_EXIT_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import cloudpickle
import grpc

from core.paths import HEAD_ADDRESS, on_this_node
from runtime.auth import call_metadata
from runtime.limits import GRPC_OPTIONS
from runtime.node_config import NodeRuntimeConfig
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc

log = logging.getLogger("launch.sim")
POLL_S = 0.2
IDLE_EXIT_S = 30.0
AGENTS_PER_CHANNEL = 50  # one HTTP/2 connection carries this many agents' streams (its stream limit is ~100)
NONE = cloudpickle.dumps(None)
REPORT_BATCH_S = 0.01
DURATION_ENV = "LAUNCH_SIM_DURATION_S"  # how long a simulated node "runs" an item


def duration_of(spec: pb.WorkSpec) -> float | None:
    """How long the item "runs" (None: until cancelled, an actor)."""
    if spec.kind == "actor":
        return None
    env: dict = dict(spec.env) if spec.kind == "job" else {}
    if spec.runtime_env:
        try:
            env = {**env, **(json.loads(spec.runtime_env).get("env_vars") or {})}
        except (ValueError, AttributeError):
            pass
    try:
        return max(0.0, float(env.get(DURATION_ENV) or 0.0))
    except (TypeError, ValueError):
        return 0.0


class Agent:
    def __init__(self, stub, md, node_id: str, record: dict, total: dict[str, float], interval_s: float):
        self.stub, self.md, self.node_id, self.record = stub, md, node_id, record
        self.total, self.interval_s = total, interval_s
        self.running: dict[str, asyncio.Task] = {}
        self.results: list[pb.ItemResult] = []  # finished, to be reported with the next send
        self.outgoing: asyncio.Queue | None = None  # batches for the report stream

    async def run(self) -> None:
        try:
            registered = await self.stub.RegisterNode(pb.RegisterNodeRequest(
                node_id=self.node_id, node_type=self.record["node_type"], address="127.0.0.1",
                total=pb.Resources(amounts=self.total), first=True), metadata=self.md)
            self.interval_s = registered.heartbeat_interval_s or self.interval_s
            self.outgoing = asyncio.Queue()
            reports = self.stub.ReportStream(self.report_requests(), metadata=self.md)
            beats = asyncio.create_task(self.heartbeats())
            acks = asyncio.create_task(self.drain_acks(reports))
            try:
                async for batch in self.stub.WorkStream(pb.WorkStreamRequest(node_id=self.node_id), metadata=self.md):
                    for a in batch.items:
                        self.handle(a)
            finally:
                beats.cancel()
                acks.cancel()
                reports.cancel()
        finally:
            for task in self.running.values():
                task.cancel()

    async def heartbeats(self) -> None:
        while True:
            notice_at = self.record.get("notice_at")
            noticed = notice_at is not None and time.time() >= notice_at
            reply = await self.stub.Heartbeat(pb.HeartbeatRequest(
                node_id=self.node_id, preempt_at=self.record["interrupt_at"] if noticed else 0.0,
                preempt_reason="simulated spot interruption" if noticed else ""), metadata=self.md)
            self.interval_s = reply.heartbeat_interval_s or self.interval_s  # (the head paces a large cluster)
            await asyncio.sleep(self.interval_s)

    def handle(self, a: pb.Assignment) -> None:
        if a.cancel:
            task = self.running.pop(a.item_id, None)
            if task is not None:
                task.cancel()
                asyncio.create_task(self.report(a.item_id, "cancelled", "cancelled"))
            return
        if a.revoke or a.lend_cpu or a.take_back_cpu or a.item_id in self.running:
            return  # (started at once: nothing to give back; a re-sent assignment: running already)
        self.running[a.item_id] = asyncio.create_task(self.work(a))

    async def work(self, a: pb.Assignment) -> None:
        seconds = duration_of(a.spec)
        if seconds is None:  # an actor: alive until cancelled
            return
        await asyncio.sleep(seconds)
        self.running.pop(a.item_id, None)
        await self.report(a.item_id, "finished", "")

    async def report(self, item_id: str, state: str, message: str) -> None:
        """Results go in batches on the node's report stream, as a real agent's do: what finished within
        REPORT_BATCH_S in one message (the head applies a stream's reports on its loop: no thread each)."""
        self.results.append(pb.ItemResult(id=item_id, state=state, message=message,
                                          value=NONE if state == "finished" else b"", node_id=self.node_id))
        if len(self.results) > 1:
            return  # a send is on its way: this result goes with it
        await asyncio.sleep(REPORT_BATCH_S)
        batch, self.results = self.results, []
        await self.outgoing.put(batch)

    async def report_requests(self):
        seq = 0
        while True:
            batch = await self.outgoing.get()
            seq += 1
            yield pb.ReportRequest(node_id=self.node_id, results=batch, seq=seq)

    @staticmethod
    async def drain_acks(call) -> None:
        async for _ in call:  # (none are asked for: the stream stays open while the node lives)
            pass


class Host:
    def __init__(self, state_path: Path):
        self.state_path = state_path
        cfg = NodeRuntimeConfig.load()  # the head node's: the cluster token, every node type's resources
        self.address = on_this_node(HEAD_ADDRESS).read_text().strip()
        self.md = call_metadata(cfg.token)
        self.node_types, self.interval_s = cfg.node_types, cfg.heartbeat_interval_s
        self.channels: list = []
        self.agents: dict[str, tuple[Agent, asyncio.Task]] = {}

    def _stub(self):
        if not self.channels or len(self.agents) >= len(self.channels) * AGENTS_PER_CHANNEL:
            channel = grpc.aio.insecure_channel(self.address, options=GRPC_OPTIONS)
            self.channels.append((channel, pb_grpc.HeadStub(channel)))
        return self.channels[-1][1]

    def records(self) -> dict[str, dict]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in state.items() if v.get("sim")}

    async def run(self) -> None:
        idle_since = time.monotonic()
        while True:
            records, now = self.records(), time.time()
            for node_id, record in records.items():
                if node_id not in self.agents and record["boot_at"] <= now:
                    agent = Agent(self._stub(), self.md, node_id, record, self.node_types.get(record["node_type"], {}),
                                  self.interval_s)
                    self.agents[node_id] = (agent, asyncio.create_task(self._supervise(agent)))
                elif node_id in self.agents:
                    self.agents[node_id][0].record = record
            for node_id in [n for n in self.agents if n not in records]:  # the machine went
                self.agents.pop(node_id)[1].cancel()
            if records:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                return
            await asyncio.sleep(POLL_S)

    async def _supervise(self, agent: Agent) -> None:
        """An agent whose stream broke (the head restarting) registers again, as a real agent does."""
        while True:
            try:
                await agent.run()
            except grpc.aio.AioRpcError as e:
                log.warning("agent %s: %s; registering again", agent.node_id, e.code().name)
            await asyncio.sleep(1.0)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(Host(Path(sys.argv[1])).run())


if __name__ == "__main__":
    main()
