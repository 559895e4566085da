"""The claims of an on-prem pool: which host is which node of the cluster, with its tags.

They live on the head host (~/.launch-runtime/pool/CLUSTER.json), so the head's autoscaler owns them
and they survive its restart. On the head they are this file; from the laptop, the same code runs on
the head host over SSH (this module is sent as its source: it needs only Python's standard library,
so it works before anything of launch is installed there). Every operation holds the file's lock.
"""

import base64
import fcntl
import json
import os
import sys


def apply(path: str, op: str, args: dict):
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                claims = json.load(f)
        except FileNotFoundError:
            claims = {}
        before = json.dumps(claims, sort_keys=True)
        result = _OPS[op](claims, **args)
        if json.dumps(claims, sort_keys=True) != before:
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(claims, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        return result


def _claim(claims, hosts, count, node_type, tags, now):
    created = []
    for nid in hosts:
        if len(created) == count:
            break
        if nid not in claims:
            claims[nid] = {"node_type": node_type, "tags": dict(tags), "launched_at": now}
            created.append([nid, claims[nid]])
    return created


def _list(claims, filters):
    return [[nid, c] for nid, c in claims.items() if all(c["tags"].get(k) == v for k, v in filters.items())]


def _set_tags(claims, node_id, tags):
    if node_id not in claims:
        return False
    claims[node_id]["tags"].update(tags)
    return True


def _release(claims, ids):
    return [[nid, claims.pop(nid)] for nid in ids if nid in claims]


_OPS = {"claim": _claim, "list": _list, "set_tags": _set_tags, "release": _release}


if __name__ == "__main__":
    # argv: the claims file, the operation, its arguments as base64 JSON
    print(json.dumps(apply(sys.argv[1], sys.argv[2], json.loads(base64.b64decode(sys.argv[3])))))
