"""The runtime through its client API and the CLI, on one real local cluster shared by this module.

Nodes: head {CPU 1}; cpu {CPU 2, work 1}; gpu {CPU 1, GPU 2 (declared), special 1, work 1}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

import runtime
from launcher.cluster import Cluster
from lifecycle.config import load_config
from runtime.proto import head_pb2 as pb
from tests.infra import ROOT, RunningCluster, cli, local_cluster, node_dir, processes_with_env, wait_for


@runtime.remote(num_cpus=1)
def where(sleep_s: float = 0.0):
    import os
    import time as t

    start = t.time()
    t.sleep(sleep_s)
    return os.environ["LAUNCH_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"], start, t.time()


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    # the autoscaler stays off: these tests kill nodes and expect work to move to the survivors
    data = local_cluster("rt", runtime={"heartbeat_interval_s": 0.2, "node_timeout_s": 1.5},
                         autoscaler={"enabled": False})
    data["available_node_types"] = {
        "head": {"resources": {"CPU": 1}, "max_workers": 0},
        "cpu": {"resources": {"CPU": 2, "work": 1}, "min_workers": 1, "max_workers": 1},
        "gpu": {"resources": {"CPU": 1, "GPU": 2, "special": 1, "work": 1}, "min_workers": 1, "max_workers": 1},
    }
    c = RunningCluster(tmp, data)
    ids = {node_type: node_id for node_id, node_type in c.node_types().items()}
    yield {"path": c.path, "home": c.home, "ids": ids, "address": c.address, "token": c.token}
    c.down()


def _head_pid(rt) -> int:
    node = rt["home"] / "clusters" / "rt" / "local" / "nodes" / rt["ids"]["head"]
    return int((node_dir(node) / "pids" / "head.pid").read_text())


def _state(rt) -> pb.ClusterState:
    """The head's view, after every submission made so far has reached it (.remote() is async)."""
    from runtime.client import HeadClient

    runtime.wait([], num_returns=0, timeout=0)
    with HeadClient(rt["address"], rt["token"]) as c:
        return c.cluster_state()


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_never_more_running_than_fits(rt):
    results = runtime.get([where.remote(0.3) for _ in range(12)], timeout=60)
    by_node: dict[str, list] = {}
    for node, _gpus, start, end in results:
        by_node.setdefault(node, []).append((start, end))
    cpus = {rt["ids"]["head"]: 1, rt["ids"]["cpu"]: 2, rt["ids"]["gpu"]: 1}
    for node, spans in by_node.items():
        assert _max_overlap(spans) <= cpus[node], (node, spans)
    # CPU-only work sees no GPU
    assert all(g == "" for _n, g, _s, _e in results)


def test_fractional_gpus_share_and_whole_gpus_do_not(rt):
    half = where.options(num_cpus=0, num_gpus=0.5)
    results = runtime.get([half.remote(0.5) for _ in range(4)], timeout=60)
    assert {r[0] for r in results} == {rt["ids"]["gpu"]}
    assert sorted(r[1] for r in results) == ["0", "0", "1", "1"]  # two halves per GPU, never more
    assert _max_overlap([(r[2], r[3]) for r in results]) == 4

    node, gpus, _s, _e = runtime.get(where.options(num_cpus=0, num_gpus=2).remote(), timeout=30)
    assert node == rt["ids"]["gpu"] and gpus == "0,1"


@runtime.remote(num_cpus=0.5)
def blob(n: int) -> bytes:
    return b"x" * n


def test_many_results_and_large_ones_in_one_get(rt):
    """100 results of 50 KB (over gRPC's default 4 MiB per message together) and a 6 MiB result: each
    `get` completes; no RESOURCE_EXHAUSTED, no task left running for ever."""
    assert [len(v) for v in runtime.get([blob.remote(50_000) for _ in range(100)], timeout=120)] == [50_000] * 100
    assert len(runtime.get(blob.remote(6 << 20), timeout=60)) == 6 << 20


