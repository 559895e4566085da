"""Resource shapes, and the one rule for whether a node type could ever run a request.

The runtime's scheduler (infeasible or queued?) and the autoscaler's planner (launch or report
infeasible?) both judge with `type_can_run` on the same node-type resources, so they never disagree.
"""

from __future__ import annotations

EPS = 1e-9
# Resources every node has: a node type whose amounts are not known yet (not declared, no catalog,
# no node of it registered) is assumed to have enough of these, and none of anything else.
UNIVERSAL = ("CPU", "memory")

Shape = tuple[tuple[str, float], ...]


def shape_of(request: dict[str, float]) -> Shape:
    return tuple(sorted((k, float(v)) for k, v in request.items() if v > 0))


def fmt_shape(shape: Shape) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shape) + "}"


def type_can_run(resources: dict[str, float] | None, request: dict[str, float]) -> bool:
    """Could one node of a type with these resources run `request`? CPU and memory a type does not
    state are unknown and assumed sufficient; any other resource it does not state, it lacks."""
    res = resources or {}
    return all(v <= 0 or (k in UNIVERSAL and k not in res) or res.get(k, 0.0) + EPS >= v
               for k, v in request.items())
