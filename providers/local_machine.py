"""The stand-in for a VM of the `local` provider: it lives until the node is terminated.

Its environment carries the node's marker, like every process of the node. On SIGTERM it powers the
node off: it stops every other process of the node, then exits.
"""

import os
import signal
import sys

from core.paths import NODE_MARKER_ENV as MARKER_ENV
from providers.local import kill_node_processes


def main() -> None:
    node_id = os.environ[MARKER_ENV]

    def power_off(signum, frame):
        kill_node_processes(node_id)
        sys.exit(0)

    signal.signal(signal.SIGTERM, power_off)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
