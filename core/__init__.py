"""The bottom layer: facts every other layer shares, defined once.

errors (typed, one line each), node statuses and their allowed transitions, tag names and encoding,
resource shapes, node-side runtime paths, atomic files and locks, backoff, the config model and the
resolved ClusterSpec. Nothing here imports another package of this project.
"""

__version__ = "0.2.0"
