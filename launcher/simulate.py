"""`launch simulate FILE --trace TRACE`: a workload trace replayed through the real planner
(autoscaler.planner.plan) and the real scheduler (runtime.scheduler.Scheduler) on the simulated cloud
(providers.sim.SimCloud: boot time, capacity, failures, spot interruptions with their notice), in virtual
time: both take the time as an argument, so a day of work replays in seconds to minutes.

What the head and its autoscaler do around those two is done here as they do it, event by event:
- a task arrives: it is submitted and scheduled; demand beyond what the last tick planned for wakes a tick
  (at most every DEMAND_WAKE_GAP_S, as the monitor's demand watch);
- the autoscaler ticks every autoscaler.tick_s: the plan's launches are created on the simulated cloud (a
  capacity error backs the type off, as the monitor does), its terminations drain the node first and
  are deferred while it is busy, drains and undrains are applied;
- a node boots after boot_time_s and registers with what its type declares (the type's backoff is over);
- a spot node gets its notice spot_notice_s before it is taken: it is drained and what it runs becomes
  demand (its replacement is planned while it runs); when it is taken, its work is requeued (no retry
  spent) and it costs nothing more;
- a task that runs to its end is complete; the head forgets it.
Ticks in which nothing can change (no event since the last, an empty plan) are skipped up to the next
event, idle timeout or backoff end: the plan would be the same, so the result is too.

A node costs its type's $/h from its launch until it is gone (a cloud bills from creation; the boot is
paid for). The run ends once every task is done and the fleet is back at min_workers, or at the horizon.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from autoscaler.demand_watch import DEMAND_WAKE_GAP_S, grew
from autoscaler.planner import Limits, NodeTypeSpec, NodeView, Plan, PlanInput, limits_of, plan
from core.backoff import Backoff
from core.config import ClusterConfig
from core.errors import CapacityError, ConfigError
from core.status import NodeStatus
from launcher.plan import type_spec
from launcher.trace import TraceTask
from providers.sim import Section as SimModel
from providers.sim import SimCloud
from runtime.scheduler import Scheduler
from runtime.work import FINISHED, INFEASIBLE, RUNNING, Item, pinned_node

# A task that is not spot_ok asks for a sliver of a resource that only on-demand types have here: the real
# scheduler and planner then keep it off spot nodes with their own rules.
ON_DEMAND = "on-demand"
ON_DEMAND_HAS, ON_DEMAND_ASK = 1000.0, 0.001
TASK_RETRIES = 3  # a Ray task's max_retries
CLOUD_BOOT_S = 60.0  # the boot time assumed for a config of a real cloud (--set boot_time_s=...)

S = NodeStatus


@dataclass
class SimNode:
    id: str
    node_type: str
    per_hour: float
    resources: dict[str, float]
    launched_at: float
    is_head: bool = False
    spot: bool = False
    status: NodeStatus = S.PENDING
    status_since: float = 0.0
    gone_at: float | None = None
    gone_why: str = ""


@dataclass
class TaskRun:
    task: TraceTask
    first_start: float | None = None
    finished_at: float | None = None
    attempt: int = -1  # its attempt now running
    attempt_started: float = 0.0  # ... and when it started
    preempted: int = 0  # attempts its node's cloud took back


@dataclass
class Counts:
    launches: int = 0
    launch_failures: int = 0
    terminations: int = 0
    preemptions: int = 0  # spot nodes taken back
    ticks: int = 0
    ticks_skipped: int = 0


@dataclass
class Outcome:
    """What a run did, for the report (launcher/simulate_report.py)."""

    cfg: ClusterConfig
    model: SimModel
    nodes: list[SimNode]
    runs: list[TaskRun]
    infeasible: dict[str, int]  # reason -> tasks
    counts: Counts
    timeline: list[tuple[float, dict[str, int], float]]  # (t, alive nodes by type, $/h) at each change
    end: float
    busy: dict[str, float]  # resource -> resource-seconds of work run
    wall_s: float


class Simulation:
    def __init__(self, cfg: ClusterConfig, tasks: list[TraceTask], model: SimModel, horizon_s: float):
        self.cfg, self.tasks, self.model, self.horizon = cfg, tasks, model, horizon_s
        self.cloud = SimCloud(model)
        self.types = {name: self._type(name) for name in cfg.available_node_types}
        unknown = [name for name, t in self.types.items() if not set(t.resources) - {ON_DEMAND}]
        if unknown:  # (on a cluster, the cloud says at `up`; a simulation has no cloud to ask)
            raise ConfigError([f"available_node_types.{name}.resources: unknown (the price catalog has no shape "
                               f"for its machine type); declare them to simulate it" for name in unknown])
        self.limits: Limits = limits_of(cfg)
        self.tick_s = cfg.autoscaler.tick_s
        self.sched = Scheduler({name: t.resources for name, t in self.types.items()})
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.runs: dict[str, TaskRun] = {}
        self.backoff: dict[str, Backoff] = {}
        self.counts = Counts()
        self.timeline: list[tuple[float, dict[str, int], float]] = []
        self.busy: dict[str, float] = {}
        self.planned_for: dict = {}
        self.next_tick = 0.0
        self.tick_token = 0  # the tick in the queue that counts (a wake moves it earlier)
        self.last_tick = -math.inf
        self.changed = True  # something happened since the last tick
        self.unsettled = False  # something happened since the last settle
        self.done = 0

    def _type(self, name: str) -> NodeTypeSpec:
        spec = type_spec(self.cfg, name)[0]
        if spec.spot:
            return spec
        return replace(spec, resources={**spec.resources, ON_DEMAND: ON_DEMAND_HAS})

    # --- the event queue ---------------------------------------------------------------------------

    def push(self, at: float, kind: str, data: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, data))

    def run(self) -> Outcome:
        started = time.monotonic()
        for i, task in enumerate(self.tasks):
            self.push(task.t, "arrive", i)
        self._add(self.cfg.head_node_type, is_head=True)
        self.push(0.0, "tick", self.tick_token)
        handlers: dict[str, Callable] = {"arrive": self.arrive, "boot": self.boot, "done": self.task_done,
                                          "notice": self.notice, "interrupt": self.interrupt, "tick": self.tick}
        end = None
        while self.events and not self.finished():
            at, _, kind, data = heapq.heappop(self.events)
            if at > self.horizon:
                end = self.horizon
                break
            self.now = at
            handlers[kind](data)
            self.unsettled = self.unsettled or kind != "tick"
            if self.unsettled and (not self.events or self.events[0][0] > at):
                self.settle()  # once per instant: everything that happened at it is in
        return Outcome(self.cfg, self.model, list(self.nodes.values()), list(self.runs.values()),
                       self._infeasible(), self.counts, self.timeline, self.now if end is None else end, self.busy,
                       time.monotonic() - started)

    def finished(self) -> bool:
        """Every task done and the fleet back at min_workers (nothing booting, nothing above it)."""
        if self.done < len(self.tasks):
            return False
        alive: dict[str, int] = {}
        for n in self.nodes.values():
            if n.gone_at is None and not n.is_head:
                alive[n.node_type] = alive.get(n.node_type, 0) + 1
        return all(k <= self.types[t].min_workers for t, k in alive.items())

    def _infeasible(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason in self.sched.infeasible.values():
            out[reason] = out.get(reason, 0) + 1
        return out

    # --- the head's part: work ---------------------------------------------------------------------

    def arrive(self, i: int) -> None:
        task = self.tasks[i]
        request = dict(task.resources) if task.spot_ok else {**task.resources, ON_DEMAND: ON_DEMAND_ASK}
        item = Item(self.sched.new_id("task"), "task", task.name, request, TASK_RETRIES, self.now)
        self.runs[item.id] = TaskRun(task)
        self.sched.submit(item, self.now)
        if item.state == INFEASIBLE:  # no node type could ever run it: it is done, never run
            self.done += 1
        self.changed = True

    def settle(self) -> None:
        """Schedule what fits; start what a node now holds; wake a tick for demand beyond the last plan's."""
        self.unsettled = False
        for item in self.sched.schedule(self.now):
            self._start_held(item.node_id)
        self.sched.take_dirty()  # (the head writes these to its store; here nobody keeps them)
        if grew(self._demand_counts(), self.planned_for):
            self.wake(max(self.now, self.last_tick + DEMAND_WAKE_GAP_S))

    def _demand_counts(self) -> dict:
        return {s: c for s, c in self.sched.demand() if pinned_node(dict(s)) is None}

    def _start_held(self, node_id: str) -> None:
        """Items the scheduler counts as running on the node (holding its resources) start now, if not yet:
        given to it ahead (prefetched), an item starts when room is made for it."""
        node = self.sched.nodes.get(node_id)
        for item_id in sorted(node.running) if node else ():
            item = self.sched.items[item_id]
            run = self.runs.get(item_id)
            if run is None or item.state != RUNNING or run.attempt == item.attempt:
                continue  # (started already)
            run.attempt = item.attempt
            run.attempt_started = self.now
            if run.first_start is None:
                run.first_start = self.now
            self.push(self.now + run.task.duration, "done", (item_id, item.attempt))

    def task_done(self, data: tuple[str, int]) -> None:
        item_id, attempt = data
        item = self.sched.items.get(item_id)
        if item is None or item.state != RUNNING or item.attempt != attempt:
            return  # an attempt its node's loss ended earlier
        node_id, run = item.node_id, self.runs[item_id]
        self._count_busy(item, run)
        self.sched.complete(item_id, FINISHED, self.now, node_id=node_id)
        run.finished_at = self.now
        self.done += 1
        self.sched.take_finished()
        self.sched.forget(item_id)
        self._start_held(node_id)
        self.changed = True

    def _count_busy(self, item: Item, run: TaskRun) -> None:
        took = self.now - run.attempt_started
        for k, v in item.request.items():
            if k != ON_DEMAND:
                self.busy[k] = self.busy.get(k, 0.0) + v * took

    # --- the cloud's part: nodes -------------------------------------------------------------------

    def _add(self, node_type: str, is_head: bool = False, boot_at: float | None = None) -> SimNode:
        spec = self.types[node_type]
        node = SimNode(f"{'head' if is_head else 'sim'}-{len(self.nodes):05d}", node_type, spec.cost_per_hour,
                       dict(spec.resources), self.now, is_head, spec.spot and not is_head, status_since=self.now)
        self.nodes[node.id] = node
        if is_head:  # up with the cluster, before any tick
            self._register(node)
        self._mark()
        return node

    def _register(self, node: SimNode) -> None:
        node.status, node.status_since = S.UP_TO_DATE, self.now
        self.sched.add_node(node.id, node.node_type, node.resources, node.is_head, self.now)

    def _mark(self) -> None:
        """The fleet changed: a point of the nodes-over-time chart."""
        alive: dict[str, int] = {}
        per_hour = 0.0
        for n in self.nodes.values():
            if n.gone_at is None:
                alive[n.node_type] = alive.get(n.node_type, 0) + 1
                per_hour += n.per_hour
        self.timeline.append((self.now, alive, per_hour))

    def boot(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.gone_at is not None:
            return
        self._register(node)  # (its agent registers at once: a sim node needs no setup)
        self.backoff.pop(node.node_type, None)  # a node of it came up: the type works
        self.changed = True

    def notice(self, node_id: str) -> None:
        """Its cloud takes it back soon: no new work; what it runs is demand from now on."""
        if self.nodes[node_id].gone_at is None and node_id in self.sched.nodes:
            self.sched.preempt(node_id)
            self.changed = True

    def interrupt(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.gone_at is not None:
            return
        self.counts.preemptions += 1
        self._gone(node, "preempted")

    def _gone(self, node: SimNode, why: str) -> None:
        """The instance is gone: what ran there goes back to the queue (a preempted node's, no retry spent)."""
        held = self.sched.nodes.get(node.id)
        for item_id in sorted(held.running) if held else ():
            item, run = self.sched.items[item_id], self.runs.get(item_id)
            if run is not None and run.attempt == item.attempt:
                self._count_busy(item, run)
                run.preempted += why == "preempted"
                run.attempt = -1
        self.sched.remove_node(node.id, self.now, f"its node was {why}")
        node.gone_at, node.gone_why = self.now, why
        self._mark()
        self.changed = True

    def launch(self, node_type: str, count: int) -> None:
        spec = self.types[node_type]
        have = sum(1 for n in self.nodes.values() if n.node_type == node_type and n.gone_at is None and not n.is_head)
        try:
            made = self.cloud.launch(node_type, count, spec.spot, have, self.now)
        except CapacityError as e:
            a = self.cfg.autoscaler
            self.backoff.setdefault(node_type, Backoff(a.backoff_initial_s, a.backoff_max_s)).fail(self.now, str(e))
            self.counts.launch_failures += 1
            return
        for m in made:
            node = self._add(node_type)
            self.counts.launches += 1
            self.push(m.boot_at, "boot", node.id)
            if m.interrupt_at is not None:
                self.push(max(self.now, m.notice_at), "notice", node.id)
                self.push(m.interrupt_at, "interrupt", node.id)

    # --- the autoscaler's part ---------------------------------------------------------------------

    def wake(self, at: float) -> None:
        if at < self.next_tick:
            self._tick_at(at)

    def _tick_at(self, at: float) -> None:
        self.next_tick = at
        self.tick_token += 1
        self.push(at, "tick", self.tick_token)

    def tick(self, token: int) -> None:
        if token != self.tick_token:
            return  # (a tick a wake moved earlier)
        self.counts.ticks += 1
        self.last_tick = self.now
        demand = self._demand_counts()
        self.planned_for = demand
        inp = PlanInput(self.types, self.views(), [(dict(s), c) for s, c in demand.items()], self.limits,
                        {t: b.until for t, b in self.backoff.items()}, self.now)
        p = plan(inp)
        acted = self.act(p)
        quiet = not self.changed and not acted
        self.changed = False
        self.unsettled = self.unsettled or acted
        at = self.now + self.tick_s
        self._tick_at(self._skip_to(at) if quiet else at)

    def views(self) -> list[NodeView]:
        out = []
        for n in self.nodes.values():
            if n.gone_at is not None:
                continue
            r = self.sched.nodes.get(n.id)
            out.append(NodeView(
                id=n.id, node_type=n.node_type, status=n.status, is_head=n.is_head, registered=r is not None,
                total=dict(r.total) if r else {}, available=dict(r.available) if r else {},
                running=r.load if r else 0, idle_since=r.idle_since if r else 0.0, launched_at=n.launched_at,
                status_since=n.status_since, draining=bool(r and r.draining), preempting=n.id in self.sched.preempting))
        return out

    def act(self, p: Plan) -> bool:
        """The plan applied as the monitor applies it. Returns whether it did anything."""
        acted = False
        for node_id, _ in p.undrains:
            acted = True
            self.sched.drain(node_id, undrain=True)
            self.nodes[node_id].status, self.nodes[node_id].status_since = S.UP_TO_DATE, self.now
        for node_id, _ in p.drains:
            acted = True
            self.sched.drain(node_id)
            self.nodes[node_id].status, self.nodes[node_id].status_since = S.DRAINING, self.now
        for node_id, reason in p.terminations:
            node = self.nodes[node_id]
            if node.id in self.sched.nodes and not self.sched.drain(node_id)[0]:
                continue  # busy after all: it stays drained (the planner takes it back or retires it later)
            acted = True
            self.counts.terminations += 1
            self._gone(node, "terminated: " + reason)
        for node_type, count in sorted(p.launches.items()):
            if count > 0:
                acted = True
                self.launch(node_type, count)
        return acted

    def _skip_to(self, next_tick: float) -> float:
        """The first tick at which the plan may differ from the last (empty) one: an event, an idle timeout
        or a backoff ending (on the tick grid); ticks before it are skipped (the same plan each)."""
        moments = [self.events[0][0]] if self.events else []
        for n in self.sched.nodes.values():
            node = self.nodes[n.id]
            if not node.is_head and not n.busy and n.idle_since > 0:
                own = self.types[node.node_type].idle_timeout_s
                moments.append(n.idle_since + (self.limits.idle_timeout_s if own is None else own))
        moments += [b.until for b in self.backoff.values() if b.until > self.now]
        if not moments:
            return next_tick
        first = min(moments)
        if first <= next_tick:
            return next_tick
        skipped = math.ceil((first - next_tick) / self.tick_s - 1e-9)
        self.counts.ticks_skipped += skipped
        return next_tick + skipped * self.tick_s
