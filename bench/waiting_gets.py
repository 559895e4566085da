"""Many clients waiting in `get` at once, and whether the head still hears its nodes.

    .venv/bin/python bench/waiting_gets.py [--clients 10000] [--processes 10] [--wait-s 15]

A real head process (as bench/head_memory.py starts it) and one node (a stand-in agent that takes its
jobs and reports them finished only after --wait-s). --clients threads in --processes client processes
each `get` one of those jobs with a blocking GetResults call (the head's unary call, as a client that
cannot use a session stream makes it) and a timeout of wait-s + 60 s. While they all wait, heartbeats and
ClusterState calls (what agents and the autoscaler send) are timed every 0.25 s.

Printed: the latency of those calls (p50 / p99 / max) while the clients wait; whether the node stayed
alive; gets completed, timed out, failed; the time from the jobs' completion to the last get answered;
the head's RSS and threads at their peak. Reference (issue 28's probe): past ~2,044 waiting gets the head's
2,048 threads were taken, ClusterState timed out, both nodes were declared dead and 2,044 gets timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.head_memory import HEAD, TOKEN, rss_mib  # noqa: E402
from runtime.client import HeadClient  # noqa: E402
from runtime.proto import head_pb2 as pb  # noqa: E402

CLIENT = textwrap.dedent("""
    import json, sys, threading, time
    from runtime.client import HeadClient
    address, token, threads, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    jobs = sys.argv[5].split(",")
    client = HeadClient(address, token, timeout_s=timeout + 30)
    outcome = {"done": 0, "timed_out": 0, "failed": 0, "errors": []}
    ended = []
    lock = threading.Lock()

    def wait(i):
        try:
            got = client.get_results([jobs[i % len(jobs)]], timeout)
            key = "done" if got and got[0].state == "finished" else "timed_out"
        except Exception as e:
            key = "failed"
            with lock:
                outcome["errors"].append(str(e)[:200])
        with lock:
            outcome[key] += 1
            ended.append(time.time())

    workers = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    print("waiting", flush=True)
    for w in workers:
        w.join()
    outcome["last"] = max(ended) if ended else 0
    outcome["errors"] = outcome["errors"][:3]
    print(json.dumps(outcome), flush=True)
""")


def threads_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--wait-s", type=float, default=15.0)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-gets-"))
    head = subprocess.Popen([sys.executable, "-c", HEAD, TOKEN, str(state)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    address = f"127.0.0.1:{int(head.stdout.readline())}"
    agent = HeadClient(address, TOKEN, timeout_s=30)
    agent.register(pb.RegisterNodeRequest(node_id="n1", node_type="cpu", address="127.0.0.1",
                                          total=pb.Resources(amounts={"CPU": float(args.jobs)})))
    stream = agent.work_stream("n1")
    spec = pb.WorkSpec(kind="job", name="wait", command="true", request=pb.Resources(amounts={"CPU": 1.0}))
    jobs = agent.submit_many([spec] * args.jobs)
    taken = set()
    while len(taken) < len(jobs):
        taken.update(a.item_id for a in next(stream).items)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    per = args.clients // args.processes
    timeout = args.wait_s + 60
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, address, TOKEN, str(per), str(timeout), ",".join(jobs)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    for c in clients:
        assert c.stdout.readline().strip() == "waiting"
    started = time.monotonic()

    beats: list[float] = []
    states: list[float] = []
    known = [True]
    peak = {"rss": 0.0, "threads": 0}
    probe = HeadClient(address, TOKEN, timeout_s=30)
    while time.monotonic() - started < args.wait_s:  # the node's heartbeats and the autoscaler's calls
        t0 = time.perf_counter()
        known.append(probe.heartbeat(pb.HeartbeatRequest(node_id="n1")).known)
        beats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        alive = [n.state for n in probe.cluster_state().nodes]
        states.append(time.perf_counter() - t0)
        known.append(alive == ["alive"])
        peak["rss"] = max(peak["rss"], rss_mib(head.pid))
        peak["threads"] = max(peak["threads"], threads_of(head.pid))
        time.sleep(0.25)  # the probe's period, not a synchronisation

    finished_at = time.time()
    agent.report("n1", [pb.ItemResult(id=j, state="finished", value=b"\x80\x04K\x07.") for j in jobs])
    outcomes = [json.loads(c.communicate(timeout=timeout + 120)[0].strip().splitlines()[-1]) for c in clients]
    stream.cancel()
    head.stdin.close()
    head.wait(timeout=30)

    total = {k: sum(o[k] for o in outcomes) for k in ("done", "timed_out", "failed")}
    last = max(o["last"] for o in outcomes)
    print(f"{per * args.processes} clients ({args.processes} processes x {per} threads) waiting in get "
          f"for {args.wait_s:.0f} s on {args.jobs} jobs")
    print(f"heartbeat while they wait: p50 {statistics.median(beats) * 1000:.1f} ms, p99 {pct(beats, 0.99) * 1000:.1f} ms, "
          f"max {max(beats) * 1000:.1f} ms ({len(beats)} calls)")
    print(f"cluster state while they wait: p50 {statistics.median(states) * 1000:.1f} ms, p99 "
          f"{pct(states, 0.99) * 1000:.1f} ms, max {max(states) * 1000:.1f} ms")
    print(f"the node stayed alive: {all(known)}")
    print(f"gets completed {total['done']}, timed out {total['timed_out']}, failed {total['failed']}"
          + "".join(f"\n  {e}" for o in outcomes for e in o["errors"][:1]))
    print(f"last get answered {last - finished_at:.1f} s after the jobs finished")
    print(f"head peak: RSS {peak['rss']:.0f} MiB, {peak['threads']} threads")
    print("reference (issue 28's probe): past ~2,044 waiting gets, ClusterState timed out, both nodes were "
          "declared dead, 2,044 gets timed out")


if __name__ == "__main__":
    main()
