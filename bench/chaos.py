"""Chaos: a local cluster that autoscales while things die under it, and what that costs.

    .venv/bin/python bench/chaos.py [--cycles 1000] [--max-seconds 5400] [--seed 1]

A local cluster (head with no CPU, 2-CPU workers, 0..3 of them, short idle timeout) whose provider fails
20% of node creations. Tasks (0.1-1.5 s, max_retries=3) and jobs (shell commands, max_retries=3,
submitted as `launch submit` does, with ids of their own so that a submission sent again is not taken
twice) arrive in a steady stream. Each cycle, at a random moment, one of:
- head: kill -9 the head service, work in flight, fresh submissions after (the supervisor restarts it);
- autoscaler: kill -9 the monitor;
- worker: kill -9 a worker node's whole process tree (a machine lost);
- agent: kill -9 one worker's node agent only (its supervisor starts a new one);
- disk: fill the disk the cluster's state lives on (a tmpfs of its own; root only), keep it full 1-3 s,
  then free it;
- ctrl-c-up: `launch up` (a process, as a user runs it) interrupted with SIGINT at a random moment, then
  `launch up` again;
- ctrl-c-down: the stream paused and the work so far collected, then `launch down` interrupted at a
  random moment, `launch down` again (nothing may be left running), `launch up` interrupted at a random
  moment, `launch up` again, and the stream resumed.

Every run of a task or job leaves a mark (outside the cluster's disk) with its start and end times.
Printed: tasks and jobs accepted / completed / failed after their retries / lost (accepted, never done);
run more often than their retries allow; run twice at once (one run still going when another started:
work that outlived its agent and was also run again); nodes leaked (a live node process the provider does
not list, or anything left after `down`); duplicate launches (more workers than max_workers at once);
hung (a command or a recovery past its limit); and the time to recover after each kind of fault (head
answering, autoscaler up, the workers the head counts alive exactly those whose processes live).
Target: 0 lost, 0 run twice, 0 leaked, 0 duplicates, 0 hung.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra import node_dir  # noqa: E402

MAX_WORKERS = 3
MAX_RETRIES = 3
FAULTS = {"head": 0.2, "autoscaler": 0.1, "worker": 0.12, "agent": 0.2, "disk": 0.15, "ctrl-c-up": 0.15,
          "ctrl-c-down": 0.05}
COMMAND_LIMIT_S = 180  # a `launch` command that takes longer is hung
RECOVERY_LIMIT_S = 120
TERMINAL = ("finished", "failed", "cancelled")


def config() -> dict:
    return {
        "cluster_name": "chaos", "max_workers": MAX_WORKERS, "idle_timeout_minutes": 0.05,
        "provider": {"type": "local", "create_failure_rate": 0.2},
        "autoscaler": {"tick_s": 0.5, "backoff_initial_s": 1, "backoff_max_s": 4},
        "runtime": {"heartbeat_interval_s": 0.5, "node_timeout_s": 4},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": MAX_WORKERS},
        },
        "head_node_type": "head",
    }


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def pid_of(home: Path, daemon: str) -> int | None:
    try:
        return int((node_dir(home) / "pids" / f"{daemon}.pid").read_text())
    except (OSError, ValueError):
        return None


class Chaos:
    def __init__(self, home: Path, work: Path, rng: random.Random):
        from core.config import parse_config
        from launcher.cluster import Cluster

        self.home, self.rng = home, rng
        self.config_file = work / "chaos.yaml"
        self.config_file.write_text(yaml.safe_dump(config()))
        self.marks = work / "marks"
        self.marks.mkdir()
        self.cluster_dir = Cluster(parse_config(config())).dir
        self.nodes_dir = self.cluster_dir.path / "local" / "nodes"
        self.counts: Counter = Counter()
        self.hung: list[str] = []
        self.refs: list = []
        self.jobs: dict[str, str] = {}  # id -> state (accepted ones only)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()  # the submitter is paused and has nothing on the way
        self.most_workers = 0
        # how long the last uninterrupted one ran (up on a running cluster, up from nothing, down): where a
        # Ctrl-C lands
        self.took = {"up": 3.0, "first up": 6.0, "down": 3.0}

    # --- the user's side ------------------------------------------------------------------------------

    def launch(self, command: str, interrupt: bool = False, timing: str = "") -> int:
        """`launch COMMAND chaos.yaml -y` as a user runs it; with `interrupt`, a SIGINT at a random moment
        of the time the last uninterrupted one took."""
        timing = timing or command
        interrupt_after = self.rng.uniform(0.05, 1.0) * self.took[timing] if interrupt else None
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
        env["LAUNCH_HOME"] = str(self.home)
        # SIGINT as a terminal sends it: a shell starts background jobs with it ignored, which the command
        # would inherit (and never see its Ctrl-C)
        proc = subprocess.Popen([sys.executable, "-m", "launcher", command, str(self.config_file), "-y"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            if interrupt_after is not None:
                try:
                    proc.wait(timeout=interrupt_after)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGINT)  # Ctrl-C
            _, errors = proc.communicate(timeout=COMMAND_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.hung.append(f"launch {command} past {COMMAND_LIMIT_S}s")
            return -1
        self.last_errors = errors
        if not interrupt and proc.returncode == 0:
            self.took[timing] = time.monotonic() - began
        return proc.returncode

    def up(self, timing: str = "up") -> None:
        """`launch up` until it succeeds: the flaky provider fails the head's creation too, at times."""
        for _ in range(10):
            if self.launch("up", timing=timing) == 0:
                return
        self.hung.append(f"launch up failed 10 times: {self.last_errors.strip()[-300:]}")

    def connect(self) -> None:
        import runtime

        info = self.cluster_dir.read_info()
        runtime.shutdown()  # (a no-op when not connected)
        runtime.init(address=info["head_address"], token=self.cluster_dir.token())

    def head_dir(self) -> Path:
        return self.nodes_dir / self.cluster_dir.read_info()["head_node_id"]

    def workers(self) -> list[str]:
        try:
            nodes = json.loads((self.cluster_dir.path / "local" / "nodes.json").read_text())
        except (OSError, ValueError):
            return []
        return [n for n, r in nodes.items() if r.get("node_type") == "cpu"]

    def strays(self) -> list[str]:
        """Live node processes the provider does not list."""
        from providers.local import marked_pids

        try:
            listed = set(json.loads((self.cluster_dir.path / "local" / "nodes.json").read_text()))
        except (OSError, ValueError):
            listed = set()
        if not self.nodes_dir.exists():
            return []
        return [p.name for p in self.nodes_dir.iterdir() if p.name not in listed and marked_pids(p.name)]

    def submitter(self) -> None:
        import runtime
        from runtime.api import _connection, _reconnecting
        from runtime.proto import head_pb2 as pb

        marks = str(self.marks)

        @runtime.remote(num_cpus=1, max_retries=MAX_RETRIES)
        def work(i: int, seconds: float, marks_dir: str) -> int:
            import time as t
            import uuid as u

            path = os.path.join(marks_dir, f"t{i}.{u.uuid4().hex}")
            with open(path, "w") as f:  # when, and who ran it (to trace a run twice at once)
                f.write(f"{t.time()} pid={os.getpid()} ppid={os.getppid()} node={os.environ.get('LAUNCH_NODE_ID')} "
                        f"item={os.environ.get('LAUNCH_ITEM_ID')}\n")
            t.sleep(seconds)
            with open(path, "a") as f:
                f.write(f"{t.time()}\n")
            return i

        def job_spec(n: int, seconds: float) -> pb.WorkSpec:
            mark = f"{marks}/j{n}.$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
            command = (f"m={mark}; echo $(date +%s.%N) pid=$$ ppid=$PPID node=$LAUNCH_NODE_ID item=$LAUNCH_ITEM_ID > $m; "
                       f"sleep {seconds:.2f}; date +%s.%N >> $m")
            return pb.WorkSpec(kind="job", name=f"chaos-{n}", command=command, max_retries=MAX_RETRIES,
                               request=pb.Resources(amounts={"CPU": 1.0}))

        i = n = 0
        while not self.stop.is_set():
            if self.paused.is_set():
                self.idle.set()
                self.stop.wait(0.1)
                continue
            self.idle.clear()
            try:
                for _ in range(3):
                    ref = work.remote(i, self.rng.uniform(0.1, 1.5), marks)
                    with self.lock:
                        self.refs.append(ref)
                    i += 1
                if i % 12 == 0:
                    job_id, spec = f"chaos-job-{n}", job_spec(n, self.rng.uniform(0.2, 2.0))
                    n += 1
                    try:
                        _reconnecting(lambda: _connection().client.submit_many([spec], [job_id]))
                    except Exception as e:  # noqa: BLE001 - a refusal (a full disk) is not an acceptance
                        code = getattr(e, "code", lambda: None)()
                        if code is None or code.name != "ALREADY_EXISTS":  # else: sent before, taken
                            self.counts["jobs refused"] += 1
                            continue
                    with self.lock:
                        self.jobs[job_id] = "accepted"
            except Exception as e:  # noqa: BLE001 - a submission the head refused (its disk full)
                self.counts["task submissions refused"] += 1
                print(f"  submission refused: {str(e)[:160]}", flush=True)
            self.stop.wait(0.5)

    def settle(self, deadline_s: float) -> None:
        """Collect every task result and job end so far: what is not done by the deadline is lost."""
        import runtime
        from runtime.api import _connection, _reconnecting

        with self.lock:
            refs, self.refs = self.refs, []
        deadline = time.monotonic() + deadline_s
        for ref in refs:
            try:
                runtime.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                self.counts["tasks completed"] += 1
            except runtime.GetTimeoutError:
                self.counts["tasks lost"] += 1
                print(f"  lost: task {ref}", flush=True)
            except runtime.TaskError:
                self.counts["tasks failed"] += 1
            except ValueError:  # unknown to the head: its submission was refused (disk full), not accepted
                self.counts["task submissions refused"] += 1
        while True:
            with self.lock:
                open_jobs = [j for j, s in self.jobs.items() if s not in TERMINAL]
            if not open_jobs:
                break
            try:
                states = {j.id: j.state for j in _reconnecting(lambda: _connection().client.list_items("job"))}
            except Exception:  # noqa: BLE001 - the head restarting: ask again
                states = {}
            with self.lock:
                for j in open_jobs:
                    if states.get(j) in TERMINAL:
                        self.jobs[j] = states[j]
            if time.monotonic() > deadline:
                for j in open_jobs:
                    if self.jobs[j] not in TERMINAL:
                        self.jobs[j] = "lost"
                        print(f"  lost: job {j} ({states.get(j, 'unknown to the head')})", flush=True)
                break
            time.sleep(0.5)

    # --- the faults -----------------------------------------------------------------------------------

    def recovered(self) -> bool:
        from providers.local import marked_pids

        try:
            head_dir = self.head_dir()
        except (OSError, KeyError, ValueError):
            return False
        if not (alive(pid_of(head_dir, "head")) and alive(pid_of(head_dir, "monitor"))):
            return False
        try:
            from runtime.api import _connection

            state = _connection().client.cluster_state()
        except Exception:  # noqa: BLE001 - the head away: not recovered yet
            return False
        registered = {n.node_id for n in state.nodes if n.state == "alive" and not n.is_head}
        live = {n for n in self.workers() if marked_pids(n)}
        return live == registered  # every live worker registered; a dead one no longer counted

    def fill_disk(self) -> None:
        filler = self.home / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        time.sleep(self.rng.uniform(1.0, 3.0))  # the fault's duration, not a synchronisation
        filler.unlink()

    def ctrl_c_down(self) -> None:
        self.paused.set()
        self.idle.wait()
        self.settle(deadline_s=300)
        # the nodes' logs, kept: `down` removes them, and a run twice at once is traced through them
        subprocess.run(["cp", "-r", str(self.nodes_dir), str(self.marks.parent / f"nodes-{time.time():.0f}")],
                       check=False)
        if self.launch("down", interrupt=True) == 0:
            self.counts["down finished before its Ctrl-C"] += 1
        if self.launch("down") != 0:
            self.hung.append(f"launch down after an interrupted one failed: {self.last_errors.strip()[-300:]}")
        from providers.local import marked_pids

        left = [p.name for p in self.nodes_dir.iterdir() if marked_pids(p.name)] if self.nodes_dir.exists() else []
        self.counts["nodes left after down"] += len(left)
        self.launch("up", interrupt=True, timing="first up")
        self.counts["nodes leaked by an interrupted up"] += len(self.strays())
        self.up("first up" if not self.nodes_dir.exists() or not any(self.nodes_dir.iterdir()) else "up")
        self.connect()
        self.paused.clear()

    def inflict(self, fault: str) -> bool:
        """Cause the fault; False if there was nothing to hit."""
        from providers.local import marked_pids

        if fault == "worker":
            nodes = [n for n in self.workers() if marked_pids(n)]
            if not nodes:
                return False
            for pid in marked_pids(self.rng.choice(nodes)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        elif fault == "agent":
            pids = [pid_of(self.nodes_dir / n, "agent") for n in self.workers()]
            pids = [p for p in pids if alive(p)]
            if not pids:
                return False
            os.kill(self.rng.choice(pids), signal.SIGKILL)
        elif fault in ("head", "autoscaler"):
            pid = pid_of(self.head_dir(), "head" if fault == "head" else "monitor")
            if not alive(pid):
                return False
            os.kill(pid, signal.SIGKILL)
        elif fault == "disk":
            self.fill_disk()
        elif fault == "ctrl-c-up":
            if self.launch("up", interrupt=True) == 0:
                self.counts["up finished before its Ctrl-C"] += 1
            self.up()
        elif fault == "ctrl-c-down":
            self.ctrl_c_down()
        return True

    def watch(self) -> None:
        while not self.stop.is_set():
            self.most_workers = max(self.most_workers, len(self.workers()))
            strays = self.strays()
            if strays:
                time.sleep(1.0)  # a node being created is listed a moment after its processes start
                self.counts["most strays at once"] = max(self.counts["most strays at once"],
                                                          len(set(strays) & set(self.strays())))
            self.stop.wait(0.2)

    # --- what the marks say ---------------------------------------------------------------------------

    def runs(self) -> tuple[int, int, int]:
        """(keys run more than 1+retries times, keys retried, keys with two runs at once)."""
        by_key: dict[str, list[tuple[float, float | None, str]]] = {}
        for p in self.marks.iterdir():
            lines = p.read_text().splitlines()
            start, _, who = lines[0].partition(" ")
            end = float(lines[1]) if len(lines) > 1 else None
            by_key.setdefault(p.name.split(".")[0], []).append((float(start), end, who))
        beyond = sum(1 for r in by_key.values() if len(r) > MAX_RETRIES + 1)
        retried = sum(1 for r in by_key.values() if len(r) > 1)
        overlapping = 0
        for key, runs in by_key.items():
            if any(a is not b and a[1] is not None and a[0] < b[0] < a[1] for a in runs for b in runs):
                overlapping += 1
                print(f"  run twice at once: {key} {sorted(runs)}", flush=True)
        return beyond, retried, overlapping


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=5400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", default=",".join(FAULTS), help="the kinds of fault to cause (comma-separated)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    home = work / "home"
    home.mkdir()
    faults = {f: FAULTS[f] for f in args.faults.split(",")}
    if os.geteuid() == 0:  # the cluster's own disk, to fill
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "none", str(home)], check=True)
    else:
        print("not root: no tmpfs to fill, no disk faults")
        del faults["disk"]
    os.environ["LAUNCH_HOME"] = str(home)
    print(f"the run's files (marks, the nodes' logs kept before each down): {work}", flush=True)
    chaos = Chaos(home, work, rng)
    try:
        run(chaos, args, rng, faults)
    finally:
        chaos.stop.set()
        chaos.launch("down")  # (again, if the run got that far): nothing of the bench is left running
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(home)], check=False)


