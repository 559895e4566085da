"""launch: the cluster launcher (CLI, config, node updater, cluster lifecycle)."""

__version__ = "0.1.0"
