"""The autoscaler's planner: a pure function of the cluster's state. No I/O, no clock reads, deterministic.

    plan(PlanInput) -> Plan

1. Demand is grouped by resource shape (real queues hold 100k items of a handful of shapes).
2. Free capacity is filled first: what nodes have available now, and the whole of nodes that are
   launching and not yet registered. Draining nodes are no capacity; one drained on its way out for
   being idle is taken back (undrained) when waiting work fits it.
3. What is left is served by launching the node types that cost least per unit of demand served:
   a greedy set cover where each shape's unit of work is weighed by its cheapest stand-alone price,
   and one node's fill pattern is repeated as often as the demand allows (so a million queued items
   cost a few iterations). GPU types serve non-GPU work only when nothing else fits. Types backed off
   after capacity errors are skipped (so spot falls back to the next cheapest type, on-demand), as are
   types at their max. The global max_workers, the $/h budget and upscaling_speed cap the total.
   Placement groups are gang demand: each is placed whole, on what nodes have free (and launching nodes)
   plus new nodes, with its strategy (STRICT_SPREAD: a node per bundle; STRICT_PACK: one node), or gets
   no node at all, with the reason (infeasible, a limit). Groups go first: tasks fill what they leave.
   New nodes for a group are the cheapest that hold it: per bundle the cheapest type that fits (spread),
   one type for the sum (strict pack), or the type that serves the most of the group per $ (pack).
4. Scale-down: idle workers (past idle_timeout, above min_workers), least useful first; workers whose
   node config is outdated; workers stuck before up-to-date past the launch timeout or failed to set
   up (the launch timeout counts from when a node entered its current status); workers up-to-date but
   unknown to the runtime past a grace period (an instance nobody uses). Never the head, never a node
   running work: busy outdated nodes are drained first.
Every decision carries a short reason for `launch status`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# the runtime groups queued work by the same shapes the planner plans for
from core.shapes import EPS, UNIVERSAL, Shape, fmt_shape, shape_of, type_can_run
from core.status import LIVE, NodeStatus

__all__ = ["EPS", "GroupDemand", "Limits", "NodeTypeSpec", "NodeView", "Plan", "PlanInput", "Shape", "fmt_shape",
           "plan", "shape_of"]

S = NodeStatus


@dataclass(frozen=True)
class NodeTypeSpec:
    name: str
    resources: dict[str, float]
    min_workers: int = 0
    max_workers: int = 0
    cost_per_hour: float = 0.0
    spot: bool = False
    idle_timeout_s: float | None = None  # Ray's per-type idle timeout; None: the cluster's
    priority: int = 0  # Ray's: among equal-cost choices, the higher priority is launched first

    @property
    def has_gpu(self) -> bool:
        return self.resources.get("GPU", 0) > 0


@dataclass(frozen=True)
class NodeView:
    id: str
    node_type: str
    status: NodeStatus
    is_head: bool = False
    registered: bool = False  # known to the runtime
    total: dict[str, float] = field(default_factory=dict)
    available: dict[str, float] = field(default_factory=dict)
    running: int = 0
    idle_since: float = 0.0  # 0 while busy
    launched_at: float = 0.0
    status_since: float = 0.0  # when it entered its status: the launch timeout counts from here
    draining: bool = False  # the runtime gives it no new work (whatever its status tag says)
    outdated: bool = False  # its launch hash (node_config, auth) is no longer the config's
    lost_for: float = 0.0  # seconds it has been up-to-date yet unknown to the runtime
    preempting: bool = False  # its cloud is taking it back (a notice): no capacity, its work is demand

    def __post_init__(self):
        object.__setattr__(self, "status", NodeStatus(self.status))
        if not self.status_since:
            object.__setattr__(self, "status_since", self.launched_at)


@dataclass(frozen=True)
class Limits:
    max_workers: int
    upscaling_speed: float = 1.0
    idle_timeout_s: float = 300.0
    max_cost_per_hour: float | None = None
    launch_timeout_s: float = 600.0
    runtime_grace_s: float = 60.0
    # autoscaler: false. No idle scale-down, and failed, stuck or lost nodes are kept for `launch up`
    # to repair in place, as a static cluster's owner expects; outdated ones are still replaced.
    static: bool = False


def limits_of(cfg) -> Limits:
    """The limits a cluster config (core.config.ClusterConfig) sets: the monitor's tick, `launch plan`."""
    a = cfg.autoscaler
    return Limits(max_workers=cfg.max_workers, upscaling_speed=cfg.upscaling_speed,
                  idle_timeout_s=cfg.idle_timeout_minutes * 60, max_cost_per_hour=cfg.max_cost_per_hour,
                  launch_timeout_s=a.launch_timeout_minutes * 60, runtime_grace_s=a.runtime_grace_s,
                  static=not a.enabled)