@runtime.remote(num_cpus=0.5)
def echo_tail(data: bytes, extra: int) -> bytes:
    return data + b"y" * extra


def test_arguments_and_results_over_the_message_limit_move_in_chunks(rt):
    """A 300 MiB argument and a 600 MiB result (over what the head kept in a message before: 256 MiB),
    passed on as another task's argument: chunked both ways, never whole in the head's memory."""
    first = echo_tail.remote(b"a" * (300 << 20), 300 << 20)
    second = echo_tail.remote(first, 1)  # the 600 MiB value goes to the next task from the head's disk
    value = runtime.get(second, timeout=300)
    assert len(value) == (600 << 20) + 1 and value[:3] == b"aaa" and value[-2:] == b"yy"
    head_rss_kib = int(next(ln.split()[1] for ln in open(f"/proc/{_head_pid(rt)}/status") if ln.startswith("VmHWM")))
    assert head_rss_kib < 300 << 10  # the head's peak memory stayed under the size of one of them


def _peak_kib(pid: int | str) -> int:
    return int(next(ln.split()[1] for ln in open(f"/proc/{pid}/status") if ln.startswith("VmHWM")))


def _reset_peak(pid: int | str) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # VmHWM starts again from the present RSS
        f.write("5")


def test_a_large_result_streams_and_is_never_held_whole_twice(rt):
    """A 256 MiB result: the worker pickles it into a file as it goes (not into bytes, then a frame),
    the agent uploads from that file a chunk at a time (it never holds the value), and the client
    unpickles it as the chunks arrive (the value, not the value and its pickle)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("resetting a process's peak memory (clear_refs) needs root")
    size = 256 << 20
    node = rt["home"] / "clusters" / "rt" / "local" / "nodes" / rt["ids"]["gpu"]
    agent = int((node_dir(node) / "pids" / "agent.pid").read_text())
    runtime.get(blob.options(resources={"special": 1}).remote(10), timeout=60)  # its worker process started
    _reset_peak(agent)
    _reset_peak("self")
    before = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmRSS")))
    value = runtime.get(blob.options(resources={"special": 1}).remote(size), timeout=120)
    assert len(value) == size
    assert _peak_kib(agent) < 128 << 10  # the agent's whole process, under half the value's size
    assert _peak_kib("self") - before < (size >> 10) * 5 // 4  # the value and a little, not twice it
    assert not any((node_dir(node) / "results").iterdir())  # the worker's file, uploaded, is gone


def test_custom_resources_pick_the_node(rt):
    node, *_ = runtime.get(where.options(num_cpus=0, resources={"special": 1}).remote(), timeout=30)
    assert node == rt["ids"]["gpu"]


def test_gpu_node_kept_free_for_gpu_work(rt):
    # {work: 1} fits the cpu node and the gpu node: the node without GPUs is preferred
    node, *_ = runtime.get(where.options(num_cpus=0, resources={"work": 1}).remote(), timeout=30)
    assert node == rt["ids"]["cpu"]


def test_infeasible_is_reported_with_reason_and_cancellable(rt):
    ref = where.options(num_gpus=4).remote()
    st = _state(rt)
    (inf,) = [d for d in st.infeasible if d.shape.amounts.get("GPU") == 4]
    assert inf.count == 1 and "GPU: 4" in inf.reason
    with pytest.raises(runtime.GetTimeoutError):
        runtime.get(ref, timeout=0.5)
    assert runtime.cancel(ref) == "cancelled"
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=5)
    assert not any(d.shape.amounts.get("GPU") == 4 for d in _state(rt).infeasible)


def test_queued_demand_grouped_by_shape(rt):
    blocker = where.options(num_cpus=0, resources={"special": 1})
    refs = [blocker.remote(0.3) for _ in range(5)]  # one runs, four wait: demand of one shape
    st = _state(rt)
    shapes = {tuple(sorted(d.shape.amounts.items())): d.count for d in st.demand}
    assert shapes.get((("special", 1.0),)) == 4
    runtime.get(refs, timeout=30)


def test_futures_as_arguments_and_remote_exceptions(rt):
    @runtime.remote
    def add(a, b):
        return a + b

    @runtime.remote
    def fail(x):
        raise ValueError(f"bad {x}")

    a = add.remote(1, 2)
    b = add.remote(a, 10)
    assert runtime.get(add.remote(a, b=b), timeout=30) == 16
    with pytest.raises(ValueError) as e:
        runtime.get(fail.remote(7), timeout=30)
    assert isinstance(e.value, runtime.TaskError) and "bad 7" in str(e.value)
    assert "Remote traceback" in str(e.value) and "raise ValueError" in e.value.remote_traceback
    # a task whose argument failed fails too, with that task's error (as in Ray)
    with pytest.raises(ValueError, match="bad 1") as e:
        runtime.get(add.remote(fail.remote(1), 1), timeout=30)
    assert isinstance(e.value, runtime.TaskError)


def test_tasks_waiting_on_their_children_lend_their_cpus(rt):
    """Every CPU of the cluster (4) held by a parent that `get`s a child of its own: the parents lend
    their CPUs while they wait, so the children run (Ray's behaviour) instead of waiting forever."""
    @runtime.remote(num_cpus=1)
    def child(x):
        import time as t
        t.sleep(0.2)
        return x * 2

    @runtime.remote(num_cpus=1)
    def parent(x):
        import time as t

        import runtime as rt_
        t.sleep(0.3)  # all four parents hold their CPUs before any child is submitted
        return rt_.get(child.remote(x), timeout=60) + 1

    assert runtime.get([parent.remote(i) for i in range(4)], timeout=90) == [1, 3, 5, 7]
    # the CPUs are the parents' again when their gets returned, and free once they finished
    from runtime.client import HeadClient

    with HeadClient(rt["address"], rt["token"]) as client:
        state = client.cluster_state()
    assert all(n.available.amounts.get("CPU") == n.total.amounts.get("CPU") for n in state.nodes)


def test_wait_returns_the_first_done(rt):
    slow, fast = where.remote(3.0), where.remote(0.0)
    ready, not_ready = runtime.wait([slow, fast], num_returns=1, timeout=10)
    assert ready == [fast] and not_ready == [slow]
    assert runtime.cancel(slow) in ("running", "cancelled")


def test_a_get_after_wait_fetches_nothing_again(rt, monkeypatch):
    """wait() brings the results it found done; a get of those refs uses them (as a Ray driver holds what
    its tasks returned), and a ref sent to a task travels without them."""
    import cloudpickle

    from runtime import api

    @runtime.remote(num_cpus=0.5)
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(50)]
    ready, _ = runtime.wait(refs, num_returns=50, timeout=30)
    assert len(ready) == 50
    client = api._connection().client
    asked = []
    real = client.get_results
    monkeypatch.setattr(client, "get_results", lambda ids, *a, **k: asked.append(list(ids)) or real(ids, *a, **k))
    assert runtime.get(refs) == [i * i for i in range(50)]
    assert asked == []
    late = square.remote(7)
    assert runtime.get(refs[:3] + [late]) == [0, 1, 4, 49]
    assert asked == [[late.id]]  # only what the wait did not bring
    travelled = cloudpickle.loads(cloudpickle.dumps(refs[0]))
    assert travelled == refs[0] and travelled._result is None
    assert runtime.get(square.remote(refs[5]), timeout=30) == 625  # a task given the ref: its value from the head


