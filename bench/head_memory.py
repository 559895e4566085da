"""Head memory under a deep queue: RSS of a real head process with 0, 10k and 100k queued tasks, and after
all of them ran (and after their results were fetched).

    .venv/bin/python bench/head_memory.py [--items 100000]

The head runs as its own process (`runtime.head` served on loopback with a fresh store); the client
submits trivial tasks as `runtime` does (a cloudpickled function and its argument, about 600 bytes each);
a stand-in agent then takes every assignment from the head's work stream and reports it finished with
a small result, in batches, as the real agent does. Printed: RSS in MiB and bytes per queued item.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.client import HeadClient  # noqa: E402
from runtime.proto import head_pb2 as pb  # noqa: E402

TOKEN = "bench-token"

HEAD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from runtime.head import housekeeping, serve
    from runtime.node_config import NodeRuntimeConfig
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=sys.argv[1], address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0, node_types={"cpu": {"CPU": 2.0}})
    server, servicer, port = serve(cfg, state_dir=Path(sys.argv[2]))
    stop = threading.Event()
    # the head's own housekeeping, its sweep every 2 s instead of every minute
    threading.Thread(target=housekeeping, args=(servicer, stop, 0.25, 2.0), daemon=True).start()
    print(port, flush=True)
    sys.stdin.read()
""")


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def fake_agent(client: HeadClient, total: int, done: threading.Event) -> None:
    client.register(pb.RegisterNodeRequest(node_id="n1", node_type="cpu", address="127.0.0.1",
                                           total=pb.Resources(amounts={"CPU": 2.0})))
    def heartbeat():
        while not done.wait(1.0):
            client.heartbeat(pb.HeartbeatRequest(node_id="n1"))

    threading.Thread(target=heartbeat, daemon=True).start()
    finished = 0
    for batch in client.work_stream("n1"):
        results = [pb.ItemResult(id=a.item_id, state="finished", value=cloudpickle.dumps(7)) for a in batch.items]
        client.report("n1", results)
        finished += len(results)
        if finished >= total:
            done.set()
            return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-head-"))
    head = subprocess.Popen([sys.executable, "-c", HEAD, TOKEN, str(state)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = int(head.stdout.readline())
    client = HeadClient(f"127.0.0.1:{port}", TOKEN, timeout_s=120)
    fn = cloudpickle.dumps(lambda x: x * 2)
    spec = pb.WorkSpec(kind="task", name="double", request=pb.Resources(amounts={"CPU": 1.0}), max_retries=3,
                       payload=cloudpickle.dumps((fn, (1,), {})))
    figures = [("queued", 0, rss_mib(head.pid))]
    ids: list[str] = []
    t0 = time.perf_counter()
    for mark in (10_000, args.items):
        while len(ids) < mark:
            n = min(1000, mark - len(ids))
            batch = [f"t-{len(ids) + i:09d}" for i in range(n)]
            client.submit_many([spec] * n, batch)
            ids += batch
        time.sleep(0.5)  # let the allocator settle before reading RSS (a measurement, not a sync)
        figures.append(("queued", len(ids), rss_mib(head.pid)))
    submit_s = time.perf_counter() - t0

    done = threading.Event()
    agent = HeadClient(f"127.0.0.1:{port}", TOKEN, timeout_s=120)
    t0 = time.perf_counter()
    threading.Thread(target=fake_agent, args=(agent, len(ids), done), daemon=True).start()
    done.wait()
    drain_s = time.perf_counter() - t0
    time.sleep(3)  # past one sweep of the head (a measurement, not a sync)
    figures.append(("done, not fetched", len(ids), rss_mib(head.pid)))
    got = 0
    for start in range(0, len(ids), 10_000):
        got += len(client.get_results(ids[start:start + 10_000], timeout_s=60))
    assert got == len(ids), (got, len(ids))
    time.sleep(3)  # past one sweep of the head (a measurement, not a sync)
    figures.append(("done and fetched", len(ids), rss_mib(head.pid)))
    head.stdin.close()
    head.wait(timeout=30)
    db_mib = sum(p.stat().st_size for p in state.glob("head.db*")) / 2**20

    base = figures[0][2]
    print(f"head RSS, {spec.ByteSize()}-byte task specs (store: {db_mib:.0f} MiB on disk after {len(ids)} items)")
    print(f"{'items':<22}{'count':>10}{'RSS MiB':>10}{'bytes/item':>12}")
    for what, n, mib in figures:
        per = f"{(mib - base) * 2**20 / n:.0f}" if n else "-"
        print(f"{what:<22}{n:>10}{mib:>10.1f}{per:>12}")
    print(f"submit {len(ids) / submit_s:.0f} items/s; drained by the stand-in agent at {len(ids) / drain_s:.0f}/s")


if __name__ == "__main__":
    main()
