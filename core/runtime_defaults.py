"""The runtime's timing defaults, one place for the config model (core/config.py: a cluster file's
`runtime:` section) and the runtime's own node settings (runtime/node_config.py), which cannot import
the config model (nodes run without pydantic)."""

HEARTBEAT_INTERVAL_S = 1.0
NODE_TIMEOUT_S = 10.0  # a node silent this long is dead: its work is requeued
OWNER_TIMEOUT_S = 60.0  # a driver silent this long (killed, its machine gone) has the actors it made killed