@runtime.remote(num_cpus=0.5, max_retries=0)
def digest(data: bytes) -> tuple[str, str]:
    import hashlib
    import os

    return os.environ["LAUNCH_NODE_ID"], hashlib.sha256(data).hexdigest()


_GET_BY_ANOTHER_DRIVER = """
import hashlib, sys, runtime
from runtime.api import ObjectRef
runtime.init(address=sys.argv[1], token=sys.argv[2])
try:
    print(hashlib.sha256(runtime.get(ObjectRef(sys.argv[3]), timeout=30)).hexdigest())
except runtime.exceptions.RayError as e:
    print(type(e).__name__)
"""


def _another_driver(rt, ref) -> str:
    r = subprocess.run([sys.executable, "-c", _GET_BY_ANOTHER_DRIVER, rt["address"], rt["token"], ref.id],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_large_put_value_is_kept_in_memory_and_read_back_by_its_owner_alone(rt):
    """A value over the message limit put by a driver on the head's machine is written once, into the
    head's memory folder (tmpfs), which its store names by a link; tasks on other nodes and other drivers
    read it there; the driver that put it reads it back without asking the head (stopped meanwhile)."""
    import hashlib
    from pathlib import Path

    value = os.urandom(3 << 20)
    ref = runtime.put(value)
    blobs = Path(_state(rt).store_dir)
    link = blobs / f"res.{ref.id}"
    assert os.readlink(link).startswith("/dev/shm/launch-")
    node, seen = runtime.get(digest.options(resources={"special": 1}).remote(ref), timeout=60)
    assert node == rt["ids"]["gpu"] and seen == hashlib.sha256(value).hexdigest()
    assert _another_driver(rt, ref) == seen
    head = _head_pid(rt)
    os.kill(head, signal.SIGSTOP)
    try:
        assert runtime.get(ref, timeout=5) == value
        assert runtime.get(runtime.put({"small": [1, 2]}), timeout=5) == {"small": [1, 2]}
    finally:
        os.kill(head, signal.SIGCONT)


def test_a_put_value_is_freed_with_its_last_ref_unless_it_was_passed_on(rt):
    """As Ray frees an object with its last reference: values this driver put and dropped, never passing their
    refs on, are gone from the head (and the large one's memory) with the next submission; one whose ref went
    into a task stays for whoever else may hold it."""
    import gc
    from pathlib import Path

    from runtime.client import HeadClient

    dropped = [runtime.put(os.urandom(3 << 20)), runtime.put({"small": 1})]
    passed = runtime.put(b"passed on")
    assert runtime.get(digest.remote(passed), timeout=60)[1]
    memory_file = os.readlink(Path(_state(rt).store_dir) / f"res.{dropped[0].id}")
    gone_ids, kept_id = [r.id for r in dropped], passed.id
    del dropped, passed
    gc.collect()
    runtime.get(digest.remote(b"x"), timeout=60)  # a submission: it carries the ids
    with HeadClient(rt["address"], rt["token"]) as c:
        listed = {i.id for i in c.list_items("object")}
    assert kept_id in listed and not set(gone_ids) & listed
    assert not os.path.exists(memory_file)


def test_large_values_put_and_dropped_are_written_over_one_another_only_once_no_one_needs_them(rt):
    """A driver that puts large values and drops them (the loop of Ray's own benchmark) writes each next one
    over the last one's file (runtime/spare.py), but only once the head has the last one's submission: with
    the head paused, each goes to a file of its own, and the head takes them all when it runs again. A value
    whose ref lives, or whose ref went into a task, is never written over."""
    import gc
    import hashlib
    from types import SimpleNamespace

    size = 17 << 20  # (over SPARE_MIN_BYTES)
    kept_value, passed_value = os.urandom(size), os.urandom(size)
    kept, passed = runtime.put(kept_value), runtime.put(passed_value)
    assert runtime.get(digest.remote(passed), timeout=60)[1] == hashlib.sha256(passed_value).hexdigest()
    passed_id = passed.id
    del passed
    gc.collect()
    head = _head_pid(rt)
    os.kill(head, signal.SIGSTOP)
    try:
        for _ in range(3):  # read back here; the head has none of their submissions
            value = os.urandom(size)
            assert runtime.get(runtime.put(value), timeout=5) == value
    finally:
        os.kill(head, signal.SIGCONT)
    for _ in range(4):
        value = os.urandom(size)
        assert runtime.get(runtime.put(value), timeout=30) == value
    assert runtime.get(digest.remote(b"x"), timeout=60)  # every submission so far taken (none refused)
    assert runtime.get(kept, timeout=30) == kept_value
    assert _another_driver(rt, kept) == hashlib.sha256(kept_value).hexdigest()
    assert _another_driver(rt, SimpleNamespace(id=passed_id)) == hashlib.sha256(passed_value).hexdigest()


def test_a_large_put_value_from_off_the_heads_machine_is_uploaded_in_chunks(rt, monkeypatch):
    """A driver that does not share the head's disk (a node elsewhere): the value is pickled into a private
    temporary file, uploaded in chunks, and kept by the head; the driver reads it back from the head."""
    import glob
    import hashlib
    import tempfile

    from runtime import api

    client = api._connection().client
    monkeypatch.setattr(client, "_blobs", False)  # (what shared_blobs finds on another machine)
    before = set(glob.glob(f"{tempfile.gettempdir()}/launch-upload-*"))
    value = os.urandom(5 << 20)
    ref = runtime.put(value)
    assert ref._local is None  # not written here: its get asks the head
    assert runtime.get(ref, timeout=30) == value
    assert set(glob.glob(f"{tempfile.gettempdir()}/launch-upload-*")) == before  # the temporary file is gone
    assert _another_driver(rt, ref) == hashlib.sha256(value).hexdigest()


def test_a_value_lost_from_memory_is_an_object_lost_error(rt):
    """The head machine's memory lost (a reboot; here, the file removed): a get of the value, by a driver
    that did not put it or by a task given it, says it is lost."""
    from pathlib import Path

    ref = runtime.put(os.urandom(2 << 20))
    link = Path(_state(rt).store_dir) / f"res.{ref.id}"
    os.unlink(os.readlink(link))
    assert _another_driver(rt, ref) == "ObjectLostError"
    with pytest.raises(runtime.exceptions.ObjectLostError):
        runtime.get(digest.remote(ref), timeout=60)


def test_running_task_cancel_stops_it(rt):
    ref = where.remote(30.0)
    deadline = time.time() + 10
    while _state(rt).demand or not any(n.running for n in _state(rt).nodes):
        assert time.time() < deadline
        time.sleep(0.05)
    runtime.cancel(ref)
    t0 = time.time()
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=10)
    assert time.time() - t0 < 5