def run(chaos: Chaos, args, rng: random.Random, faults: dict[str, float]) -> None:
    import runtime

    chaos.up("first up")
    chaos.connect()
    threading.Thread(target=chaos.submitter, daemon=True).start()
    threading.Thread(target=chaos.watch, daemon=True).start()
    recovery: dict[str, list[float]] = {f: [] for f in faults}
    started = time.monotonic()
    cycles = 0
    while cycles < args.cycles and time.monotonic() - started < args.max_seconds:
        time.sleep(rng.uniform(0.5, 2.0))  # chaos at a random moment, not a synchronisation
        fault = rng.choices(list(faults), weights=list(faults.values()))[0]
        began = time.monotonic()
        if not chaos.inflict(fault):
            continue
        time.sleep(0.2)
        while not chaos.recovered() and time.monotonic() - began < RECOVERY_LIMIT_S:
            time.sleep(0.1)
        took = time.monotonic() - began
        if took >= RECOVERY_LIMIT_S:
            chaos.hung.append(f"no recovery {RECOVERY_LIMIT_S}s after the {fault} fault")
        recovery[fault].append(took)
        cycles += 1
        print(f"cycle {cycles} at {time.time() - took:.2f}: {fault}; recovered in {took:.1f}s", flush=True)
    chaos.paused.set()
    chaos.idle.wait()
    chaos.settle(deadline_s=300)
    chaos.stop.set()
    beyond, retried, overlapping = chaos.runs()
    strays = chaos.strays()
    runtime.shutdown()
    if chaos.counts["tasks lost"] or "lost" in chaos.jobs.values() or overlapping:  # the nodes' logs, to look
        subprocess.run(["cp", "-r", str(chaos.nodes_dir), str(chaos.marks.parent / "nodes")], check=False)
        print(f"the nodes' files: {chaos.marks.parent / 'nodes'}")
    chaos.launch("down")
    from providers.local import marked_pids

    nodes_dir = chaos.nodes_dir
    left = [p.name for p in nodes_dir.iterdir() if marked_pids(p.name)] if nodes_dir.exists() else []

    c = chaos.counts
    jobs = Counter(chaos.jobs.values())
    print(f"\n{cycles} cycles in {time.monotonic() - started:.0f}s; provider create failure rate 20%; faults: "
          + ", ".join(f"{f} {len(t)}" for f, t in recovery.items()))
    print(f"tasks accepted {c['tasks completed'] + c['tasks failed'] + c['tasks lost']}, completed "
          f"{c['tasks completed']}, failed after {MAX_RETRIES} retries {c['tasks failed']}, lost {c['tasks lost']} "
          f"(submissions refused while the disk was full: {c['task submissions refused']})")
    print(f"jobs accepted {len(chaos.jobs)}, finished {jobs['finished']}, failed after {MAX_RETRIES} retries "
          f"{jobs['failed']}, lost {jobs['lost']} (refused while the disk was full: {c['jobs refused']})")
    print(f"run more than 1+{MAX_RETRIES} times: {beyond}; run twice at once: {overlapping}; "
          f"retried: {retried}")
    print(f"leaked nodes: {c['most strays at once']} at most while running, {len(strays)} at the end, "
          f"{c['nodes leaked by an interrupted up']} after an interrupted up, {c['nodes left after down']} after "
          f"an interrupted down and another, {len(left)} after the last down; duplicate launches: "
          f"{max(0, chaos.most_workers - MAX_WORKERS)} (most workers at once: {chaos.most_workers})")
    print(f"hung: {len(chaos.hung)}" + "".join(f"\n  {h}" for h in chaos.hung))
    print(f"commands that finished before their Ctrl-C: up {c['up finished before its Ctrl-C']}, "
          f"down {c['down finished before its Ctrl-C']}")
    for fault, times in recovery.items():
        if times:
            print(f"recovery after {fault}: median {statistics.median(times):.1f}s, max {max(times):.1f}s "
                  f"({len(times)})")


if __name__ == "__main__":
    main()
