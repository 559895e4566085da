"""What `launch simulate` reports of a run (launcher/simulate.py): the summary its table and `--json` show,
variants side by side (--set), and the nodes-over-time chart (a self-contained HTML page with an SVG)."""

from __future__ import annotations

import html
import itertools
import math
from pathlib import Path

import yaml

from core.config import ClusterConfig, read_config_file
from core.errors import ConfigError
from launcher.simulate import CLOUD_BOOT_S, Outcome, Simulation
from launcher.trace import TraceTask
from lifecycle.config import parse_config
from providers import section
from providers.sim import Section as SimModel

MODEL_KEYS = set(SimModel.model_fields) - set(SimModel.__mro__[1].model_fields)  # boot_time_s, capacity, ...
MODEL_KEYS.add("create_failure_rate")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(o: Outcome) -> dict:
    cost_by_type: dict[str, float] = {}
    spot_usd = 0.0
    provisioned: dict[str, float] = {}
    for n in o.nodes:
        up = (o.end if n.gone_at is None else n.gone_at) - n.launched_at
        usd = n.per_hour * up / 3600
        cost_by_type[n.node_type] = cost_by_type.get(n.node_type, 0.0) + usd
        spot_usd += usd if n.spot else 0.0
        for k, v in n.resources.items():
            if k in ("CPU", "GPU"):
                provisioned[k] = provisioned.get(k, 0.0) + v * up
    waits = [r.first_start - r.task.t for r in o.runs if r.first_start is not None]
    by_resource = {k: round(o.busy.get(k, 0.0) / v, 4) for k, v in sorted(provisioned.items()) if v > 0}
    main = "GPU" if "GPU" in by_resource else "CPU"
    total = sum(cost_by_type.values())
    peak = max((sum(alive.values()) for _, alive, _ in o.timeline), default=0)
    return {
        "cost_usd": round(total, 4),
        "cost_by_type": {t: round(v, 4) for t, v in sorted(cost_by_type.items())},
        "cost_spot_usd": round(spot_usd, 4), "cost_on_demand_usd": round(total - spot_usd, 4),
        "wait_p50_s": round(percentile(waits, 0.5), 3), "wait_p99_s": round(percentile(waits, 0.99), 3),
        "wait_max_s": round(max(waits, default=0.0), 3),
        "utilization": by_resource.get(main, 0.0), "utilization_of": main, "utilization_by_resource": by_resource,
        "tasks": len(o.runs), "tasks_finished": sum(1 for r in o.runs if r.finished_at is not None),
        "tasks_infeasible": sum(o.infeasible.values()), "infeasible": o.infeasible,
        "tasks_unfinished": sum(1 for r in o.runs if r.finished_at is None) - sum(o.infeasible.values()),
        "preemptions": o.counts.preemptions, "tasks_preempted": sum(r.preempted for r in o.runs),
        "launches": o.counts.launches, "launch_failures": o.counts.launch_failures,
        "terminations": o.counts.terminations, "nodes_peak": peak,
        "span_s": round(o.end, 3), "ticks": o.counts.ticks, "ticks_skipped": o.counts.ticks_skipped,
        "boot_time_s": o.model.boot_time_s, "wall_s": round(o.wall_s, 3),
    }


def _assign(data: dict, dotted: str, value) -> None:
    """data[a][b][c] = value for "a.b.c"; a key that holds dots (Ray's "ray.worker.default") is matched
    whole where the data has it."""
    keys = dotted.split(".")
    at = data
    while len(keys) > 1:
        n = next((n for n in range(len(keys) - 1, 0, -1) if ".".join(keys[:n]) in at), 1)
        k, keys = ".".join(keys[:n]), keys[n:]
        if not isinstance(at.get(k), dict):
            if k in at and at[k] is not None:
                raise ConfigError(f"--set {dotted}: {k} is not a section")
            at[k] = {}
        at = at[k]
    at[keys[0]] = value