def test_jobs_submit_logs_cancel_through_cli(rt, tmp_path):
    path, home = rt["path"], rt["home"]
    script = tmp_path / "count.py"
    script.write_text("import sys, time\nprint('job args', sys.argv[1:], flush=True)\n"
                      "print('oops', file=sys.stderr, flush=True)\ntime.sleep(60)\n")
    r = cli("submit", str(path), str(script), "--no-follow", "--", "x", "y", home=home)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    deadline = time.time() + 20
    while "job args" not in (logs := cli("job", "logs", str(path), job_id, home=home).stdout):
        assert time.time() < deadline, logs
        time.sleep(0.2)
    assert "job args ['x', 'y']" in logs and "oops" in logs
    listed = json.loads(cli("job", "list", str(path), "--json", home=home).stdout)
    assert [j["state"] for j in listed if j["id"] == job_id] == ["running"]

    r = cli("job", "cancel", str(path), job_id, home=home)
    assert r.returncode == 0 and job_id in r.stdout
    deadline = time.time() + 10
    while True:
        listed = json.loads(cli("job", "list", str(path), "--json", home=home).stdout)
        if [j["state"] for j in listed if j["id"] == job_id] == ["cancelled"]:
            break
        assert time.time() < deadline
        time.sleep(0.2)
    assert processes_with_env(f"LAUNCH_JOB_ID={job_id}\0") == []  # the job's process group is gone

    ok = tmp_path / "ok.sh"
    ok.write_text("echo from bash on $LAUNCH_NODE_ID in $(pwd) with GREETING=$GREETING\nexit 0\n")
    r = cli("submit", str(path), str(ok), "--env", "GREETING=hi there", "--working-dir", "/tmp", home=home)
    assert r.returncode == 0, r.stderr  # follows the log to the end
    assert "from bash on local-" in r.stdout and "in /tmp with GREETING=hi there" in r.stdout
    # the jobs that ran, as a `launch simulate` trace: the cancelled one ran ~until cancelled, the other briefly
    r = cli("job", "list", str(path), "--trace", home=home)
    trace = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(trace) >= 2 and trace[0]["t"] == 0, r.stdout + r.stderr
    assert all(task["duration"] >= 0 and task["resources"] is not None for task in trace)

    r = cli("submit", str(path), str(ok), "--env", "NOEQUALS", home=home)
    assert r.returncode == 1 and "--env 'NOEQUALS': expected KEY=VALUE" in r.stderr
    r = cli("submit", str(path), str(ok), "--working-dir", "/no/such/dir", home=home)
    assert r.returncode == 127 and "does not exist on the node" in r.stderr

    r = cli("job", "logs", str(path), "j-nope", home=home)
    assert r.returncode == 1 and "unknown job" in r.stderr and "Traceback" not in r.stderr


