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
    out = Plan()
    types = inp.node_types
    now = inp.now
    lim = inp.limits

    # --- demand, grouped ------------------------------------------------------------------------
    remaining: dict[Shape, int] = {}
    for request, count in inp.demand:
        s = shape_of(request)
        if s and count > 0:
            remaining[s] = remaining.get(s, 0) + count
    order = sorted(remaining, key=_size, reverse=True)

    # infeasible: no node type can hold even one item (judged as the runtime judges it)
    for s in list(order):
        if not any(type_can_run(t.resources, dict(s)) for t in types.values()):
            out.infeasible.append((s, remaining.pop(s), f"no node type has {fmt_shape(s)}"))
            order.remove(s)

    # --- existing and pending capacity ------------------------------------------------------------
    workers = [n for n in inp.nodes if not n.is_head and n.status != S.TERMINATING]
    absorbing: set[str] = set()  # nodes that waiting work is about to land on: not idle for long
    pools: list[tuple[str, dict[str, float]]] = []  # (node id, what it has free or will have), live nodes
    for n in sorted(inp.nodes, key=lambda n: n.id):
        if n.status == S.DRAINING or (n.draining and n.status == S.UP_TO_DATE):
            # A drained node is no capacity. One drained on its way out for being idle (its status still
            # up-to-date: the terminate found it busy) is taken back when waiting work fits it; one being
            # retired (status draining: outdated, failed, removed type) is not.
            if (n.status == S.UP_TO_DATE and n.registered and not n.is_head and not n.outdated
                    and n.node_type in types and _pack(_free(n), remaining, order)):
                out.undrains.append((n.id, "work is waiting that it can run"))
                for s, k in _pack(_free(n), remaining, order).items():
                    remaining[s] -= k
                absorbing.add(n.id)
            continue
        if n.status not in LIVE:
            continue
        if n.registered:
            pools.append((n.id, dict(_free(n))))
        elif n.node_type in types:  # launching: all of its type's resources will be free
            pools.append((n.id, dict(types[n.node_type].resources)))

    # placement groups that fit what is there (launching nodes included) go first: they need it whole
    groups_left: list[tuple[GroupDemand, int]] = []
    for g in inp.groups:
        why = _group_infeasible(g, types)
        if why:
            out.infeasible_groups.append((g.describe(), g.count, why))
            continue
        placed = 0
        while placed < g.count:
            got = _place_group(g, [cap for _, cap in pools], None, {})
            if got is None:
                break
            for i, cap in got[0].items():
                pools[i][1].update(cap)
                absorbing.add(pools[i][0])
            placed += 1
        if placed < g.count:
            groups_left.append((g, g.count - placed))

    for node_id, cap in pools:
        for s, k in _pack(cap, remaining, order).items():
            remaining[s] -= k
            _take(cap, s, k)
            absorbing.add(node_id)

    # --- scale-down (decided before launches so replacements are counted) -------------------------
    count_by_type: dict[str, int] = {}
    for n in workers:
        count_by_type[n.node_type] = count_by_type.get(n.node_type, 0) + 1
    leaving: set[str] = set()

    def terminate(node: NodeView, reason: str) -> None:
        out.terminations.append((node.id, reason))
        leaving.add(node.id)
        count_by_type[node.node_type] = count_by_type.get(node.node_type, 0) - 1

    def retire(n: NodeView, reason: str) -> None:
        """Terminate an idle node; drain a busy one first (it is terminated once drained)."""
        if n.running == 0:
            terminate(n, reason)
        elif n.status != S.DRAINING:
            out.drains.append((n.id, f"{reason}: draining first"))

    for n in sorted(workers, key=lambda n: n.id):
        if n.node_type not in types:
            retire(n, f"node type {n.node_type} is no longer in the config")
        elif n.status == S.UPDATE_FAILED:
            retire(n, "setup failed: replacing it")
        elif n.status in LIVE and n.status != S.UP_TO_DATE and now - n.status_since > lim.launch_timeout_s:
            retire(n, f"stuck in {n.status.value} for {(now - n.status_since) / 60:.0f} min")
        elif n.outdated:
            retire(n, "outdated node config: replacing it")
        elif n.status == S.UP_TO_DATE and not n.registered and n.lost_for > lim.runtime_grace_s:
            terminate(n, f"unknown to the runtime for {n.lost_for:.0f} s")
        elif n.status == S.DRAINING and n.running == 0 and n.id not in absorbing:
            terminate(n, "drained")

    def idle_timeout(n: NodeView) -> float:
        own = types[n.node_type].idle_timeout_s if n.node_type in types else None
        return lim.idle_timeout_s if own is None else own

    idle = [n for n in workers if n.id not in leaving and n.id not in absorbing and n.status == S.UP_TO_DATE
            and n.registered and n.running == 0 and n.idle_since > 0 and now - n.idle_since >= idle_timeout(n)]
    # least useful first: the most expensive, then the longest idle
    for n in sorted(idle, key=lambda n: (-types[n.node_type].cost_per_hour if n.node_type in types else 0.0,
                                         n.idle_since, n.id)):
        if n.node_type in types and count_by_type.get(n.node_type, 0) - 1 < types[n.node_type].min_workers:
            continue
        terminate(n, f"idle for {(now - n.idle_since) / 60:.1f} min")

    # --- launches --------------------------------------------------------------------------------
    current_workers = sum(1 for n in workers if n.id not in leaving)
    pending = sum(1 for n in workers if n.id not in leaving and n.status in LIVE and n.status != S.UP_TO_DATE)
    running_nodes = max(1, sum(1 for n in inp.nodes if n.status == S.UP_TO_DATE))
    speed_cap = max(5, math.ceil(lim.upscaling_speed * running_nodes)) - pending
    budget = math.inf if lim.max_cost_per_hour is None else lim.max_cost_per_hour - sum(
        types[n.node_type].cost_per_hour for n in inp.nodes if n.id not in leaving and n.node_type in types
        and n.status != S.TERMINATING)
    global_room = lim.max_workers - current_workers
    room = max(0, min(speed_cap, global_room))
    backed_off = {t for t, until in inp.backoff_until.items() if until > now}

    def can_launch(t: NodeTypeSpec) -> bool:
        return (t.name not in backed_off and count_by_type.get(t.name, 0) + out.launches.get(t.name, 0)
                < t.max_workers and t.cost_per_hour <= budget + EPS)

    def add(t: NodeTypeSpec, k: int, reason: str) -> None:
        nonlocal room, budget
        out.launches[t.name] = out.launches.get(t.name, 0) + k
        room -= k
        budget -= k * t.cost_per_hour
        prev = out.launch_reasons.get(t.name)
        out.launch_reasons[t.name] = f"{prev}; {reason}" if prev else reason

    # min_workers first: they are owed whatever the demand
    for t in sorted(types.values(), key=lambda t: t.name):
        missing = t.min_workers - count_by_type.get(t.name, 0)
        while missing > 0 and room > 0 and can_launch(t):
            add(t, 1, "min_workers")
            missing -= 1
            for s, k in _pack(dict(t.resources), remaining, order).items():
                remaining[s] -= k

    # weigh a unit of each shape by its cheapest stand-alone price, so mixed demand compares fairly
    weight: dict[Shape, float] = {}

    def weigh(s: Shape) -> float:
        if s not in weight:
            prices = [t.cost_per_hour / _fits(t.resources, s) for t in types.values() if _fits(t.resources, s) >= 1]
            weight[s] = min(prices) if prices else 0.0
        return weight[s]

    for s in order:
        weigh(s)

    # placement groups that need new nodes: all of a group's nodes are launched, or none
    new_pools: list[dict[str, float]] = []  # what nodes launched for groups have left, while any bundle fits
    group_shapes = {b for g, _ in groups_left for b in g.bundles}
    group_caps: list[dict[str, float]] = []  # every node launched for groups
    for g, count in groups_left:
        for done in range(count):
            launchable = [t for t in sorted(types.values(), key=lambda t: t.name) if can_launch(t)]
            usable = [(i, cap) for i, (node_id, cap) in enumerate(pools) if node_id not in leaving]
            got = _place_group(g, [cap for _, cap in usable] + new_pools, launchable, {b: weigh(b) for b in g.bundles})
            why = "every node type that fits is backing off or at its max_workers" if got is None else _over_limits(
                got[1], room, budget, count_by_type, out.launches, lim)
            if why:
                out.unmet_groups.append((g.describe(), count - done, why))
                break
            touched, new = got
            full = False
            for i, cap in touched.items():
                if i < len(usable):
                    usable[i][1].update(cap)
                    absorbing.add(pools[usable[i][0]][0])
                else:
                    new_pools[i - len(usable)].update(cap)
                    full = full or not any(_fits(cap, b) for b in group_shapes)
            if full:  # (thousands of groups: the nodes they filled are not looked at again)
                new_pools = [c for c in new_pools if any(_fits(c, b) for b in group_shapes)]
            by_type: dict[str, int] = {}
            for t, _ in new:
                by_type[t.name] = by_type.get(t.name, 0) + 1
            for name, k in sorted(by_type.items()):
                add(types[name], k, f"{k} x {name}: {g.describe()}")
            new_pools += [cap for _, cap in new if any(_fits(cap, b) for b in group_shapes)]
            group_caps += [cap for _, cap in new]
    # what new group nodes leave free serves queued work before more nodes are launched for it
    for cap in group_caps:
        for s, k in _pack(cap, remaining, order).items():
            remaining[s] -= k
            _take(cap, s, k)

    def value_of(placed: dict[Shape, int]) -> float:
        return sum(weight[s] * k for s, k in placed.items())

    def best_pattern(t: NodeTypeSpec) -> dict[Shape, int]:
        """The most valuable fill of one node: first-fit seeded with each waiting shape in turn
        (largest-first alone misses fits such as {CPU: 5, 40G} + {CPU: 3} on an 8-CPU 64G node)."""
        waiting = [s for s in order if remaining.get(s, 0) > 0]
        best: dict[Shape, int] = {}
        for seed in waiting:
            placed = _pack(t.resources, remaining, [seed] + [s for s in waiting if s != seed])
            if value_of(placed) > value_of(best) + EPS:
                best = placed
        return best

    while room > 0 and any(remaining.get(s, 0) > 0 for s in order):
        candidates = []
        for t in sorted(types.values(), key=lambda t: t.name):
            if can_launch(t):
                placed = best_pattern(t)
                if placed:
                    candidates.append((t, placed))
        cpu_alternative = any(not t.has_gpu for t, _ in candidates)
        best = None
        for t, placed in candidates:
            served = value_of(placed)
            value = served if served > 0 else sum(placed.values())
            # a GPU node that would run no GPU work loses to any non-GPU node that can serve
            gpu_waste = t.has_gpu and cpu_alternative and not any(dict(s).get("GPU", 0) > 0 for s in placed)
            # equal cost per unit served: the higher priority, then the name (deterministic)
            key = (gpu_waste, round(t.cost_per_hour / value, 9), -t.priority, t.name)
            if best is None or key < best[0]:
                best = (key, t, placed)
        if best is None:
            break
        _, t, placed = best
        # repeat this fill pattern as often as the demand, the type's max, the budget and the cap allow
        reps = min(remaining[s] // k for s, k in placed.items())
        reps = min(reps, room, t.max_workers - count_by_type.get(t.name, 0) - out.launches.get(t.name, 0))
        if t.cost_per_hour > 0 and budget != math.inf:
            reps = min(reps, int((budget + EPS) // t.cost_per_hour))
        reps = max(reps, 1)
        for s, k in placed.items():
            remaining[s] = max(0, remaining[s] - k * reps)
        desc = ", ".join(f"{k * reps} x {fmt_shape(s)}" for s, k in placed.items())
        add(t, reps, f"{reps} x {t.name}: {desc} queued")

    # what is still waiting, and why
    for s in order:
        if remaining.get(s, 0) > 0:
            why = _why_unmet(s, types, backed_off, count_by_type, out, lim, room, budget)
            out.unmet.append((s, remaining[s], why))
    return out


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


def _place_group(g: GroupDemand, pools: list[dict[str, float]], launchable: list[NodeTypeSpec] | None,
                 weight: dict[Shape, float]) -> tuple[dict[int, dict[str, float]], list[tuple[NodeTypeSpec, dict]]] | None:
    """One group, placed whole: bundles on `pools` (what nodes have free, not changed here), then on new
    nodes of `launchable` types (None: no new nodes). Returns (pool index -> its capacity after, [(type,
    new node's capacity after)]) or None if the group cannot be placed."""
    touched: dict[int, dict[str, float]] = {}
    new: list[tuple[NodeTypeSpec, dict[str, float]]] = []

    def cap(i: int) -> dict[str, float]:
        if i not in touched:
            touched[i] = dict(pools[i])
        return touched[i]

    def cheapest(shape: Shape) -> NodeTypeSpec | None:
        fitting = [t for t in launchable or () if _fits(t.resources, shape) >= 1]
        return min(fitting, key=lambda t: (t.cost_per_hour, -t.priority, t.name)) if fitting else None

    bundles = sorted(g.bundles, key=_size, reverse=True)
    if g.strategy == "STRICT_PACK":
        total = _sum(bundles)
        i = next((i for i, c in enumerate(pools) if _fits(c, total) >= 1), None)
        if i is not None:
            _take(cap(i), total, 1)
            return touched, new
        t = cheapest(total)
        if t is None:
            return None
        c = dict(t.resources)
        _take(c, total, 1)
        return touched, [(t, c)]
    if g.strategy == "STRICT_SPREAD":
        used: set[int] = set()
        for b in bundles:
            i = next((i for i, c in enumerate(pools) if i not in used and _fits(c, b) >= 1), None)
            if i is not None:
                used.add(i)
                _take(cap(i), b, 1)
                continue
            t = cheapest(b)
            if t is None:
                return None
            c = dict(t.resources)
            _take(c, b, 1)
            new.append((t, c))
        return touched, new
    # PACK, SPREAD: the runtime may share nodes, so the cheapest packing serves both
    for n, b in enumerate(bundles):
        i = next((i for i in touched if _fits(touched[i], b) >= 1), None)
        if i is None:
            i = next((i for i, c in enumerate(pools) if i not in touched and _fits(c, b) >= 1), None)
        if i is not None:
            _take(cap(i), b, 1)
            continue
        j = next((j for j, (_, c) in enumerate(new) if _fits(c, b) >= 1), None)
        if j is not None:
            _take(new[j][1], b, 1)
            continue
        best = None
        for t in launchable or ():
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
        c = dict(best[1].resources)
        _take(c, b, 1)
        new.append((best[1], c))
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
