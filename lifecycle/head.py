"""The head's side of `up` and `down`: `python -m lifecycle.head reconcile|terminate-workers` runs the same
lifecycle code on the head, on the spec `up` shipped (lifecycle/on_head.py), reaching the workers over
their private IPs. Progress lines go to stdout as they happen; the last line is `launch-result: {json}`
(or `launch-error: message`, exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import LaunchError
from core.paths import HEAD_ADDRESS, on_this_node
from lifecycle.cluster import Lifecycle
from lifecycle.on_head import ERROR, RESULT, head_state
from runtime.node_config import NodeRuntimeConfig


def _reconcile(restart: bool, replace_stale: bool) -> dict:
    spec, state = head_state()
    token = NodeRuntimeConfig.load().token
    head_address = on_this_node(HEAD_ADDRESS).read_text().strip()
    lc = Lifecycle(spec, state, say=lambda msg: print(msg, flush=True))
    try:
        with state.locked("up", lc.say):
            return lc.reconcile_workers(token, head_address, restart=restart, replace_stale=replace_stale)
    finally:
        lc.close()


def _terminate_workers(keep_stopped: bool) -> dict:
    spec, state = head_state()
    lc = Lifecycle(spec, state, say=lambda msg: print(msg, flush=True))
    with state.locked("down", lc.say):
        return {"terminated": lc.terminate_workers(keep_stopped)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lifecycle.head")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("reconcile", help="launch min_workers, update outdated workers, wait for them")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--replace-stale", action="store_true")
    t = sub.add_parser("terminate-workers", help="terminate every worker of the cluster")
    t.add_argument("--keep-stopped", action="store_true", help="stop them instead, and keep them stopped")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "reconcile":
            result = _reconcile(args.restart, args.replace_stale)
        else:
            result = _terminate_workers(args.keep_stopped)
    except LaunchError as e:
        print(ERROR + str(e).replace("\n", " "), flush=True)
        return 1
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