def test_readme_example_runs_as_a_job(rt):
    r = cli("submit", str(rt["path"]), "examples/hello_tasks.py", "--", "4", home=rt["home"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "total of squares: 14" in r.stdout
    assert "GPU task ran with CUDA_VISIBLE_DEVICES = 0" in r.stdout  # the declared GPUs of the gpu node


def test_a_job_gets_the_work_credential_and_its_output_is_private(rt, tmp_path):
    script = tmp_path / "probe.sh"
    script.write_text('case "$LAUNCH_CLUSTER_TOKEN" in w.*) echo work-credential;; *) echo the-cluster-token;; esac\n'
                      'echo modes $(stat -c %a "$LAUNCH_JOB_DIR" "$LAUNCH_JOB_DIR/output.log")\n')
    r = cli("submit", str(rt["path"]), str(script), home=rt["home"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "work-credential" in r.stdout and "modes 700 600" in r.stdout


def test_submit_requires_the_token(rt):
    from runtime.client import HeadClient

    with HeadClient(rt["address"], "wrong") as c, pytest.raises(grpc.RpcError) as e:
        c.submit(pb.WorkSpec(kind="job", command="touch /tmp/pwned"))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with HeadClient(rt["address"], "wrong") as c, pytest.raises(grpc.RpcError) as e:
        next(iter(c.work_stream("x")))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_drain_then_node_death_requeues(rt, monkeypatch):
    # runs last in this module: it kills the cpu node
    from runtime.client import HeadClient

    cpu, gpu = rt["ids"]["cpu"], rt["ids"]["gpu"]
    slow = where.options(num_cpus=0, resources={"work": 1}, max_retries=2)
    ref = slow.remote(2.0)  # lands on the cpu node (kept free of GPU waste)
    deadline = time.time() + 10
    while not any(n.node_id == cpu and n.running for n in _state(rt).nodes):
        assert time.time() < deadline
        time.sleep(0.05)
    with HeadClient(rt["address"], rt["token"]) as c:
        reply = c.drain(cpu)
    assert not reply.drained and reply.running == 1
    # a drained node takes no new work
    node, *_ = runtime.get(slow.remote(0.0), timeout=30)
    assert node == gpu

    monkeypatch.setenv("LAUNCH_HOME", str(rt["home"]))
    Cluster(load_config(rt["path"])).lifecycle.provider.terminate([cpu])  # the node dies with the task on it
    node, *_ = runtime.get(ref, timeout=30)
    # requeued after the head declared the cpu node dead, and run elsewhere: on the gpu node, or on the
    # cpu node the autoscaler launched in its place (a static cluster is kept at its min_workers too)
    assert node != cpu
    st = _state(rt)
    assert [n.state for n in st.nodes if n.node_id == cpu] == ["dead"]


@pytest.mark.parametrize("module", ["runtime", "runtime.head", "runtime.agent", "runtime.api", "autoscaler.monitor"])
def test_each_entry_point_sets_up_grpcs_io_before_grpc_is_imported(module):
    """gRPC reads GRPC_EXPERIMENTS once, when first imported: a module importing it before the runtime's
    package did would leave that process on the slower I/O, silently (runtime/__init__.py says why)."""
    if not runtime._grpc_version().startswith(runtime._MEASURED_ON):
        pytest.skip(f"grpcio {runtime._grpc_version()} was not measured: the runtime leaves its I/O alone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    code = (f"import os, {module}, grpc; print(os.environ.get('GRPC_EXPERIMENTS'), "
            f"os.environ.get('GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS'), os.environ.get('GRPC_ENABLE_FORK_SUPPORT'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    # with the backup poller's 5 s default, agents came back 5-7 s after a head restart on this I/O path;
    # gRPC's fork handlers, racing the runtime's own threads, broke pollers (grpcio 1.80 on Python 3.9)
    assert out.stdout.split() == [runtime._IO_EXPERIMENTS, "200", "0"]
    # a setting of the user's own is kept
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GRPC_EXPERIMENTS": "-x", "GRPC_ENABLE_FORK_SUPPORT": "1"},
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["-x", "None", "1"]


def test_a_cancelled_job_ends_its_whole_tree(rt, tmp_path):
    """A job's children that left its session (setsid) or ignore SIGTERM end with it: SIGTERM, then
    SIGKILL after the grace period (runtime.processes.JOB_STOP_GRACE_S)."""
    path, home = rt["path"], rt["home"]
    script = tmp_path / "stubborn.sh"
    script.write_text("setsid sleep 300 >/dev/null 2>&1 < /dev/null &\n"
                      "bash -c \"trap '' TERM; sleep 300\" >/dev/null 2>&1 &\n"
                      "echo ready\nwait\n")
    r = cli("submit", str(path), str(script), "--no-follow", home=home)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    wait_for(lambda: "ready" in cli("job", "logs", str(path), job_id, home=home).stdout, what="the job started")
    mark = f"LAUNCH_JOB_ID={job_id}\0"
    assert len(processes_with_env(mark)) >= 3  # bash, the setsid one, the one that ignores SIGTERM
    assert cli("job", "cancel", str(path), job_id, home=home).returncode == 0
    wait_for(lambda: processes_with_env(mark) == [], timeout=15, what="every process of the job gone")


def test_work_dies_with_its_agent_and_runs_again_once(rt, tmp_path):
    """kill -9 of a node's agent: the supervisor starts a new one, which ends what the dead one had
    started before it registers; the head then runs the task again. It never both runs on and reruns."""
    from providers.local import process_start_time

    marks = tmp_path / "started"
    marks.mkdir()

    @runtime.remote(num_cpus=1, resources={"work": 1}, max_retries=2)
    def long(d):
        import os
        import pathlib
        import time
        pathlib.Path(d, str(os.getpid())).write_text(os.environ["LAUNCH_NODE_ID"])
        if len(list(pathlib.Path(d).iterdir())) == 1:  # the first run lasts; the one given again ends at once
            time.sleep(120)
        return os.getpid()

    ref = long.remote(str(marks))
    first = wait_for(lambda: list(marks.iterdir()), what="the task running")[0]
    pid, node = int(first.name), first.read_text()
    agent_pid = node_dir(rt["home"] / "clusters" / "rt" / "local" / "nodes" / node) / "pids" / "agent.pid"
    os.kill(int(agent_pid.read_text()), signal.SIGKILL)
    wait_for(lambda: process_start_time(pid) is None, timeout=20, what="the task's process to end with its agent")
    assert runtime.get(ref, timeout=60) != pid
