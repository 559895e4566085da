"""The `launch` command line.

Every command that fails for a reason the user can act on prints one line per problem on stderr and
exits non-zero (2 for an invalid config) without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.config import ClusterConfig
from core.errors import ConfigError, LaunchError, first_line
from core.paths import launch_home
from lifecycle.config import json_schema, load_config

app = typer.Typer(
    name="launch",
    help="Launch and autoscale clusters on clouds, on-prem hosts, Slurm, or this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ConfigFile = typer.Argument(..., help="The cluster config YAML.", show_default=False)
Yes = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            for problem in e.problems:
                err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except LaunchError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except Exception as e:
            grpc = sys.modules.get("grpc")  # imported only by the commands that talk to the head
            if grpc is not None and isinstance(e, grpc.RpcError):
                # the head away (HeadUnavailable says so), or it refused: one line, no raw gRPC text
                message = str(e) if isinstance(e, ConnectionError) else (
                    f"the head service refused the call ({e.code().name}): {first_line(e.details() or '', 200)}")
            elif isinstance(e, OSError):  # this machine's own state: a read-only or full LAUNCH_HOME
                message = (f"{e.filename}: {e.strerror}" if e.filename else
                           f"{e.strerror or first_line(str(e), 200)} (launch keeps its state in {launch_home()})")
            else:
                raise
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _confirm(yes: bool):
    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            err.print(f"{question} [no terminal to ask: pass --yes]")
            return False
        return typer.confirm(question, default=False)

    return confirm


def _warn(cfg: ClusterConfig) -> None:
    """What reading the file as Ray reads it dropped or filled in: said by `validate` and `up`."""
    for w in cfg.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)


def _cluster(path: Path, warn: bool = False):
    from launcher.cluster import Cluster  # keeps `launch validate/schema` free of gRPC imports

    cfg = load_config(path)
    if warn:
        _warn(cfg)
    return Cluster(cfg, say=lambda msg: err.print(msg, highlight=False))


@app.command()
@_handle_errors
def validate(config: Path = ConfigFile) -> None:
    """Check a cluster config and print a summary of it."""
    cfg: ClusterConfig = load_config(config)
    _warn(cfg)
    types = ", ".join(
        f"{name}({nt.min_workers}-{cfg.worker_max(name)})" for name, nt in cfg.available_node_types.items()
    )
    out.print(f"{config}: valid. cluster {cfg.cluster_name!r} on {cfg.provider.kind}, head {cfg.head_node_type}, "
              f"node types: {types}", highlight=False, soft_wrap=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the cluster config (for editors)."""
    print(json.dumps(json_schema(), indent=2))


def _wide() -> Console:
    """The console for a wide table: a terminal's own width, else wide enough not to cut its cells."""
    return out if out.is_terminal else Console(width=160)