@dataclass(frozen=True)
class GroupDemand:
    """`count` placement groups of these bundles and strategy, waiting to be placed."""

    bundles: tuple[Shape, ...]
    strategy: str = "PACK"
    count: int = 1

    def describe(self) -> str:
        shapes: dict[Shape, int] = {}
        for b in self.bundles:
            shapes[b] = shapes.get(b, 0) + 1
        return f"{self.strategy} group of " + " + ".join(f"{k} x {fmt_shape(b)}" for b, k in shapes.items())


@dataclass(frozen=True)
class PlanInput:
    node_types: dict[str, NodeTypeSpec]
    nodes: list[NodeView]
    demand: list[tuple[dict[str, float], int]]
    limits: Limits
    backoff_until: dict[str, float] = field(default_factory=dict)  # node type -> time it may be tried again
    now: float = 0.0
    groups: list[GroupDemand] = field(default_factory=list)


@dataclass
class Plan:
    launches: dict[str, int] = field(default_factory=dict)
    launch_reasons: dict[str, str] = field(default_factory=dict)
    terminations: list[tuple[str, str]] = field(default_factory=list)  # (node id, reason)
    drains: list[tuple[str, str]] = field(default_factory=list)  # busy nodes to stop feeding, (id, reason)
    undrains: list[tuple[str, str]] = field(default_factory=list)  # drained nodes demand needs again
    infeasible: list[tuple[Shape, int, str]] = field(default_factory=list)
    unmet: list[tuple[Shape, int, str]] = field(default_factory=list)  # feasible, but blocked by a limit now
    # placement groups: (description, count, reason)
    infeasible_groups: list[tuple[str, int, str]] = field(default_factory=list)
    unmet_groups: list[tuple[str, int, str]] = field(default_factory=list)


def _fits(capacity: dict[str, float], shape: Shape) -> int:
    """How many items of `shape` fit in `capacity`. CPU or memory that a capacity does not state is
    unknown (the runtime assumes enough): such a node is counted on for one item, no more."""
    # one pass, the rule of core.shapes.type_can_run inlined: this runs for every shape and node tried
    n = math.inf
    for k, v in shape:
        have = capacity.get(k)
        if have is None:
            if k not in UNIVERSAL:
                return 0
            fit = 1
        else:
            fit = math.floor((have + EPS) / v)
        if fit < n:
            n = fit
    return 0 if n is math.inf else max(int(n), 0)


def _take(capacity: dict[str, float], shape: Shape, n: int) -> None:
    for k, v in shape:
        capacity[k] = capacity.get(k, 0.0) - v * n


def _pack(capacity: dict[str, float], remaining: dict[Shape, int], order: list[Shape]) -> dict[Shape, int]:
    """First-fit of the remaining demand into one node's capacity, largest shapes first."""
    cap = dict(capacity)
    placed: dict[Shape, int] = {}
    for s in order:
        want = remaining.get(s, 0)
        if want <= 0:
            continue
        n = min(want, _fits(cap, s))
        if n > 0:
            _take(cap, s, n)
            placed[s] = n
    return placed


