"""The tags that carry a cluster's state on its instances, and how their values are encoded.

All durable node state lives in tags (on clouds) or the provider's own records, so the launcher and
the autoscaler rebuild everything from a listing. Clouds restrict tag keys and values (GCP labels:
lowercase, digits, '-' and '_', at most 63 characters); `encode_label`/`decode_label` is the one
reversible encoding for those, so any valid cluster or node-type name round-trips.
"""

from __future__ import annotations

TAG_CLUSTER = "launch-cluster"
TAG_KIND = "launch-kind"  # head | worker
TAG_NODE_TYPE = "launch-node-type"
TAG_STATUS = "launch-status"
TAG_STATUS_SINCE = "launch-status-since"  # unix time the current status was entered
TAG_LAUNCH_HASH = "launch-launch-hash"
TAG_RUNTIME_HASH = "launch-runtime-hash"
TAG_REQUEST_ID = "launch-request-id"
TAG_RESTART_GEN = "launch-restart-gen"  # the spec's restart_generation when the node's runtime last started
TAG_MOUNTS = "launch-mounts"  # (file_mounts_sync_continuously) the head's file mounts as last synced to the node

KIND_HEAD = "head"
KIND_WORKER = "worker"

_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def encode_label(value: str) -> str:
    """Any string -> [a-z0-9_-]*: '_' escapes every other character as _XX (its UTF-8 bytes in hex)."""
    out = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode())
    return "".join(out)


def decode_label(value: str) -> str:
    raw, i = bytearray(), 0
    while i < len(value):
        if value[i] == "_":
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(value[i].encode())
            i += 1
    return raw.decode()


LABEL_MAX = 63  # GCE label values (and keys) are at most 63 characters


def labels_of(tags: dict[str, str]) -> dict[str, str]:
    """Tags as GCE labels: each value encoded; one longer than a label holds continues in KEY--1, KEY--2..."""
    out = {}
    for key, value in tags.items():
        enc = encode_label(value)
        chunks = [enc[i:i + LABEL_MAX] for i in range(0, len(enc), LABEL_MAX)] or [""]
        for n, chunk in enumerate(chunks):
            out[key if n == 0 else f"{key}--{n}"] = chunk
    return out


def tags_of(labels: dict[str, str], prefix: str = "launch-") -> dict[str, str]:
    """The tags labels_of wrote (keys starting with `prefix`; other labels are the user's own)."""
    parts: dict[str, dict[int, str]] = {}
    for key, value in labels.items():
        if not key.startswith(prefix):
            continue
        base, sep, n = key.rpartition("--")
        if sep and n.isdigit():
            parts.setdefault(base, {})[int(n)] = value
        else:
            parts.setdefault(key, {})[0] = value
    out = {}
    for key, chunks in parts.items():
        try:
            out[key] = decode_label("".join(chunks[i] for i in sorted(chunks)))
        except (ValueError, UnicodeDecodeError):  # not ours after all: leave it out rather than guess
            continue
    return out