@app.command()
@_handle_errors
def prices(
    config: Path | None = typer.Argument(None, help="A cluster config: the prices its node types are planned with.",
                                         show_default=False),
    cloud: str | None = typer.Option(None, "--cloud", help="aws, gcp or azure."),
    region: str | None = typer.Option(None, "--region"),
    gpu: str | None = typer.Option(None, "--gpu", help="An accelerator, e.g. H100, A100, L4."),
    spot: bool = typer.Option(False, "--spot", help="Spot prices (types that have one)."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many rows."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The price catalog's instance types, cheapest first; or, given a cluster config, what each of its
    node types costs and where that price comes from."""
    from autoscaler import pricing

    if config is not None:
        cfg = load_config(config)
        rows = [{"node_type": name, "per_hour": q.per_hour, "source": q.source}
                for name, q in ((n, pricing.quote(cfg, n)) for n in cfg.available_node_types)]
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        table = Table("node type", "$/h", "from")
        for r in rows:
            table.add_row(r["node_type"], f"{r['per_hour']:.4f}", r["source"])
        _wide().print(table)
        return
    if cloud is not None and cloud not in ("aws", "gcp", "azure"):
        raise ConfigError(f"--cloud: {cloud!r}: expected aws, gcp or azure")
    found = pricing.offers(cloud, region, gpu, spot)
    if not found:
        raise ConfigError("prices: no instance type of the catalog matches " + " ".join(
            f"{k} {v}" for k, v in (("--cloud", cloud), ("--region", region), ("--gpu", gpu)) if v)
            + (" with a spot price" if spot else ""))
    rows = found[:limit]
    if as_json:
        print(json.dumps([{**o.__dict__, "date": pricing.source_date(o.source)} for o in rows], indent=1))
        return
    table = Table("cloud", "type", "region", "vCPUs", "GiB", "accelerators", "$/h", "$/GPU-h", "as of")
    for o in rows:
        price = o.price(spot)
        gpus = ", ".join(f"{n} x{c:g}" for n, c in o.accelerators.items()) or "-"
        table.add_row(o.cloud, o.machine, o.region, f"{o.cpus:g}" if o.cpus else "-",
                      f"{o.memory_gib:g}" if o.memory_gib else "-", gpus, f"{price:.4f}",
                      f"{price / o.gpus():.4f}" if o.gpus() else "-", pricing.source_date(o.source))
    _wide().print(table)
    if len(found) > limit:
        out.print(f"({len(found) - limit} more: --limit, or narrow with --cloud, --region, --gpu)")


def _print_plan(path: Path, as_json: bool) -> None:
    from launcher.plan import fleet_plan

    cfg = load_config(path)
    fp = fleet_plan(cfg)
    running = None
    if (launch_home() / "clusters" / cfg.cluster_name).is_dir() and (cluster := _cluster(path)).dir.load_spec():
        # up: what its autoscaler decided on its last tick (a plan makes no state of a cluster never up)
        try:
            running = cluster.status().get("autoscaler")
        except LaunchError as e:
            running = {"error": f"the cluster is up but its state could not be read ({first_line(str(e))})"}
    if as_json:
        print(json.dumps({**fp.as_dict(), "autoscaler": running}, indent=1, default=str))
        return
    table = Table("role", "node type", "count", "machine", "market", "where (in order)", "$/h each", "$/h", "why",
                  title=f"launch up {path.name} would create (nothing is created; no cloud was called)")
    for n in fp.nodes:
        table.add_row(n.role, n.node_type, str(n.count), n.machine, n.market, n.where, f"{n.per_hour:.4f}",
                      f"{n.total:.4f}", n.why)
    _wide().print(table)
    cap = fp.max_cost_per_hour
    capped = ("no max_cost_per_hour" if cap is None else f"max_cost_per_hour ({cap:g} $/h) caps it there"
              if cap < fp.at_max_workers else f"max_cost_per_hour ({cap:g} $/h) is never reached")
    out.print(f"Fleet: {fp.at_min_workers:.4f} $/h at min_workers, up to {fp.at_max_workers:.4f} $/h at "
              f"max_workers; {capped}", highlight=False)
    for name, image in sorted({(n.node_type, n.image) for n in fp.nodes}):
        out.print(f"  image of {name}: {image}", highlight=False)
    for name in fp.resources_unknown:
        out.print(f"  {name}: its shape is not in the catalog; the cloud says it at `up`", highlight=False)
    if running:
        out.print("The cluster is up; its autoscaler's last tick:", highlight=False)
        _print_autoscaler(running)


@app.command()
@_handle_errors
def dashboard(config: Path = ConfigFile,
              no_browser: bool = typer.Option(False, "--no-browser", help="Print the link; open no browser.")) -> None:
    """Open the cluster's dashboard in the browser, through an SSH port forward to the head (nothing new is
    exposed on the head). The link logs one browser in once, within two minutes; Ctrl-C closes the forward."""
    import time
    import webbrowser

    cluster = _cluster(config)
    url = cluster.dashboard_url()
    out.print(f"Dashboard of {cluster.cfg.cluster_name}: {url}", highlight=False, soft_wrap=True)
    out.print("(a one-time link: it logs one browser in, within 2 minutes; Ctrl-C closes the forward)",
              highlight=False)
    sys.stdout.flush()
    if not no_browser:
        webbrowser.open(url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("closed")


SIM_ROWS = [("cost ($)", "cost_usd", "{:.2f}"), ("  on spot ($)", "cost_spot_usd", "{:.2f}"),
            ("wait p50 (s)", "wait_p50_s", "{:.1f}"), ("wait p99 (s)", "wait_p99_s", "{:.1f}"),
            ("utilization", "utilization", "{:.1%}"), ("tasks finished", "tasks_finished", "{}"),
            ("tasks infeasible", "tasks_infeasible", "{}"), ("tasks unfinished", "tasks_unfinished", "{}"),
            ("preemptions", "preemptions", "{}"), ("tasks preempted", "tasks_preempted", "{}"),
            ("launches", "launches", "{}"), ("launch failures", "launch_failures", "{}"),
            ("nodes at peak", "nodes_peak", "{}"), ("span (h)", "span_s", "{:.2f}"), ("computed in (s)", "wall_s", "{:.1f}")]


@app.command()
@_handle_errors
def simulate(
    config: Path = ConfigFile,
    trace: Path = typer.Option(..., "--trace", help="JSON lines, one task each: {\"t\": 0, \"resources\": "
                               "{\"CPU\": 1}, \"duration\": 600}; or the output of `launch job list --json`."),
    sets: list[str] = typer.Option([], "--set", help="KEY=V1,V2: variants side by side (repeatable), e.g. "
                                   "idle_timeout_minutes=2,10 or boot_time_s=30,120."),
    as_json: bool = typer.Option(False, "--json"),
    chart: Path | None = typer.Option(None, "--chart", help="Where to write the nodes-over-time chart (HTML); "
                                      "default simulate-CLUSTER.html here."),
    no_chart: bool = typer.Option(False, "--no-chart"),
    horizon_hours: float = typer.Option(168.0, "--horizon-hours", min=0.01, max=24 * 366,
                                        help="Stop the replay after this much virtual time."),
) -> None:
    """Replay a workload trace through the real planner and scheduler on a simulated cloud, in virtual time:
    what it costs, how long work waits, how busy the nodes are. Nothing is created."""
    from launcher.simulate_report import chart_html, simulate as run_variants, summary
    from launcher.trace import read_trace

    tasks = read_trace(trace)
    runs = run_variants(config, tasks, sets, horizon_hours * 3600)
    results = [{"set": changes, **summary(o)} for changes, o in runs]
    cluster = runs[0][1].cfg.cluster_name
    if not no_chart:
        chart = chart or Path(f"simulate-{cluster}.html")
        chart.write_text(chart_html(runs, f"launch simulate {config.name} --trace {trace.name}"))
    if as_json:
        print(json.dumps(results[0] if len(results) == 1 else {"variants": results}, indent=1))
        return
    table = Table("", *[", ".join(f"{k}={v}" for k, v in r["set"].items()) or "as configured" for r in results],
                  title=f"{len(tasks):,} tasks of {trace.name} on {cluster} (simulated; nothing was created)")
    for label, key, fmt in SIM_ROWS:
        table.add_row(label, *[fmt.format(r[key] / 3600 if key == "span_s" else r[key]) for r in results])
    for t in sorted({t for r in results for t in r["cost_by_type"]}):
        table.add_row(f"  {t} ($)", *[f"{r['cost_by_type'].get(t, 0.0):.2f}" for r in results])
    _wide().print(table)
    for r in results:
        for reason, count in r["infeasible"].items():
            out.print(f"  {count} task(s) infeasible: {reason}", highlight=False)
    if not no_chart:
        out.print(f"Nodes over time: {chart}", highlight=False)


@app.command()
@_handle_errors
def plan(config: Path = ConfigFile, as_json: bool = typer.Option(False, "--json")) -> None:
    """What `up` would create now, node by node, with $/h and the fleet's $/h range; for a cluster that is
    up, also what its autoscaler would do with today's demand. Nothing is created."""
    _print_plan(config, as_json)


@app.command()
@_handle_errors
def up(
    config: Path = ConfigFile,
    yes: bool = Yes,
    restart_runtime: bool = typer.Option(
        False, "--restart-runtime", help="Restart the runtime on every node even if nothing changed."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be created (as `launch plan`); create "
                                                          "nothing."),
) -> None:
    """Create or update the cluster: only what changed is redone."""
    if dry_run:
        _print_plan(config, as_json=False)
        return
    cluster = _cluster(config, warn=True)
    with err.status(f"bringing up cluster {cluster.cfg.cluster_name}…"):
        result = cluster.up(confirm=_confirm(yes), restart_runtime=restart_runtime)
    if result.actions:
        for action in result.actions:
            out.print(f"  {action}", highlight=False)
    else:
        out.print(f"Cluster {cluster.cfg.cluster_name!r} is up to date: nothing changed.")
    for f in result.failures:
        err.print(f"[red]failed:[/red] {f} (log: launch status {config} --node {f.node_id} --log)", highlight=False)
    nodes = len(cluster.nodes())
    out.print(f"Cluster {cluster.cfg.cluster_name!r} is up: {nodes} node(s), head service at "
              f"{result.head_address}.", highlight=False)
    out.print(f"  launch status {config}\n  launch exec {config} 'CMD'\n  launch down {config}", highlight=False)


@app.command()
@_handle_errors
def down(
    config: Path = ConfigFile,
    yes: bool = Yes,
    keep_stopped: bool = typer.Option(
        False, "--keep-stopped",
        help="Stop the nodes instead of terminating them, and keep stopped ones (providers that can stop)."),
    purge: bool = typer.Option(
        False, "--purge", help="Also delete what `up` created for the cluster and would otherwise keep "
                               "(azure: the resource group, when launch made it)."),
) -> None:
    """Terminate every node of the cluster (stopped, cached ones too)."""
    cluster = _cluster(config)
    verb = "Stop" if keep_stopped else "Terminate"
    if not _confirm(yes)(f"{verb} every node of cluster {cluster.cfg.cluster_name!r}?"):
        raise LaunchError("not confirmed; nothing was terminated")
    with err.status(f"tearing down cluster {cluster.cfg.cluster_name}…"):
        n = cluster.down(keep_stopped=keep_stopped, purge=purge)
    done = "stopped or terminated (spot)" if keep_stopped else "terminated"
    out.print(f"Cluster {cluster.cfg.cluster_name!r} is down: {n} node(s) {done}.")


def _fmt_amount(name: str, v: float) -> str:
    if name == "memory":
        return f"{v / 2**30:.1f}G"
    return f"{v:g}"


def _fmt_resources(total: dict[str, float], available: dict[str, float]) -> str:
    order = sorted(total, key=lambda k: ({"CPU": 0, "GPU": 1, "memory": 2}.get(k, 3), k))
    parts = []
    for k in order:
        used = total[k] - available.get(k, total[k])
        parts.append(f"{k} {_fmt_amount(k, used)}/{_fmt_amount(k, total[k])}")
    return ", ".join(parts) or "-"


def _fmt_age(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _shape(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {_fmt_amount(k, v)}" for k, v in sorted(d.items())) + "}"


def _print_work(st: dict) -> None:
    """What waits and why: queued work (demand) and work no node type can run, with the reason."""
    demand = ", ".join(f"{d['count']} x {_shape(d['shape'])}" for d in st.get("pending_demand", []))
    lines = [f"pending demand: {demand or 'none'}"]
    for g in st.get("pending_groups", []):
        bundles = " + ".join(_shape(b) for b in g["bundles"])
        lines.append(f"pending placement group: {g['count']} x {g['strategy']} [{bundles}]")
    for d in st.get("infeasible", []):
        lines.append(f"infeasible: {d['count']} x {_shape(d['shape'])}: {d['reason']}")
    out.print("\n".join(lines), highlight=False)


def _print_autoscaler(a: dict | None) -> None:
    if a is None:
        return
    age = a.get("last_tick_age_s")
    tick = "never ticked" if age is None else f"last tick {_fmt_age(age)} ago"
    if a.get("alive"):
        head = f"[green]running[/green] (pid {a['pid']}, {tick})"
    elif a.get("running"):
        head = f"[yellow]running but not ticking[/yellow] (pid {a['pid']}, {tick}): what follows is stale"
    else:
        head = f"[red]NOT RUNNING[/red] ({tick}): what follows is stale; `launch up` restarts it"
    lines = [f"Autoscaler: {head}, cost {a.get('cost_per_hour', 0):.2f} $/h"]
    if a.get("error"):
        lines.append(f"  {a['error']}")
    for d in a.get("denied", []):  # the head's credentials are its instance's: a role may lack a permission
        lines.append(f"  [red]denied[/red]: {escape(d['line'])} (next try in {_fmt_age(d['retry_in_s'])} at most)")
    for t, why in a.get("launch_reasons", {}).items():
        lines.append(f"  launching {a['launches'].get(t, 0)} x {t}: {why}")
    for t in a.get("terminations", []):
        lines.append(f"  terminating {t['node']}: {t['reason']}")
    for d in a.get("drains", []):
        lines.append(f"  draining {d['node']}: {d['reason']}")
    for d in a.get("infeasible", []):
        lines.append(f"  infeasible: {d['count']} x {d['shape']}: {d['reason']}")
    for d in a.get("unmet", []):
        lines.append(f"  waiting: {d['count']} x {d['shape']}: {d['reason']}")
    for d in a.get("infeasible_groups", []):
        lines.append(f"  infeasible: {d['count']} x {d['group']}: {d['reason']}")
    for d in a.get("unmet_groups", []):
        lines.append(f"  waiting: {d['count']} x {d['group']}: {d['reason']}")
    for t, f in a.get("failures", {}).items():
        lines.append(f"  failing: {t}: {f['count']} failure(s), backing off {_fmt_age(f.get('backoff_s', 0))}; "
                     f"last: {f.get('last_error', '')}")
    for t, p in sorted(a.get("prices", {}).items()):
        lines.append(f"  price of {t}: {p['per_hour']:.4f} $/h ({p['source']})")
    out.print("\n".join(lines), highlight=False)


@app.command()
@_handle_errors
def status(
    config: Path = ConfigFile,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    node: str = typer.Option(None, "--node", help="With --log: the node whose setup log to print."),
    log: bool = typer.Option(False, "--log", help="Print the full setup log of --node."),
) -> None:
    """Show the cluster's nodes: type, status, IP, resources used/total, age."""
    if log or node:
        if not (log and node):
            raise LaunchError("--log and --node go together: launch status FILE --node ID --log")
        print(_cluster(config).setup_log(node), end="")
        return
    st = _cluster(config).status()
    if as_json:
        print(json.dumps(st, indent=2))
        return
    if not st["nodes"]:
        out.print(f"Cluster {st['cluster']!r} has no nodes.")
        return
    table = Table(title=f"cluster {st['cluster']} ({st['provider']}), head service {st['head_address'] or '-'}")
    for col in ("NODE", "KIND", "TYPE", "STATUS", "IP", "RUNTIME", "RESOURCES (used/total)", "AGE"):
        table.add_column(col)
    for n in st["nodes"]:
        status = f"{n['status']} ({n['detail']})" if n.get("detail") else n["status"]
        runtime_state = n["runtime"]
        if n.get("preempting"):  # a spot notice: going in so many seconds, its replacement on the way
            runtime_state += f" (PREEMPTED in {max(0, int(n['preempting']['in_s']))}s: {n['preempting']['reason']})"
        table.add_row(n["id"], n["kind"], n["node_type"], status, n["ip"] or "-", runtime_state,
                      _fmt_resources(n["resources_total"], n["resources_available"]), _fmt_age(n["age_s"]))
    out.print(table)
    _print_work(st)
    _print_autoscaler(st.get("autoscaler"))
    if st["runtime_error"]:
        err.print(f"[yellow]warning:[/yellow] {st['runtime_error']}")


def _session(tmux: bool, screen: bool) -> str | None:
    if tmux and screen:
        raise LaunchError("--tmux and --screen: choose one")
    return "tmux" if tmux else "screen" if screen else None


def _write(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


NodeOpt = typer.Option(None, "--node", help="A node id (see `launch status`); default: the head.")
TmuxOpt = typer.Option(False, "--tmux", help="Use a tmux session on the node.")
ScreenOpt = typer.Option(False, "--screen", help="Use a screen session on the node.")


@app.command("exec")
@_handle_errors
def exec_(
    config: Path = ConfigFile,
    cmd: str = typer.Argument(..., help="The shell command to run on the node."),
    node: str = NodeOpt,
    tmux: bool = typer.Option(False, "--tmux", help="Run it in a new detached tmux session; return at once."),
    screen: bool = typer.Option(False, "--screen", help="Run it in a new detached screen session."),
    start: bool = typer.Option(False, "--start", help="Bring the cluster up first (as `launch up --yes`)."),
    stop: bool = typer.Option(False, "--stop", help="Tear the cluster down after the command."),
) -> None:
    """Run a command on the head (or --node), streaming its output; exits with its exit code."""
    session = _session(tmux, screen)
    cluster = _cluster(config)
    if start:
        cluster.up(confirm=lambda question: True)
    try:
        code = cluster.exec(cmd, _write, node_id=node, session=session)
    finally:
        if stop:
            err.print(f"tearing down cluster {cluster.cfg.cluster_name} (--stop): {cluster.down()} node(s)")
    raise typer.Exit(code)


@app.command()
@_handle_errors
def attach(
    config: Path = ConfigFile,
    node: str = NodeOpt,
    tmux: bool = TmuxOpt,
    screen: bool = ScreenOpt,
    new: bool = typer.Option(False, "--new", help="Start a new tmux/screen session instead of re-attaching."),
) -> None:
    """An interactive shell on the head (or --node), re-attaching to tmux/screen when asked."""
    if new and not (tmux or screen):
        raise LaunchError("--new needs --tmux or --screen")
    raise typer.Exit(_cluster(config).attach(node_id=node, session=_session(tmux, screen), new=new))


@app.command("rsync-up")
@_handle_errors
def rsync_up(
    config: Path = ConfigFile,
    source: Path = typer.Argument(..., help="A local file or directory."),
    target: str = typer.Argument(..., help="Where it goes on the node (~ is the node's home)."),
    node: str = NodeOpt,
    all_nodes: bool = typer.Option(False, "--all-nodes", "-A", help="Copy to every node of the cluster."),
) -> None:
    """Copy files to the head (or --node, or every node); only changed files are sent."""
    n = _cluster(config).rsync_up(source, target, node_id=node, all_nodes=all_nodes)
    out.print(f"{source} -> {target}: {n} file(s) sent", highlight=False)


@app.command("rsync-down")
@_handle_errors
def rsync_down(
    config: Path = ConfigFile,
    source: str = typer.Argument(..., help="A file or directory on the node."),
    target: Path = typer.Argument(..., help="Where it goes here."),
    node: str = NodeOpt,
) -> None:
    """Copy files from the head (or --node) to this machine."""
    n = _cluster(config).rsync_down(source, target, node_id=node)
    out.print(f"{source} -> {target}: {n} file(s) copied", highlight=False)


@app.command("get-head-ip")
@_handle_errors
def get_head_ip(config: Path = ConfigFile) -> None:
    """Print the head node's IP."""
    print(_cluster(config).head_ip())


@app.command("get-worker-ips")
@_handle_errors
def get_worker_ips(config: Path = ConfigFile) -> None:
    """Print the worker nodes' IPs, one per line."""
    for ip in _cluster(config).worker_ips():
        print(ip)


@app.command()
@_handle_errors
def monitor(
    config: Path = ConfigFile,
    lines: int = typer.Option(50, "--lines", "-n", help="How many past lines to show."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Keep following the log."),
) -> None:
    """Follow the runtime's log on the head."""
    raise typer.Exit(_cluster(config).monitor(_write, lines=lines, follow=follow))


job_app = typer.Typer(help="List, follow and cancel jobs.", no_args_is_help=True)
app.add_typer(job_app, name="job")


def _exit_for(info) -> int:
    """The job's own exit code when it failed with one; 1 when it was cancelled, lost or killed."""
    if info.state == "finished":
        return 0
    return info.exit_code if info.state == "failed" and 0 < info.exit_code < 256 else 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_handle_errors
def submit(
    ctx: typer.Context,
    config: Path = ConfigFile,
    script: Path = typer.Argument(..., help="The script to run (.py with the node's Python, .sh with bash)."),
    cpus: float = typer.Option(1, "--cpus", help="CPUs the job needs."),
    gpus: float = typer.Option(0, "--gpus", help="GPUs the job needs (fractions allowed below 1)."),
    resource: list[str] = typer.Option([], "--resource", "-r", help="A custom resource NAME=AMOUNT (repeatable)."),
    name: str = typer.Option(None, "--name", help="A name for the job (default: the script's)."),
    max_retries: int = typer.Option(0, "--max-retries", help="Times to requeue the job if its node dies."),
    env: list[str] = typer.Option([], "--env", "-e", help="An environment variable KEY=VALUE (repeatable)."),
    working_dir: str = typer.Option("", "--working-dir", help="Where the job runs on the node (default: its own dir)."),
    no_follow: bool = typer.Option(False, "--no-follow", help="Print the job id and return at once."),
) -> None:
    """Upload a script and run it as a job on the cluster; args after `--` go to the script."""
    from launcher.jobs import follow_logs, parse_env, parse_resources, submit_job

    resources, job_env = parse_resources(resource), parse_env(env)  # bad input fails before any call
    cluster = _cluster(config)
    with cluster.head_client() as client:
        job_id = submit_job(client, script, list(ctx.args), cpus=cpus, gpus=gpus, resources=resources,
                            name=name, max_retries=max_retries, env=job_env, working_dir=working_dir)
        err.print(f"submitted job {job_id}", highlight=False)
        if no_follow:
            print(job_id)
            return
        info = follow_logs(client, job_id)
    err.print(f"job {job_id} {info.state}" + (f": {info.message}" if info.message else ""), highlight=False)
    raise typer.Exit(_exit_for(info))


@job_app.command("list")
@_handle_errors
def job_list(config: Path = ConfigFile, as_json: bool = typer.Option(False, "--json"),
             as_trace: bool = typer.Option(False, "--trace", help="The jobs that ran as a `launch simulate` trace "
                                           "(JSON lines).")) -> None:
    """The cluster's jobs with their state."""
    cluster = _cluster(config)
    with cluster.head_client() as client:
        items = client.list_items("job")
    rows = [{"id": i.id, "name": i.name, "state": i.state, "node": i.node_id, "exit_code": i.exit_code,
             "resources": dict(i.request.amounts), "submitted_at": i.submitted_at, "started_at": i.started_at,
             "finished_at": i.finished_at, "message": i.message}
            for i in items]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if as_trace:
        from launcher.trace import trace_from_jobs

        print("".join(task.as_json() + "\n" for task in trace_from_jobs(rows, "the cluster's jobs")), end="")
        return
    table = Table(title=f"jobs of cluster {cluster.cfg.cluster_name}")
    for col in ("JOB", "NAME", "STATE", "NODE", "RESOURCES", "EXIT", "MESSAGE"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["name"], r["state"], r["node"] or "-",
                      ", ".join(f"{k} {v:g}" for k, v in r["resources"].items()) or "-",
                      str(r["exit_code"]) if r["state"] in ("finished", "failed") else "-", r["message"])
    out.print(table)


@job_app.command("logs")
@_handle_errors
def job_logs(config: Path = ConfigFile, job_id: str = typer.Argument(...),
             follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends.")) -> None:
    """Print a job's output (stdout and stderr)."""
    from launcher.jobs import follow_logs

    with _cluster(config).head_client() as client:
        follow_logs(client, job_id, follow=follow)


@job_app.command("cancel")
@_handle_errors
def job_cancel(config: Path = ConfigFile, job_id: str = typer.Argument(...)) -> None:
    """Cancel a job: dropped if queued, stopped (its whole process group) if running."""
    import grpc

    with _cluster(config).head_client() as client:
        try:
            state = client.cancel(job_id)
        except grpc.RpcError as e:
            raise LaunchError(f"job {job_id}: {e.details()}") from None
    out.print(f"job {job_id}: {'cancelled' if state == 'cancelled' else 'cancelling' if state == 'running' else state}")


def main() -> None:
    app()