def parse_sets(sets: list[str]) -> list[dict[str, object]]:
    """--set KEY=V1,V2 (repeatable): the variants, one per combination of values, in the order given."""
    axes = []
    for s in sets:
        key, eq, values = s.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise ConfigError(f"--set {s}: expected KEY=VALUE[,VALUE...] (e.g. idle_timeout_minutes=2,10)")
        axes.append([(key.strip(), yaml.safe_load(v.strip())) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def variant(path: Path, changes: dict[str, object]) -> tuple[ClusterConfig, SimModel]:
    """The config with the variant's changes (a key of the sim model goes to it, any other is a config path:
    max_workers, available_node_types.gpu.max_workers, ...), checked as `up` checks it."""
    data = read_config_file(path)
    model_changes = {}
    for key, value in changes.items():
        if key.split(".")[0] in MODEL_KEYS:
            model_changes[key] = value
        elif isinstance(data, dict):
            _assign(data, key, value)
    cfg = parse_config(data, path.parent)
    model = section(cfg) if cfg.provider.kind == "sim" else SimModel(type="sim", boot_time_s=CLOUD_BOOT_S)
    raw = model.model_dump()
    for key, value in model_changes.items():
        _assign(raw, key, value)
    try:
        return cfg, SimModel.model_validate(raw)
    except Exception as e:  # noqa: BLE001  pydantic's error, said in one line per field
        from core.config import pydantic_problems

        raise ConfigError([f"--set {p}" for p in pydantic_problems(e)]) from None


def simulate(path: Path, tasks: list[TraceTask], sets: list[str], horizon_s: float) -> list[tuple[dict, Outcome]]:
    runs = []
    for changes in parse_sets(sets):
        cfg, model = variant(path, changes)
        runs.append((changes, Simulation(cfg, tasks, model, horizon_s).run()))
    return runs


# --- the chart ------------------------------------------------------------------------------------

# Okabe-Ito: told apart with any colour vision
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _steps(points: list[tuple[float, float]], x, y) -> str:
    out = []
    for i, (t, v) in enumerate(points):
        if i:
            out.append(f"L{x(t):.1f},{y(points[i - 1][1]):.1f}")
        out.append(f"{'M' if not i else 'L'}{x(t):.1f},{y(v):.1f}")
    return " ".join(out)


def chart_html(runs: list[tuple[dict, Outcome]], title: str) -> str:
    """Nodes by type (steps) and the fleet's $/h (dashed) over virtual time, a panel per variant."""
    panels = []
    for changes, o in runs:
        w, h, pad = 720, 260, 44
        end = max(o.end, 1.0)
        types = sorted({t for _, alive, _ in o.timeline for t in alive})
        top = max([1] + [k for _, alive, _ in o.timeline for k in alive.values()])
        top_usd = max([0.01] + [usd for _, _, usd in o.timeline])
        x = lambda t: pad + (w - 2 * pad) * t / end  # noqa: E731
        y = lambda v: h - pad - (h - 2 * pad) * v / top  # noqa: E731
        y_usd = lambda v: h - pad - (h - 2 * pad) * v / top_usd  # noqa: E731
        lines = []
        for i, t in enumerate(types):
            pts = [(at, alive.get(t, 0)) for at, alive, _ in o.timeline] + [(end, o.timeline[-1][1].get(t, 0))]
            lines.append(f'<path d="{_steps(pts, x, y)}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" '
                         f'stroke-width="2"><title>{html.escape(t)}</title></path>')
        usd = [(at, v) for at, _, v in o.timeline] + [(end, o.timeline[-1][2])]
        lines.append(f'<path d="{_steps(usd, x, y_usd)}" fill="none" stroke="#555" stroke-dasharray="5 4"/>')
        legend = " ".join(f'<span style="color:{COLOURS[i % len(COLOURS)]}">&#9632; {html.escape(t)}</span>'
                          for i, t in enumerate(types))
        label = ", ".join(f"{k}={v}" for k, v in changes.items()) or "as configured"
        s = summary(o)
        panels.append(
            f'<section><h2>{html.escape(label)}</h2><p>{legend} <span>- - $/h (max {top_usd:.2f})</span></p>'
            f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="nodes over time, {html.escape(label)}">'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
            f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end" font-size="12">{top}</text>'
            f'<text x="{pad - 6}" y="{h - pad}" text-anchor="end" font-size="12">0</text>'
            f'<text x="{w - pad}" y="{h - pad + 18}" text-anchor="end" font-size="12">{end / 3600:.2f} h</text>'
            f'{"".join(lines)}</svg><p>${s["cost_usd"]:.2f}; wait p50 {s["wait_p50_s"]:.0f} s, p99 '
            f'{s["wait_p99_s"]:.0f} s; utilization {s["utilization"]:.0%} of {s["utilization_of"]}; '
            f'{s["preemptions"]} preemption(s)</p></section>')
    return (f'<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width"><title>{html.escape(title)}</title><style>body{{font-family:sans-serif;'
            f'max-width:760px;margin:1em auto;padding:0 8px}}svg{{width:100%;height:auto}}</style>'
            f'<h1>{html.escape(title)}</h1><p>Nodes by type over virtual time (steps) and the fleet\'s $/h '
            f'(dashed).</p>{"".join(panels)}</html>\n')
