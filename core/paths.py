"""Where the runtime keeps its files on a node (relative to the node user's home), and node markers."""

import os
from pathlib import Path

# Everything the runtime keeps on a node lives under RUNTIME_DIR, which nodes that share a home (NFS
# homes on-prem and on HPC clusters) share: what they may share is kept there (the installed runtimes,
# the head's cluster state, an on-prem pool's claims); what is one node's own lives in NODE_DIR, keyed by
# the node's hostname (`uname -n`), so no node reads or overwrites another's token, pids or logs.
RUNTIME_DIR = "~/.launch-runtime"
NODE_DIR = f"{RUNTIME_DIR}/nodes/{{node}}"  # {node}: the node's hostname (on_this_node, for_node, in_shell)
NODE_CONFIG = f"{NODE_DIR}/node.json"  # the node's runtime settings and token (0600)
HEAD_ADDRESS = f"{NODE_DIR}/head.address"  # written by the head service once it listens
MONITOR_STATUS = f"{NODE_DIR}/autoscaler-status.json"  # the autoscaler's last tick, for `launch status`
MONITOR_DOWN = f"{NODE_DIR}/monitor-down.json"  # `launch down`'s request to the autoscaler, then its answer
LOGS = f"{NODE_DIR}/logs"
METRICS_ADDRESS = f"{NODE_DIR}/metrics.address"  # where the head's autoscaler serves Prometheus metrics
DASHBOARD_ADDRESS = f"{NODE_DIR}/dashboard.address"  # where the head serves its dashboard (loopback only)
DASHBOARD_LOGINS = f"{NODE_DIR}/dashboard-logins"  # one-time login codes `launch dashboard` puts (0600 files)
COST_HISTORY = f"{NODE_DIR}/cost-history.jsonl"  # the fleet's $/h over time, kept by the autoscaler
PREEMPT_NOTICE = f"{NODE_DIR}/preempt-notice.json"  # the cloud's preemption notice, for the node's work
# The head's own state dir of its cluster (a lifecycle ClusterDir): the ClusterSpec `up` shipped
# (spec.json, relocated to the head's paths), the cluster's SSH key, copies of the file mounts, pinned
# host keys, the workers' setup logs. The autoscaler runs on it.
HEAD_CLUSTER_STATE = f"{RUNTIME_DIR}/cluster"
# The layout of a cluster state dir (lifecycle.state.ClusterDir), on the laptop and on the head alike
SPEC_FILE = "spec.json"
KNOWN_HOSTS_FILE = "known_hosts"
HEAD_SPEC = f"{HEAD_CLUSTER_STATE}/{SPEC_FILE}"
HEAD_KNOWN_HOSTS = f"{HEAD_CLUSTER_STATE}/{KNOWN_HOSTS_FILE}"
HEAD_SSH_KEY = f"{HEAD_CLUSTER_STATE}/ssh_key"  # 0600
HEAD_MOUNTS = f"{HEAD_CLUSTER_STATE}/mounts"  # one copy per file mount, synced from the laptop by `up`
# made by a scheduler's holder job (providers/slurm.py), which runs the node's supervisor once
# `runtime.node start` writes the interpreter into it
HOLDER_FIFO = f"{NODE_DIR}/holder.fifo"
HOLDER_SIGNALLED = f"{NODE_DIR}/holder.signalled"  # Slurm signalled the holder job: its end is near
MOUNT_MANIFESTS = f"{NODE_DIR}/mounts"  # what the last file sync sent, per mount (a mount may be node-local)
NODE_PYTHON = f"{NODE_DIR}/bin/python"  # the runtime's interpreter on nodes it was shipped to
INSTALLS = f"{RUNTIME_DIR}/install"  # shipped runtime bundles, one folder per bundle id (shared safely)
HEAD_BUNDLE_PREFIX = "head-"  # a head bundle's id (lifecycle.runtime_bundle): the control plane's packages


def is_head_bundle_site(path: str) -> bool:
    """Whether a path entry is the site of an installed head bundle."""
    parts = path.rstrip("/").split("/")
    return len(parts) >= 3 and parts[-3] == INSTALLS.rsplit("/", 1)[1] and parts[-2].startswith(HEAD_BUNDLE_PREFIX)

# Every process a `local` node starts carries this variable (value: the node id), inherited by all it
# spawns, jobs and tasks included, so the node's death or removal finds and stops all of them.
NODE_MARKER_ENV = "LAUNCH_LOCAL_NODE"


def node_log_name(node_id: str) -> str:
    """A node's setup log within a cluster state dir."""
    return f"logs/{node_id.replace('/', '_')}.log"


def node_name() -> str:
    """This node's hostname, which keys its NODE_DIR: what `uname -n` says (both read uname(2))."""
    return os.uname().nodename


def for_node(path: str, name: str) -> str:
    """One of the paths above on the node called `name` (a path as the launcher sends it: `~/...`)."""
    return path.replace("{node}", name)


def in_shell(path: str) -> str:
    """One of the paths above in a shell command on the node, which names the node itself."""
    return path.replace("{node}", '"$(uname -n)"')


def on_this_node(path: str) -> Path:
    """One of the paths above, for code running on the node itself."""
    return Path(os.path.expanduser(for_node(path, node_name())))


def launch_home() -> Path:
    """Where the launcher keeps its clusters on the user's machine: $LAUNCH_HOME, default ~/.launch."""
    return Path(os.environ.get("LAUNCH_HOME", "~/.launch")).expanduser()