_UNIVERSAL_KEYS = frozenset(UNIVERSAL)


def _free(n: NodeView) -> dict[str, float]:
    """What a registered node has free: known exactly, so CPU or memory it does not list is none (only a
    node *type* can have unknown resources). Not copied: _pack works on its own copy."""
    if n.available.keys() >= _UNIVERSAL_KEYS:
        return n.available
    return {**dict.fromkeys(UNIVERSAL, 0.0), **n.available}


def _size(shape: Shape) -> tuple:
    d = dict(shape)
    return (d.get("GPU", 0.0), sum(v for k, v in shape if k not in ("memory",)), d.get("memory", 0.0))


def plan(inp: PlanInput) -> Plan:
    """One decision: what to launch, drain, undrain and terminate now (a pure function of its input)."""
    p = _Pass(inp)
    p.group_demand()
    p.take_live_capacity()
    groups_left = p.place_groups_on_live_nodes()
    p.fill_live_nodes()
    p.scale_down()
    p.set_launch_limits()
    p.launch_min_workers()
    p.launch_for_groups(groups_left)
    p.launch_for_demand()
    p.explain_unmet()
    return p.out


class _Pass:
    """The state of one plan() as it goes: demand left unserved, capacity left on live nodes, workers per
    type, and what is left of the launch cap and the cost budget. Each step is a method, in plan()'s order."""

    def __init__(self, inp: PlanInput):
        self.inp, self.out = inp, Plan()
        self.types, self.now, self.lim = inp.node_types, inp.now, inp.limits
        self.remaining: dict[Shape, int] = {}  # demand not yet served, by shape
        self.order: list[Shape] = []  # its shapes, largest first
        self.workers = [n for n in inp.nodes if not n.is_head and n.status != S.TERMINATING]
        self.absorbing: set[str] = set()  # nodes that waiting work is about to land on: not idle for long
        self.pools: list[tuple[str, dict[str, float]]] = []  # (node id, what it has free or will have)
        self.count_by_type: dict[str, int] = {}
        for n in self.workers:  # (a node being preempted counts no more: its replacement comes before it goes)
            if not n.preempting:
                self.count_by_type[n.node_type] = self.count_by_type.get(n.node_type, 0) + 1
        self.leaving: set[str] = set()
        self.room, self.budget = 0, math.inf
        self.backed_off = {t for t, until in inp.backoff_until.items() if until > inp.now}
        self.weight: dict[Shape, float] = {}

    def serve(self, placed: dict[Shape, int]) -> None:
        for s, k in placed.items():
            self.remaining[s] -= k

    # --- demand and what already serves it ---------------------------------------------------------

    def group_demand(self) -> None:
        for request, count in self.inp.demand:
            s = shape_of(request)
            if s and count > 0:
                self.remaining[s] = self.remaining.get(s, 0) + count
        self.order = sorted(self.remaining, key=_size, reverse=True)
        # infeasible: no node type can hold even one item (judged as the runtime judges it)
        for s in list(self.order):
            if not any(type_can_run(t.resources, dict(s)) for t in self.types.values()):
                self.out.infeasible.append((s, self.remaining.pop(s), f"no node type has {fmt_shape(s)}"))
                self.order.remove(s)

    def take_live_capacity(self) -> None:
        for n in sorted(self.inp.nodes, key=lambda n: n.id):
            if n.preempting:  # going whatever is decided: neither capacity nor taken back
                continue
            if n.status == S.DRAINING or (n.draining and n.status == S.UP_TO_DATE):
                # A drained node is no capacity. One drained on its way out for being idle (its status still
                # up-to-date: the terminate found it busy) is taken back when waiting work fits it; one being
                # retired (status draining: outdated, failed, removed type) is not.
                if (n.status == S.UP_TO_DATE and n.registered and not n.is_head and not n.outdated
                        and n.node_type in self.types and _pack(_free(n), self.remaining, self.order)):
                    self.out.undrains.append((n.id, "work is waiting that it can run"))
                    self.serve(_pack(_free(n), self.remaining, self.order))
                    self.absorbing.add(n.id)
                continue
            if n.status not in LIVE:
                continue
            if n.registered:
                self.pools.append((n.id, dict(_free(n))))
            elif n.node_type in self.types:  # launching: all of its type's resources will be free
                self.pools.append((n.id, dict(self.types[n.node_type].resources)))

    def place_groups_on_live_nodes(self) -> list[tuple[GroupDemand, int]]:
        """Placement groups that fit what is there (launching nodes included) go first: they need it whole.
        Returns the groups (and how many of each) still to place."""
        groups_left = []
        for g in self.inp.groups:
            why = _group_infeasible(g, self.types)
            if why:
                self.out.infeasible_groups.append((g.describe(), g.count, why))
                continue
            placed = 0
            while placed < g.count:
                got = _place_group(g, [cap for _, cap in self.pools], None, {})
                if got is None:
                    break
                for i, cap in got[0].items():
                    self.pools[i][1].update(cap)
                    self.absorbing.add(self.pools[i][0])
                placed += 1
            if placed < g.count:
                groups_left.append((g, g.count - placed))
        return groups_left

    def fill_live_nodes(self) -> None:
        for node_id, cap in self.pools:
            for s, k in _pack(cap, self.remaining, self.order).items():
                self.remaining[s] -= k
                _take(cap, s, k)
                self.absorbing.add(node_id)

    # --- scale-down (decided before launches so replacements are counted) ------------------------------

    def terminate(self, node: NodeView, reason: str) -> None:
        self.out.terminations.append((node.id, reason))
        self.leaving.add(node.id)
        self.count_by_type[node.node_type] = self.count_by_type.get(node.node_type, 0) - 1

    def retire(self, n: NodeView, reason: str) -> None:
        """Terminate an idle node; drain a busy one first (it is terminated once drained)."""
        if n.running == 0:
            self.terminate(n, reason)
        elif n.status != S.DRAINING:
            self.out.drains.append((n.id, f"{reason}: draining first"))

    def scale_down(self) -> None:
        now, lim, types = self.now, self.lim, self.types
        for n in sorted(self.workers, key=lambda n: n.id):
            if n.node_type not in types:
                self.retire(n, f"node type {n.node_type} is no longer in the config")
            elif lim.static and n.status != S.DRAINING and not n.outdated:
                continue
            elif n.status == S.UPDATE_FAILED:
                self.retire(n, "setup failed: replacing it")
            elif n.status in LIVE and n.status != S.UP_TO_DATE and now - n.status_since > lim.launch_timeout_s:
                self.retire(n, f"stuck in {n.status.value} for {(now - n.status_since) / 60:.0f} min")
            elif n.outdated:
                self.retire(n, "outdated node config: replacing it")
            elif n.status == S.UP_TO_DATE and not n.registered and n.lost_for > lim.runtime_grace_s:
                self.terminate(n, f"unknown to the runtime for {n.lost_for:.0f} s")
            elif n.status == S.DRAINING and n.running == 0 and n.id not in self.absorbing:
                self.terminate(n, "drained")
        if not lim.static:
            self.end_idle_nodes()

    def idle_timeout(self, n: NodeView) -> float:
        own = self.types[n.node_type].idle_timeout_s if n.node_type in self.types else None
        return self.lim.idle_timeout_s if own is None else own

    def end_idle_nodes(self) -> None:
        types = self.types
        idle = [n for n in self.workers if n.id not in self.leaving and n.id not in self.absorbing
                and n.status == S.UP_TO_DATE and n.registered and n.running == 0 and n.idle_since > 0
                and self.now - n.idle_since >= self.idle_timeout(n)]
        # least useful first: the most expensive, then the longest idle
        for n in sorted(idle, key=lambda n: (-types[n.node_type].cost_per_hour if n.node_type in types else 0.0,
                                             n.idle_since, n.id)):
            if n.node_type in types and self.count_by_type.get(n.node_type, 0) - 1 < types[n.node_type].min_workers:
                continue
            self.terminate(n, f"idle for {(self.now - n.idle_since) / 60:.1f} min")

    # --- launches ------------------------------------------------------------------------------------

    def set_launch_limits(self) -> None:
        inp, lim, types = self.inp, self.lim, self.types
        staying = [n for n in self.workers if n.id not in self.leaving and not n.preempting]
        pending = sum(1 for n in staying if n.status in LIVE and n.status != S.UP_TO_DATE)
        running_nodes = max(1, sum(1 for n in inp.nodes if n.status == S.UP_TO_DATE))
        speed_cap = max(5, math.ceil(lim.upscaling_speed * running_nodes)) - pending
        if lim.max_cost_per_hour is not None:
            self.budget = lim.max_cost_per_hour - sum(
                types[n.node_type].cost_per_hour for n in inp.nodes if n.id not in self.leaving
                and n.node_type in types and n.status != S.TERMINATING)
        self.room = max(0, min(speed_cap, lim.max_workers - len(staying)))

    def can_launch(self, t: NodeTypeSpec) -> bool:
        return (t.name not in self.backed_off and self.count_by_type.get(t.name, 0) + self.out.launches.get(t.name, 0)
                < t.max_workers and t.cost_per_hour <= self.budget + EPS)

    def add(self, t: NodeTypeSpec, k: int, reason: str) -> None:
        out = self.out
        out.launches[t.name] = out.launches.get(t.name, 0) + k
        self.room -= k
        self.budget -= k * t.cost_per_hour
        prev = out.launch_reasons.get(t.name)
        if prev is None or reason not in prev.split("; "):  # once each: min_workers adds one node at a time
            out.launch_reasons[t.name] = f"{prev}; {reason}" if prev else reason

    def launch_min_workers(self) -> None:
        """min_workers first: they are owed whatever the demand."""
        for t in sorted(self.types.values(), key=lambda t: t.name):
            missing = t.min_workers - self.count_by_type.get(t.name, 0)
            while missing > 0 and self.room > 0 and self.can_launch(t):
                self.add(t, 1, "min_workers")
                missing -= 1
                self.serve(_pack(dict(t.resources), self.remaining, self.order))
        for s in self.order:
            self.weigh(s)

    def weigh(self, s: Shape) -> float:
        """A unit of a shape at its cheapest stand-alone price, so that mixed demand compares fairly."""
        if s not in self.weight:
            prices = [t.cost_per_hour / _fits(t.resources, s) for t in self.types.values() if _fits(t.resources, s) >= 1]
            self.weight[s] = min(prices) if prices else 0.0
        return self.weight[s]

    def launch_for_groups(self, groups_left: list[tuple[GroupDemand, int]]) -> None:
        """Placement groups that need new nodes: all of a group's nodes are launched, or none. What the new
        nodes leave free then serves queued work before more nodes are launched for it."""
        new_pools: list[dict[str, float]] = []  # what nodes launched for groups have left, while any bundle fits
        group_shapes = {b for g, _ in groups_left for b in g.bundles}
        group_caps: list[dict[str, float]] = []  # every node launched for groups
        for g, count in groups_left:
            for done in range(count):
                got = self.place_group_launching(g, new_pools, group_shapes)
                if isinstance(got, str):
                    self.out.unmet_groups.append((g.describe(), count - done, got))
                    break
                new_pools += [cap for cap in got if any(_fits(cap, b) for b in group_shapes)]
                group_caps += got
        for cap in group_caps:
            for s, k in _pack(cap, self.remaining, self.order).items():
                self.remaining[s] -= k
                _take(cap, s, k)

    def place_group_launching(self, g: GroupDemand, new_pools: list[dict[str, float]],
                              group_shapes: set[Shape]) -> list[dict[str, float]] | str:
        """One group on live nodes, nodes launched for earlier groups, and new nodes: the new nodes'
        capacities left, or why it cannot be placed. `new_pools` loses the nodes it filled."""
        launchable = [t for t in sorted(self.types.values(), key=lambda t: t.name) if self.can_launch(t)]
        usable = [(i, cap) for i, (node_id, cap) in enumerate(self.pools) if node_id not in self.leaving]
        got = _place_group(g, [cap for _, cap in usable] + new_pools, launchable, {b: self.weigh(b) for b in g.bundles})
        why = "every node type that fits is backing off or at its max_workers" if got is None else _over_limits(
            got[1], self.room, self.budget, self.count_by_type, self.out.launches, self.lim)
        if why:
            return why
        touched, new = got
        full = False
        for i, cap in touched.items():
            if i < len(usable):
                usable[i][1].update(cap)
                self.absorbing.add(self.pools[usable[i][0]][0])
            else:
                new_pools[i - len(usable)].update(cap)
                full = full or not any(_fits(cap, b) for b in group_shapes)
        if full:  # (thousands of groups: the nodes they filled are not looked at again)
            new_pools[:] = [c for c in new_pools if any(_fits(c, b) for b in group_shapes)]
        by_type: dict[str, int] = {}
        for t, _ in new:
            by_type[t.name] = by_type.get(t.name, 0) + 1
        for name, k in sorted(by_type.items()):
            self.add(self.types[name], k, f"{k} x {name}: {g.describe()}")
        return [cap for _, cap in new]

    def value_of(self, placed: dict[Shape, int]) -> float:
        return sum(self.weight[s] * k for s, k in placed.items())

    def best_pattern(self, t: NodeTypeSpec) -> dict[Shape, int]:
        """The most valuable fill of one node: first-fit seeded with each waiting shape in turn
        (largest-first alone misses fits such as {CPU: 5, 40G} + {CPU: 3} on an 8-CPU 64G node)."""
        waiting = [s for s in self.order if self.remaining.get(s, 0) > 0]
        best: dict[Shape, int] = {}
        for seed in waiting:
            placed = _pack(t.resources, self.remaining, [seed] + [s for s in waiting if s != seed])
            if self.value_of(placed) > self.value_of(best) + EPS:
                best = placed
        return best

    def cheapest_fill(self) -> tuple[NodeTypeSpec, dict[Shape, int]] | None:
        """The node type (and its fill) that serves waiting work at the lowest cost per unit served."""
        candidates = []
        for t in sorted(self.types.values(), key=lambda t: t.name):
            if self.can_launch(t):
                placed = self.best_pattern(t)
                if placed:
                    candidates.append((t, placed))
        cpu_alternative = any(not t.has_gpu for t, _ in candidates)
        best = None
        for t, placed in candidates:
            served = self.value_of(placed)
            value = served if served > 0 else sum(placed.values())
            # a GPU node that would run no GPU work loses to any non-GPU node that can serve
            gpu_waste = t.has_gpu and cpu_alternative and not any(dict(s).get("GPU", 0) > 0 for s in placed)
            # equal cost per unit served: the higher priority, then the name (deterministic)
            key = (gpu_waste, round(t.cost_per_hour / value, 9), -t.priority, t.name)
            if best is None or key < best[0]:
                best = (key, t, placed)
        return None if best is None else best[1:]

    def launch_for_demand(self) -> None:
        while self.room > 0 and any(self.remaining.get(s, 0) > 0 for s in self.order):
            chosen = self.cheapest_fill()
            if chosen is None:
                break
            t, placed = chosen
            # repeat this fill pattern as often as the demand, the type's max, the budget and the cap allow
            reps = min(self.remaining[s] // k for s, k in placed.items())
            reps = min(reps, self.room,
                       t.max_workers - self.count_by_type.get(t.name, 0) - self.out.launches.get(t.name, 0))
            if t.cost_per_hour > 0 and self.budget != math.inf:
                reps = min(reps, int((self.budget + EPS) // t.cost_per_hour))
            reps = max(reps, 1)
            for s, k in placed.items():
                self.remaining[s] = max(0, self.remaining[s] - k * reps)
            desc = ", ".join(f"{k * reps} x {fmt_shape(s)}" for s, k in placed.items())
            self.add(t, reps, f"{reps} x {t.name}: {desc} queued")

    def explain_unmet(self) -> None:
        for s in self.order:
            if self.remaining.get(s, 0) > 0:
                why = _why_unmet(s, self.types, self.backed_off, self.count_by_type, self.out, self.lim, self.room,
                                 self.budget)
                self.out.unmet.append((s, self.remaining[s], why))


def _group_infeasible(g: GroupDemand, types: dict[str, NodeTypeSpec]) -> str | None:
    for i, b in enumerate(g.bundles):
        if not any(type_can_run(t.resources, dict(b)) for t in types.values()):
            return f"bundle {i}: no node type has {fmt_shape(b)}"
    if g.strategy == "STRICT_PACK":
        total = _sum(g.bundles)
        if not any(type_can_run(t.resources, dict(total)) for t in types.values()):
            return f"STRICT_PACK: no node type holds all of it ({fmt_shape(total)})"
    return None


def _sum(bundles) -> Shape:
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b:
            total[k] = total.get(k, 0.0) + v
    return shape_of(total)


Placed = tuple[dict[int, dict[str, float]], list[tuple[NodeTypeSpec, dict[str, float]]]]


def _place_group(g: GroupDemand, pools: list[dict[str, float]], launchable: list[NodeTypeSpec] | None,
                 weight: dict[Shape, float]) -> Placed | None:
    """One group, placed whole: bundles on `pools` (what nodes have free, not changed here), then on new
    nodes of `launchable` types (None: no new nodes). Returns (pool index -> its capacity after, [(type,
    new node's capacity after)]) or None if the group cannot be placed."""
    bundles = sorted(g.bundles, key=_size, reverse=True)
    place = {"STRICT_PACK": _strict_pack, "STRICT_SPREAD": _strict_spread}.get(g.strategy, _packed)
    return place(bundles, pools, launchable or [], weight)


def _touch(touched: dict[int, dict[str, float]], pools: list[dict[str, float]], i: int) -> dict[str, float]:
    """Pool i's capacity as this placement leaves it (a copy: the pools themselves are not changed)."""
    if i not in touched:
        touched[i] = dict(pools[i])
    return touched[i]


def _new_node(t: NodeTypeSpec, shape: Shape) -> tuple[NodeTypeSpec, dict[str, float]]:
    c = dict(t.resources)
    _take(c, shape, 1)
    return t, c


def _cheapest(launchable: list[NodeTypeSpec], shape: Shape) -> NodeTypeSpec | None:
    fitting = [t for t in launchable if _fits(t.resources, shape) >= 1]
    return min(fitting, key=lambda t: (t.cost_per_hour, -t.priority, t.name)) if fitting else None


def _strict_pack(bundles, pools, launchable, weight) -> Placed | None:
    """Every bundle on one node: a live one that holds them all, else the cheapest new one that does."""
    total, touched = _sum(bundles), {}
    i = next((i for i, c in enumerate(pools) if _fits(c, total) >= 1), None)
    if i is not None:
        _take(_touch(touched, pools, i), total, 1)
        return touched, []
    t = _cheapest(launchable, total)
    return None if t is None else (touched, [_new_node(t, total)])


def _strict_spread(bundles, pools, launchable, weight) -> Placed | None:
    """Each bundle on a node of its own: live ones first, then the cheapest new node for each."""
    touched: dict[int, dict[str, float]] = {}
    new = []
    for b in bundles:
        i = next((i for i, c in enumerate(pools) if i not in touched and _fits(c, b) >= 1), None)
        if i is not None:
            _take(_touch(touched, pools, i), b, 1)
            continue
        t = _cheapest(launchable, b)
        if t is None:
            return None
        new.append(_new_node(t, b))
    return touched, new


def _packed(bundles, pools, launchable, weight) -> Placed | None:
    """PACK, SPREAD: the runtime may share nodes, so the cheapest packing serves both. Each bundle goes
    where an earlier one went, else on another live node, else on a node launched for this group, else on
    a new node of the type that would hold the most of the rest of the group per dollar."""
    touched: dict[int, dict[str, float]] = {}
    new: list[tuple[NodeTypeSpec, dict[str, float]]] = []
    for n, b in enumerate(bundles):
        i = next((i for i in touched if _fits(touched[i], b) >= 1), None)
        if i is None:
            i = next((i for i, c in enumerate(pools) if i not in touched and _fits(c, b) >= 1), None)
        if i is not None:
            _take(_touch(touched, pools, i), b, 1)
            continue
        j = next((j for j, (_, c) in enumerate(new) if _fits(c, b) >= 1), None)
        if j is not None:
            _take(new[j][1], b, 1)
            continue
        best = None
        for t in launchable:
            if _fits(t.resources, b) < 1:
                continue
            # what of the rest of the group a node of this type would hold, by value
            c, served = dict(t.resources), 0.0
            for rest in bundles[n:]:
                if _fits(c, rest) >= 1:
                    _take(c, rest, 1)
                    served += weight.get(rest, 0.0) or 1.0
            key = (t.cost_per_hour / served, -t.priority, t.name)
            if best is None or key < best[0]:
                best = (key, t)
        if best is None:
            return None
        new.append(_new_node(best[1], b))
    return touched, new


def _over_limits(new, room, budget, count_by_type, launches, lim) -> str | None:
    """Why launching these nodes for one group is not allowed now (None: it is)."""
    if len(new) > room:
        return (f"needs {len(new)} new node(s) at once: over the global max_workers ({lim.max_workers}) or the "
                f"upscaling_speed cap")
    by_type: dict[str, list] = {}
    for t, _ in new:
        by_type.setdefault(t.name, [t, 0])[1] += 1
    for name, (t, k) in sorted(by_type.items()):
        if count_by_type.get(name, 0) + launches.get(name, 0) + k > t.max_workers:
            return f"needs {k} x {name}: over its max_workers ({t.max_workers})"
    cost = sum(t.cost_per_hour for t, _ in new)
    if cost > budget + EPS:
        return f"needs {cost:g} $/h more: over max_cost_per_hour ({lim.max_cost_per_hour:g} $/h)"
    return None


def _why_unmet(s, types, backed_off, count_by_type, out, lim, room, budget) -> str:
    fitting = [t for t in types.values() if type_can_run(t.resources, dict(s))]
    if fitting and all(t.name in backed_off for t in fitting):
        return "every node type that fits is backing off after failures: " + ", ".join(t.name for t in fitting)
    if room <= 0:
        return f"at the global max_workers ({lim.max_workers}) or the upscaling_speed cap"
    if lim.max_cost_per_hour is not None and all(t.cost_per_hour > budget + EPS for t in fitting):
        return f"max_cost_per_hour ({lim.max_cost_per_hour:g} $/h) reached"
    if all(count_by_type.get(t.name, 0) + out.launches.get(t.name, 0) >= t.max_workers for t in fitting):
        return "every node type that fits is at its max_workers"
    return "waiting for capacity"
