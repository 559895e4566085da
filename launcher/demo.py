"""The local-cluster demo (`./dev demo`): runs the real `launch` CLI against configs/local.yaml.

Every step is the command a user would type; the cluster is torn down at the end, even on failure, and
the demo checks that no process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/local.yaml"


def launch(*args: str, check: bool = True) -> int:
    print(f"\n\033[1m$ launch {' '.join(shlex.quote(a) for a in args)}\033[0m", flush=True)
    code = subprocess.call([sys.executable, "-m", "launcher", *args], cwd=ROOT)
    if check and code != 0:
        raise SystemExit(f"demo: `launch {args[0]}` exited {code}")
    return code


def cluster_processes(node_ids: list[str]) -> list[int]:
    from providers.local import marked_pids

    return [pid for node_id in node_ids for pid in marked_pids(node_id)]


def show_dashboard() -> None:
    """`launch dashboard` (here with --no-browser): its one-time link, and what its JSON API says, through the
    same forward a browser would use."""
    import http.client
    from urllib.parse import urlparse

    print(f"\n\033[1m$ launch dashboard {CONFIG} --no-browser\033[0m", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "dashboard", CONFIG, "--no-browser"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        print(line, end="")
        url = urlparse(line.split(": ", 1)[1].strip())

        def get(path: str, cookie: str = ""):
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
            r = conn.getresponse()
            return r, r.read()

        r, _ = get(f"{url.path}?{url.query}")  # the one-time link, as a browser follows it
        cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
        cost = json.loads(get("/api/cost", cookie)[1])
        print(f"(the browser's pages read /api/...: the fleet costs {cost['per_hour']:.2f} $/h now, "
              f"{cost['since_up_usd']:.4f} $ since up; the autoscaler's last events:)")
        for e in json.loads(get("/api/events?limit=4", cookie)[1])["events"]:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['event']:<10} {e.get('node_type', '')}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    from lifecycle.config import load_config
    from lifecycle.state import ClusterDir

    os.environ.setdefault("COLUMNS", "140")
    launch("validate", CONFIG)
    cfg = load_config(ROOT / CONFIG)
    state = ClusterDir(cfg.cluster_name).path / "local" / "nodes.json"
    node_ids: set[str] = set()

    def remember_nodes() -> int:
        ids = set(json.loads(state.read_text())) if state.exists() else set()
        node_ids.update(ids)
        return len(ids)

    try:
        launch("up", CONFIG, "--yes")
        launch("status", CONFIG)
        launch("exec", CONFIG, 'echo "hello from the head node, HOME=$HOME"; cat ~/setup.txt; python3 ~/demo/hello.py')
        print("\n(exit codes pass through: `exit 3` on the head makes `launch exec` exit 3)")
        code = launch("exec", CONFIG, "exit 3", check=False)
        print(f"launch exec exited {code}")
        launch("up", CONFIG, "--yes")  # idempotent: nothing changed

        print("\n(autoscaling: the cluster has only its head; a job submits CPU and GPU tasks, the autoscaler"
              "\n launches cpu and gpu workers for them, and removes them once idle)")
        launch("submit", CONFIG, "examples/hello_tasks.py", "--", "6")
        remember_nodes()
        launch("status", CONFIG)
        print("\n(waiting for the idle workers to be scaled down...)", flush=True)
        deadline = time.time() + 60
        while remember_nodes() > 1 and time.time() < deadline:
            time.sleep(1)
        launch("status", CONFIG)
        launch("monitor", CONFIG, "--no-follow", "--lines", "8")
        show_dashboard()
    finally:
        launch("down", CONFIG, "--yes", check=False)
    left = cluster_processes(node_ids)
    if left:
        raise SystemExit(f"demo: processes of the cluster left after down: {left}")
    print(f"\ndemo done: {len(node_ids)} node(s) came and went (the head, and the workers the autoscaler"
          " launched for the work), with no process left.")


if __name__ == "__main__":
    main()
