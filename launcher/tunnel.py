"""`python -m launcher.tunnel CLUSTER`: a port forward to the cluster's head service over the launcher's
SSH connection to the head, for `runtime.init()` on this machine (the runtime imports nothing of the
launcher: it starts this as a process). Prints `port N` once the forward listens on 127.0.0.1, then
holds it until its stdin closes (the caller closed it, or died)."""

from __future__ import annotations

import sys

from core.errors import LaunchError


def main(argv: list[str]) -> int:
    from launcher.cluster import open_head_forward
    from lifecycle.cluster import Lifecycle
    from lifecycle.state import ClusterDir

    if len(argv) != 1:
        print("usage: python -m launcher.tunnel CLUSTER", file=sys.stderr)
        return 2
    state = ClusterDir(argv[0])
    spec = state.load_spec()
    if spec is None:
        print(f"error: cluster {argv[0]!r} is not up", file=sys.stderr)
        return 1
    lifecycle = Lifecycle(spec, state)
    try:
        address = open_head_forward(lifecycle, state)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"address {address}", flush=True)
    sys.stdin.read()
    lifecycle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
