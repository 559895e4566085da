"""The head service over real gRPC: token required on every call, registration, heartbeats, death."""

from __future__ import annotations

import collections
import os
import threading

import grpc
import pytest

from runtime.client import HeadClient
from runtime.head import serve
from runtime.node_config import NodeRuntimeConfig
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from tests.infra import wait_for

TOKEN = "t0k3n-for-tests"


@pytest.fixture
def head(tmp_path):
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0, node_timeout_s=0.5)
    server, servicer, port = serve(cfg, state_dir=tmp_path)
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=0)


def _register(client, node_id="n1", running=(), first=False):
    return client.register(pb.RegisterNodeRequest(
        node_id=node_id, node_type="cpu", address="127.0.0.1",
        total=pb.Resources(amounts={"CPU": 2.0}), labels={"zone": "a"},
        running=[pb.RunningItem(id=i, attempt=a) for i, a in running], first=first))


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)],
                         ids=["no-token", "wrong-token", "no-bearer-prefix"])
def test_every_call_without_the_token_is_refused(head, metadata):
    address, servicer = head
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.HeadStub(channel)
    calls = [
        lambda: stub.GetClusterState(pb.ClusterStateRequest(), metadata=metadata, timeout=5),
        lambda: stub.RegisterNode(pb.RegisterNodeRequest(node_id="evil"), metadata=metadata, timeout=5),
        lambda: stub.Heartbeat(pb.HeartbeatRequest(node_id="evil"), metadata=metadata, timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.nodes == {}  # nothing got through
    channel.close()


def test_register_heartbeat_state(head):
    address, _ = head
    with HeadClient(address, TOKEN) as client:
        assert _register(client).heartbeat_interval_s > 0
        assert client.heartbeat(pb.HeartbeatRequest(node_id="n1")).known
        assert not client.heartbeat(pb.HeartbeatRequest(node_id="stranger")).known
        st = client.cluster_state()
    (node,) = st.nodes
    assert node.node_id == "n1" and node.state == "alive" and node.labels["zone"] == "a"
    # the head owns allocation: with nothing assigned, everything is available and the node is idle; every
    # node has one of "node:<its id>" (what node affinity asks for)
    assert dict(node.total.amounts) == dict(node.available.amounts) == {"CPU": 2.0, "node:n1": 1.0}
    assert node.idle_since > 0 and node.running == 0


def test_the_autoscalers_watch_answers_when_work_stops_fitting_not_when_it_fits(head):
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)  # 2 CPUs
        first = client.watch_demand("", timeout_s=30)  # nothing seen yet: answered at once
        assert list(first.demand) == [] and first.fingerprint
        client.submit_many([_job(1.0)])  # placed at once: no demand, and the watch waits out its time
        same = client.watch_demand(first.fingerprint, timeout_s=0.5)
        assert same.fingerprint == first.fingerprint and list(same.demand) == []

        answered = []
        watcher = threading.Thread(target=lambda: answered.append(client.watch_demand(first.fingerprint, 60)))
        watcher.start()
        wait_for(lambda: servicer.demand_watchers, timeout=30, what="the watch waiting on the head")
        client.submit_many([_job(2.0), _job(2.0)])  # one CPU left: neither fits
        watcher.join(timeout=30)  # woken by the submission, not by its 60 s
        assert not watcher.is_alive(), "the watch was not woken when work stopped fitting"
    (reply,) = answered
    assert [(dict(d.shape.amounts), d.count) for d in reply.demand] == [({"CPU": 2.0}, 2)]
    assert reply.fingerprint != first.fingerprint and not servicer.demand_watchers


def _job(cpus: float) -> pb.WorkSpec:
    return pb.WorkSpec(kind="job", name="j", command="true", request=pb.Resources(amounts={"CPU": cpus}))


def test_silent_node_is_declared_dead_and_must_reregister(head):
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        servicer.clock = lambda: servicer.nodes["n1"].last_heartbeat + 1.0  # 1s of silence > 0.5s timeout
        assert servicer.mark_dead_nodes() == ["n1"]
        assert client.cluster_state().nodes[0].state == "dead"
        assert not client.heartbeat(pb.HeartbeatRequest(node_id="n1")).known  # tells the agent to register
        _register(client)
        assert client.cluster_state().nodes[0].state == "alive"


def test_a_removed_node_is_dead_at_once_and_its_work_requeued(head):
    """The autoscaler terminated the node: no wait for its heartbeats to stop, no 'interrupted' guess."""
    address, _ = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="sleep 60", max_retries=1,
                                                 request=pb.Resources(amounts={"CPU": 1.0}))])
        assert client.cluster_state().nodes[0].running == 1
        reply = client.remove_node("n1", "idle for 5 min")
        assert reply.known and reply.requeued == 1
        st = client.cluster_state()
        assert st.nodes[0].state == "dead" and [d.count for d in st.demand] == [1]  # queued again, as demand
        assert client.remove_node("n1").requeued == 0  # idempotent
        assert not client.remove_node("stranger").known


def test_an_agent_that_outlives_its_nodes_removal_gets_no_new_work(head):
    """Removed (its instance is being terminated), the node's agent still beats: told it is unknown, it
    registers again. It must not be given work that would die with the instance. Started again after a
    stop (cache_stopped_nodes), a new agent registers afresh and works."""
    address, _ = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        client.remove_node("n1", "idle for 5 min")
        assert not client.heartbeat(pb.HeartbeatRequest(node_id="n1")).known
        with pytest.raises(grpc.RpcError) as e:
            _register(client)  # the same agent, heard from again
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "n1 was removed" in e.value.details()
        client.submit_many([pb.WorkSpec(kind="job", name="j", command="true", request=pb.Resources(amounts={"CPU": 1.0}))])
        assert client.cluster_state().nodes[0].state == "dead"  # the work waits for a node
        _register(client, first=True)  # the instance was stopped and started again: a new agent
        (node,) = client.cluster_state().nodes
        assert node.state == "alive" and not node.draining and node.running == 1


def test_the_work_credential_submits_and_fetches_but_cannot_act_as_a_node(head):
    """Tasks and jobs get a derived credential: enough to submit and fetch work, never to register a
    node, heartbeat, take work from an agent's stream, or drain or remove nodes."""
    from runtime.auth import work_token

    address, servicer = head
    work = work_token(TOKEN)
    assert work != TOKEN and TOKEN not in work
    with HeadClient(address, TOKEN) as admin:
        _register(admin)
    with HeadClient(address, work) as client:
        (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="true",
                                                 request=pb.Resources(amounts={"CPU": 1.0}))])
        assert client.get_results([job], timeout_s=0) == []  # allowed; queued (no agent takes it), so none yet
        assert client.cluster_state().nodes[0].node_id == "n1"
        for call in (lambda: _register(client, "rogue"), lambda: client.drain("n1"),
                     lambda: client.remove_node("n1"),
                     lambda: client.heartbeat(pb.HeartbeatRequest(node_id="n1")),
                     lambda: next(iter(client.work_stream("n1"))),
                     lambda: next(iter(client.report_stream(iter([pb.ReportRequest(node_id="n1")]))))):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert set(servicer.nodes) == {"n1"} and servicer.nodes["n1"].state == "alive"


def test_a_node_back_from_the_dead_drops_its_work_and_only_the_assignee_completes(head):
    """A node paused past the timeout (SIGSTOP) comes back: the head told others to run its work, so
    it is told to drop what it runs, and a late completion from it is not counted."""
    import time

    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        assert not _register(client, "n1").drop
        (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="sleep 60", max_retries=1,
                                                 request=pb.Resources(amounts={"CPU": 1.0}))])
        assert servicer.sched.items[job].node_id == "n1"
        servicer.clock = lambda: servicer.nodes["n1"].last_heartbeat + 1.0
        assert servicer.mark_dead_nodes() == ["n1"]
        servicer.clock = time.time
        _register(client, "n2")
        assert servicer.sched.items[job].node_id == "n2"  # requeued and given to the other node
        # back, still running attempt 0: it must stop it
        assert [(d.id, d.attempt) for d in _register(client, "n1", running=[(job, 0)]).drop] == [(job, 0)]
        late = pb.ItemResult(id=job, state="finished")
        client.report("n1", [late])
        assert servicer.sched.items[job].state == "running" and servicer.sched.items[job].node_id == "n2"
        client.report("n2", [late, late])  # counted once
        assert job not in servicer.sched.items and servicer.store.row(job).state == "finished"
        assert [n.running for n in client.cluster_state().nodes] == [0, 0]


@pytest.mark.parametrize("first", [False, True], ids=["agent-lived-on", "agent-restarted"])
def test_work_given_out_just_before_a_head_restart_is_not_lost(tmp_path, first):
    """The head gave a job with no retries to a node and died before sending it. The node's agent, alive
    all along, registers with the new head without it: it never ran, so it runs now, no retry spent. Had
    the agent restarted too, the job died with it: no retries left, it fails, naming why."""
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0)
    server, _, port = serve(cfg, state_dir=tmp_path)
    with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
        _register(client)
        (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="true", max_retries=0,
                                                 request=pb.Resources(amounts={"CPU": 1.0}))])
    server.stop(grace=0)
    server, servicer, port = serve(cfg, state_dir=tmp_path)
    try:
        assert servicer.sched.items[job].node_id == "n1"  # recovered as the node's
        with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
            client.register(pb.RegisterNodeRequest(node_id="n1", node_type="cpu", address="127.0.0.1",
                                                   total=pb.Resources(amounts={"CPU": 2.0}), first=first))
            item = servicer.sched.items.get(job)
            if first:
                assert item is None and servicer.store.row(job).state == "failed"
                assert "agent restarted" in servicer.store.row(job).message
            else:
                assert item.state == "running" and item.node_id == "n1" and item.attempt == 1  # sent anew
                client.report("n1", [pb.ItemResult(id=job, state="finished")])
                assert servicer.store.row(job).state == "finished"
    finally:
        server.stop(grace=0)


def test_head_refuses_to_start_without_a_token(tmp_path):
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token="", address="127.0.0.1",
                            bind_host="127.0.0.1")
    with pytest.raises(ValueError, match="without a cluster token"):
        serve(cfg, state_dir=tmp_path)


def test_an_agents_dropped_work_is_stopped_and_never_reported(tmp_path, monkeypatch):
    from runtime.executor import Executor
    from tests.infra import wait_for

    monkeypatch.setenv("HOME", str(tmp_path))
    reports = []
    ex = Executor("n1", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, lambda r, a: reports.append(r),
                  lambda *a: None)
    ex.handle(pb.Assignment(item_id="j1", attempt=2, spec=pb.WorkSpec(kind="job", command="sleep 30")))
    proc = wait_for(lambda: ex.running.get("j1", (0, None))[1], timeout=10, what="the job to start")
    assert ex.in_flight() == [("j1", 2)]
    ex.drop([("j1", 1)])  # not the attempt it runs: kept
    assert proc.poll() is None
    ex.drop([("j1", 2)])
    assert proc.wait(timeout=10) != 0  # stopped
    wait_for(lambda: "j1" not in ex.running, timeout=5, what="the job's thread to see it end")
    assert reports == []


def _gets_of_a_running_job(client, n: int, timeout_s: float):
    """A node runs a 60 s job and n threads `get` it (one on the client's session stream, the others as
    calls): (the job, the numbers of results each got once done, the threads)."""
    _register(client)
    (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="sleep 60",
                                             request=pb.Resources(amounts={"CPU": 1.0}))])
    got: list[int] = []

    def wait():
        got.append(len(client.get_results([job], timeout_s=timeout_s)))

    threads = [threading.Thread(target=wait) for _ in range(n)]
    for t in threads:
        t.start()
    return job, got, threads


def test_thousands_of_waiting_gets_hold_no_thread_never_delay_heartbeats_and_all_wake(head):
    """Issue 28.6: 3,000 blocking `get`s of one running job (past the 2,048 server threads the old head
    had, where it starved): each waits on the head's event loop, none is told to ask again, the head's
    process holds no thread per waiting get, heartbeats and ClusterState are answered at once, and the
    job's completion answers every one. (bench/waiting_gets.py: 10,000 clients in 10 processes.)"""
    import asyncio

    from tests.infra import wait_for

    address, servicer = head
    n = 3000
    replies: list = []
    with HeadClient(address, TOKEN, timeout_s=5) as node:
        _register(node)
        job = node.submit(pb.WorkSpec(kind="job", name="long", command="true",
                                      request=pb.Resources(amounts={"CPU": 1.0})))

        async def clients():
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.HeadStub(channel)
                md = (("authorization", f"Bearer {TOKEN}"),)
                replies.extend(await asyncio.gather(*(
                    stub.GetResults(pb.GetResultsRequest(ids=[job], timeout_s=60), metadata=md, timeout=90)
                    for _ in range(n))))

        waiting = threading.Thread(target=asyncio.run, args=(clients(),))
        waiting.start()
        wait_for(lambda: len(servicer.waiters.get(job, ())) == n, timeout=120, what=f"{n:,} gets waiting")
        assert threading.active_count() < 200  # (the server's, this test's, gRPC's: none per waiting get)
        for _ in range(5):  # answered at once, not queued behind the gets
            assert node.heartbeat(pb.HeartbeatRequest(node_id="n1")).known
            assert node.cluster_state().nodes[0].running == 1
        node.report("n1", [pb.ItemResult(id=job, state="finished")])
        waiting.join(timeout=120)
    assert len(replies) == n and not any(r.busy for r in replies)
    assert all([r.state for r in reply.results] == ["finished"] for reply in replies)
    assert servicer.waiters == {}


def _three_jobs(client) -> list[str]:
    return client.submit_many([pb.WorkSpec(kind="job", name=f"j{i}", command="true",
                                           request=pb.Resources(amounts={"CPU": 0.5})) for i in range(3)])


def test_a_get_of_more_results_than_one_reply_carries_fetches_the_rest(head, monkeypatch):
    import runtime.head_results

    monkeypatch.setattr(runtime.head_results, "MAX_REPLY_BYTES", 1500)  # one 1,000-byte result per reply
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        jobs = _three_jobs(client)
        for i, job in enumerate(jobs):
            client.report("n1", [pb.ItemResult(id=job, state="finished", value=bytes([i]) * 1000)])
        reply = client._stub.GetResults(pb.GetResultsRequest(ids=jobs, timeout_s=0), metadata=client._md)
        assert len(reply.results) == 1 and reply.truncated  # the head's reply is bounded...
        results = client.get_results(jobs, timeout_s=5)  # ...and the client fetches the rest
    assert sorted(r.value for r in results) == [bytes([i]) * 1000 for i in range(3)]


def test_a_result_or_payload_over_the_size_limit_fails_clearly(monkeypatch, tmp_path):
    """Over MAX_OBJECT_BYTES (4 GiB; lowered here): the task fails naming the limit, never hangs (and
    the worker's file of it is gone); a payload that large is refused where `.remote()` is called."""
    import runtime
    import runtime.api
    import runtime.executor
    import runtime.executor_tasks

    monkeypatch.setattr(runtime.executor_tasks, "MAX_OBJECT_BYTES", 1000)
    ex = runtime.executor.Executor("n1", {}, lambda r, a: None, lambda *a: None)
    value = tmp_path / "t1.value"
    value.write_bytes(b"x" * 2000)
    r = ex._result(pb.Assignment(item_id="t1"), "ok-file", str(value))
    assert r.state == "failed" and "over the limit" in r.message and not value.exists()

    monkeypatch.setattr(runtime.api, "MAX_OBJECT_BYTES", 1000)

    @runtime.remote
    def f(x):
        return x

    with pytest.raises(ValueError, match="over the limit"):
        f.remote(b"x" * 2000)


def test_gets_ride_one_session_stream_and_fall_back_to_calls(head, monkeypatch):
    """A client's gets are messages on one Session stream (no call setup each); a refused one raises as
    the call would and the next get opens a new session; a head with sessions enough makes the client
    use calls, with the same results."""
    import runtime.head_results

    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        jobs = _three_jobs(client)
        for i, job in enumerate(jobs):
            client.report("n1", [pb.ItemResult(id=job, state="finished", value=bytes([i]))])
            assert [r.value for r in client.get_results([job], timeout_s=5)] == [bytes([i])]
        live = client.submit(pb.WorkSpec(kind="job", name="later", command="true",
                                         request=pb.Resources(amounts={"CPU": 0.5})))
        assert servicer.sessions == 1  # the three gets went on one stream, still open
        for ids, timeout_s in ((["t-nosuchitem"], 0), ([jobs[0], "t-nosuchitem"], 0),
                               ([jobs[0], "t-nosuchitem", live], None)):  # refused at once, not after a wait
            with pytest.raises(grpc.RpcError) as e:
                client.get_results(ids, timeout_s=timeout_s)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "unknown id t-nosuchitem"
        assert len(client.get_results(jobs, timeout_s=5)) == 3
    monkeypatch.setattr(runtime.head_results, "SESSION_LIMIT", 0)
    with HeadClient(address, TOKEN) as client:
        assert len(client.get_results(jobs, timeout_s=5)) == 3 and client._sessions_refused
        assert len(client.get_results(jobs, timeout_s=5)) == 3


def test_reports_on_the_stream_are_acknowledged_when_asked_and_count_once(head):
    import queue

    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        (job,) = client.submit_many([pb.WorkSpec(kind="job", name="j", command="true",
                                                 request=pb.Resources(amounts={"CPU": 1.0}))])
        requests: queue.SimpleQueue = queue.SimpleQueue()
        acks = client.report_stream(iter(requests.get, None))
        done = pb.ItemResult(id=job, state="finished", value=b"v")
        requests.put(pb.ReportRequest(node_id="n1", results=[done], seq=1, want_ack=True))
        assert next(acks).seq == 1 and servicer.store.row(job).state == "finished"
        requests.put(pb.ReportRequest(node_id="n1", results=[done], seq=2))  # sent again; no ack asked
        requests.put(pb.ReportRequest(node_id="n1", seq=3, want_ack=True))  # asked: it covers 2 as well
        assert next(acks).seq == 3
        requests.put(None)
        assert list(acks) == []
        assert [r.value for r in client.get_results([job], timeout_s=0)] == [b"v"]
        assert client.cluster_state().nodes[0].running == 0


def test_a_reopened_work_stream_replaces_the_old_one_and_sends_the_nodes_work_again(head):
    """An agent whose stream broke opens another: the head stops feeding the old one (an assignment
    yielded into a broken stream could be lost) and first sends again what the node is counted to run."""
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)
        first = client.work_stream("n1")
        (a,) = client.submit_many([pb.WorkSpec(kind="job", name="a", command="sleep 60",
                                               request=pb.Resources(amounts={"CPU": 1.0}))])
        assert [x.item_id for x in next(first).items] == [a]
        second = client.work_stream("n1")
        assert [x.item_id for x in next(second).items] == [a]  # sent again, with its spec
        (b,) = client.submit_many([pb.WorkSpec(kind="job", name="b", command="sleep 60",
                                               request=pb.Resources(amounts={"CPU": 1.0}))])
        got = next(second).items
        assert [x.item_id for x in got] == [b] and got[0].spec.command == "sleep 60"
        first.cancel()
        second.cancel()
        assert servicer.nodes["n1"].outbox.items == collections.deque()


def test_an_agent_ignores_work_it_has_or_ran_when_it_is_sent_again(tmp_path, monkeypatch):
    from runtime.executor import Executor
    from tests.infra import wait_for

    monkeypatch.setenv("HOME", str(tmp_path))
    reports = []
    ex = Executor("n1", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, lambda r, a: reports.append((r.id, a)),
                  lambda *a: None, total={"CPU": 1.0})
    job = lambda item_id, attempt=0: pb.Assignment(  # noqa: E731
        item_id=item_id, attempt=attempt,
        spec=pb.WorkSpec(kind="job", command="sleep 0.2", request=pb.Resources(amounts={"CPU": 1.0})))
    ex.handle(job("j1"))
    ex.handle(job("j2"))  # waits for the CPU
    ex.handle(job("j1"))
    ex.handle(job("j2"))
    assert ex.in_flight() == [("j1", 0), ("j2", 0)]
    ex.revoke("j2")  # given back unstarted: the head may send the same attempt again, and it counts
    ex.handle(job("j2"))
    wait_for(lambda: len(reports) == 3, timeout=10, what="j1 done, j2 revoked then done")
    ex.handle(job("j1"))  # ran already: not again
    ex.handle(job("j1", attempt=1))  # a new attempt is new work
    wait_for(lambda: len(reports) == 4, timeout=10, what="the new attempt done")
    assert sorted(reports) == [("j1", 0), ("j1", 1), ("j2", 0), ("j2", 0)] and ex.in_flight() == []


def test_an_agent_asks_for_a_report_ack_only_while_busy_or_when_many_or_idle(tmp_path, monkeypatch):
    """An ack is a message each way on a task's round trip: an agent with nothing else running sends its
    report without asking for one. It asks while other work runs (the next report waits for the ack and
    batches what finishes meanwhile), once STREAM_UNACKED are unacknowledged, and, with nothing to send,
    after STREAM_IDLE_ACK_S (an empty message), so the results it keeps for a head restart stay few."""
    import runtime.agent
    from runtime.agent import Agent

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(runtime.agent, "STREAM_UNACKED", 3)
    monkeypatch.setattr(runtime.agent, "STREAM_IDLE_ACK_S", 0.05)
    cfg = NodeRuntimeConfig(node_id="n1", node_type="cpu", is_head=False, token=TOKEN, address="127.0.0.1",
                            resources={"CPU": 2})
    agent = Agent(cfg, "127.0.0.1:1")  # never connected: the stream's messages are read here
    busy = [False]
    monkeypatch.setattr(agent.executor, "busy", lambda: busy[0])
    agent.stream_id = 1
    messages = agent._stream_requests(1)
    result = lambda i: pb.ItemResult(id=f"t-{i}", state="finished")  # noqa: E731

    def acked(seq: int) -> None:  # what the ack of `seq` does
        agent.stream_inflight = {s: v for s, v in agent.stream_inflight.items() if s > seq}
        agent.reports, agent.stream_awaiting = [], 0

    agent._report(result(1), 0)
    agent._report(result(2), 0)
    m = next(messages)
    assert [r.id for r in m.results] == ["t-1", "t-2"] and not m.want_ack  # idle: no ack asked
    agent._report(result(3), 0)
    assert not next(messages).want_ack and agent.stream_awaiting == 0
    agent._report(result(4), 0)
    m = next(messages)  # the third unacknowledged: asks, and the next message waits for its ack
    assert m.want_ack and agent.stream_awaiting == m.seq
    assert [r.id for r, _ in agent.reports] == ["t-1", "t-2", "t-3", "t-4"]  # kept until acknowledged
    acked(m.seq)
    busy[0] = True
    agent._report(result(5), 0)
    m = next(messages)
    assert m.want_ack and len(agent.stream_inflight) == 1  # other work runs here: asks
    acked(m.seq)
    busy[0] = False
    agent._report(result(6), 0)
    m = next(messages)
    assert not m.want_ack
    idle = next(messages)  # nothing to send for STREAM_IDLE_ACK_S, one unacknowledged: an empty ask
    assert idle.want_ack and not idle.results and idle.seq == m.seq + 1
    agent.executor.shutdown()


def _task(item_id: str, fn, *args) -> pb.Assignment:
    import cloudpickle

    payload = cloudpickle.dumps((cloudpickle.dumps(fn), args, {}))
    return pb.Assignment(item_id=item_id, spec=pb.WorkSpec(kind="task", payload=payload,
                                                           request=pb.Resources(amounts={"CPU": 1.0})))


def test_a_task_goes_to_an_idle_worker_at_once_and_its_death_or_cancel_is_still_reported(tmp_path, monkeypatch):
    """A small task whose inputs came with it is written to an idle worker by the thread that takes it in
    (its own thread then only waits for the result): a cancel, or a worker that dies under it, is
    reported as when its thread does it all, and the next task gets a new worker."""
    import os
    import signal
    import sys
    import time

    import cloudpickle

    from runtime.executor import Executor
    from runtime.processes import Worker
    from tests.infra import wait_for

    monkeypatch.setenv("HOME", str(tmp_path))
    reports = {}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    ex = Executor("n1", env, lambda r, a: reports.__setitem__(r.id, r), lambda *a: None, total={"CPU": 1.0})

    def run(item_id: str, fn, *args, sent_at_once: bool = True) -> None:
        ex.handle(_task(item_id, fn, *args))
        if sent_at_once:  # with its worker before handle() returned
            assert isinstance(ex.running[item_id][1], Worker)

    try:
        run("t-1", lambda: 1, sent_at_once=False)  # no idle worker yet: its thread starts one
        wait_for(lambda: "t-1" in reports, timeout=30, what="the first task")
        run("t-2", time.sleep, 60)
        ex.handle(pb.Assignment(item_id="t-2", cancel=True))
        wait_for(lambda: "t-2" in reports, timeout=30, what="the cancelled task's report")
        run("t-3", lambda: 3, sent_at_once=False)  # the cancel took its worker: a new one
        wait_for(lambda: "t-3" in reports, timeout=30, what="a task after the cancel")
        run("t-4", lambda: os.kill(os.getpid(), signal.SIGKILL))
        wait_for(lambda: "t-4" in reports, timeout=30, what="the report of a task whose worker died")
        run("t-5", lambda: 5, sent_at_once=False)
        wait_for(lambda: "t-5" in reports, timeout=30, what="a task after the worker's death")
    finally:
        ex.shutdown()
    assert reports["t-2"].state == "cancelled" and reports["t-4"].state == "lost"
    assert "worker process died" in reports["t-4"].message
    assert [cloudpickle.loads(reports[i].value) for i in ("t-1", "t-3", "t-5")] == [1, 3, 5]


def test_ids_given_after_a_head_restart_are_new_ones(tmp_path):
    """A restarted head goes on from the last id it gave: three jobs before, five after, eight ids, and
    the first three keep their records (ids are never given twice, also once retention removed items)."""
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0)
    jobs = [pb.WorkSpec(kind="job", name=f"j{i}", command="true", request=pb.Resources(amounts={"CPU": 1.0}))
            for i in range(5)]
    server, _, port = serve(cfg, state_dir=tmp_path)
    with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
        _register(client)
        first = client.submit_many(jobs[:3])
        client.report("n1", [pb.ItemResult(id=first[0], state="finished")])
    server.stop(grace=0)
    server, servicer, port = serve(cfg, state_dir=tmp_path)
    try:
        with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
            later = client.submit_many(jobs)
        assert len(set(first + later)) == 8
        assert servicer.store.row(first[0]).state == "finished" and servicer.store.row(first[0]).name == "j0"
        assert [servicer.store.row(i).name for i in later] == [f"j{i}" for i in range(5)]
    finally:
        server.stop(grace=0)
    servicer.store.db.execute("DELETE FROM counters")  # a store of a version that kept no counter
    server, servicer, port = serve(cfg, state_dir=tmp_path)
    try:
        with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
            (again,) = client.submit_many(jobs[:1])
        assert again not in set(first + later)
    finally:
        server.stop(grace=0)


def test_get_wait_or_cancel_of_an_id_the_head_does_not_know_is_one_clear_error(head):
    import runtime

    address, _ = head
    runtime.init(address=address, token=TOKEN)
    try:
        stranger = runtime.ObjectRef("t-00000099")
        for call in (lambda: runtime.get(stranger, timeout=1), lambda: runtime.wait([stranger], timeout=1),
                     lambda: runtime.cancel(stranger)):
            with pytest.raises(ValueError, match=r"^unknown id t-00000099: no task, actor or job of this cluster"):
                call()
    finally:
        runtime.shutdown()


@pytest.fixture
def small_disk_head(tmpfs):
    """A head whose state lives on a small disk of its own (a real 4 MiB tmpfs), and a way to fill it."""
    from tests.infra import fill_disk

    fs = tmpfs("size=4m")
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0)
    server, servicer, port = serve(cfg, state_dir=fs / "state")
    try:
        yield f"127.0.0.1:{port}", servicer, lambda: fill_disk(fs)
    finally:
        server.stop(grace=0)
        servicer.store.close()


def test_a_full_disk_refuses_new_work_in_one_line_and_the_head_serves_on_and_recovers(small_disk_head):
    """The head's disk fills: new work is refused, saying why; the head keeps answering (state,
    heartbeats); a result reported meanwhile is kept and stored once there is room again."""
    address, servicer, fill = small_disk_head
    job = pb.WorkSpec(kind="job", name="j", command="true", request=pb.Resources(amounts={"CPU": 1.0}))
    with HeadClient(address, TOKEN) as client:
        _register(client)
        (first,) = client.submit_many([job])
        filler = fill()
        with pytest.raises(grpc.RpcError) as e:
            client.submit_many([job])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details().startswith("the head cannot store new work (database or disk is full")
        assert [n.node_id for n in client.cluster_state().nodes] == ["n1"]  # it answers
        assert client.heartbeat(pb.HeartbeatRequest(node_id="n1")).known
        with pytest.raises(grpc.RpcError):  # not acknowledged: the agent would send it again
            client.report("n1", [pb.ItemResult(id=first, state="finished")])
        filler.unlink()  # room again
        servicer.retry_store()  # (the head's clock does this every tick)
        assert servicer.store.row(first).state == "finished"
        (later,) = client.submit_many([job])
        assert servicer.store.row(later).state in ("queued", "running")


def test_work_placed_while_the_disk_is_full_reaches_its_node_once_there_is_room(small_disk_head):
    """A result frees a node while the disk is full: the queued job placed there cannot be stored as
    placed, so it is not handed out yet; once the store is written again it reaches the node (it is not
    left counted on a node that never heard of it)."""
    address, servicer, fill = small_disk_head
    job = pb.WorkSpec(kind="job", name="j", command="sleep 60", request=pb.Resources(amounts={"CPU": 2.0}))
    with HeadClient(address, TOKEN) as client:
        _register(client)
        stream = client.work_stream("n1")
        a, b = client.submit_many([job, job])
        assert [x.item_id for x in next(stream).items] == [a]
        filler = fill()
        with pytest.raises(grpc.RpcError):  # not acknowledged: the agent would send it again
            client.report("n1", [pb.ItemResult(id=a, state="finished")])
        assert servicer.sched.items[b].node_id == "n1" and not servicer.nodes["n1"].outbox.items
        assert [x.item_id for _, x in servicer.unsent] == [b]  # held back, not sent
        filler.unlink()
        servicer.retry_store()
        assert servicer.unsent == [] and [x.item_id for x in next(stream).items] == [b]
        assert servicer.store.row(b).state == "running"
        stream.cancel()


def test_a_program_submitting_while_the_disk_is_full_waits_for_room_and_loses_nothing(small_disk_head,
                                                                                        monkeypatch):
    """`f.remote()` while the head refuses new work for a full disk: the client sends the batch again
    with a backoff (the head stored none of it) instead of failing the program; once there is room the
    work is accepted, once."""
    import runtime
    from runtime.api import _connection
    from tests.infra import wait_for

    address, servicer, fill = small_disk_head
    runtime.init(address=address, token=TOKEN)
    try:
        client = _connection().client
        sends = collections.Counter()
        submit_many = client.submit_many

        def counted(specs, ids=None, released=None):
            sends["calls"] += 1
            return submit_many(specs, ids, released)

        monkeypatch.setattr(client, "submit_many", counted)
        filler = fill()
        refs = [runtime.remote(lambda i: i).remote(i) for i in range(3)]
        wait_for(lambda: sends["calls"] >= 3, timeout=30, what="the batch sent again while the disk is full")
        assert not servicer.store.known([r.id for r in refs])
        filler.unlink()
        servicer.retry_store()
        _connection().flush()  # raises if the submission was refused for good
        assert [servicer.store.row(r.id).state for r in refs] == ["infeasible"] * 3  # (no node yet), accepted
    finally:
        runtime.shutdown()


def test_past_the_waiting_limit_gets_are_told_to_ask_again_and_heartbeats_never_wait(head, monkeypatch):
    """More blocking gets than the head lets wait (MAX_WAITING_GETS, lowered here): the rest are answered
    at once, busy, and their clients ask again with a backoff; heartbeats are answered at once all along,
    and every get completes when its job does."""
    import runtime.head_results as head_results
    from tests.infra import wait_for

    monkeypatch.setattr(head_results, "MAX_WAITING_GETS", 4)
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        job, got, threads = _gets_of_a_running_job(client, 40, timeout_s=60)
        wait_for(lambda: servicer.waiting_gets == 4, timeout=30, what="4 gets waiting")
        with HeadClient(address, TOKEN, timeout_s=5) as node:  # answered, not queued behind the waiting gets
            for _ in range(5):
                assert node.heartbeat(pb.HeartbeatRequest(node_id="n1")).known
                assert servicer.waiting_gets <= 4
        client.report("n1", [pb.ItemResult(id=job, state="finished")])
        for t in threads:
            t.join(timeout=30)
        assert got == [1] * 40 and servicer.waiters == {} and servicer.waiting_gets == 0


def test_a_client_on_the_heads_disk_reads_and_writes_payloads_as_files(tmp_path):
    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0)
    server, _, port = serve(cfg, state_dir=tmp_path)
    with HeadClient(f"127.0.0.1:{port}", TOKEN) as client, HeadClient(f"127.0.0.1:{port}", TOKEN) as elsewhere:
        assert client.shared_blobs() == tmp_path / "blobs"
        (tmp_path / "blobs" / "res.r-1").write_bytes(b"a result")
        # a client that does not find the head's key where the head says it is streams over gRPC instead
        key = tmp_path / "blobs" / ".key"
        real = key.read_text()
        key.write_text("not the head's")
        assert elsewhere.shared_blobs() is None
        key.write_text(real)
        assert elsewhere.fetch_result("r-1") == b"a result"
        server.stop(grace=0).wait(30)
        # the head is gone: what the first client reads and writes now can only be files
        assert client.fetch_result("r-1") == b"a result"
        client.upload_args("t-fresh", b"a payload", fresh=True)
        assert (tmp_path / "blobs" / "arg.t-fresh").read_bytes() == b"a payload"
        assert oct((tmp_path / "blobs" / "arg.t-fresh").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(grpc.RpcError):  # an id of the caller's goes through the head, which is gone
            client.upload_args("t-given", b"a payload")


def test_a_value_a_ref_still_holds_outlives_its_retention_and_goes_once_let_go(tmp_path, monkeypatch):
    """As on Ray, a value stays while a ref to it lives: each process sends its live refs' ids (the
    holding thread's renewal, run here at once), and the head keeps those values HOLD_S more."""
    import gc
    import time

    import runtime.api
    from runtime import holding
    from runtime.limits import HOLD_S, RETAIN_UNFETCHED_S
    from runtime.store import Store

    cfg = NodeRuntimeConfig(node_id="h", node_type="head", is_head=True, token=TOKEN, address="127.0.0.1",
                            bind_host="127.0.0.1", head_port=0)
    server, servicer, port = serve(cfg, state_dir=tmp_path)
    try:
        with HeadClient(f"127.0.0.1:{port}", TOKEN) as client:
            kept, dropped = client.submit_many([pb.WorkSpec(kind="object", name="put", payload=b"v")] * 2)
            ref = runtime.api.ObjectRef(kept)
            other = runtime.api.ObjectRef(dropped)
            del other
            gc.collect()
            assert kept in holding.held_ids() and dropped not in holding.held_ids()
            holding.renew(client)
            with pytest.raises(grpc.RpcError) as e:  # a bad id is refused by name
                client.hold(["../etc/passwd"])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=0).wait(30)
    store = Store(tmp_path)
    (held,) = store.db.execute("SELECT id, until FROM held").fetchall()  # what the head was told
    assert held[0] == kept and abs(held[1] - (time.time() + HOLD_S)) < 60
    later = time.time() + RETAIN_UNFETCHED_S + 1  # both past their retention, the live ref renewed since
    store.hold([kept], later + 10)
    assert store.sweep(later) == 1  # the other one
    assert set(store.results([kept, dropped])) == {kept}
    assert store.sweep(later + 20) == 1  # let go of (no renewal): gone once its hold ran out
    del ref


def test_a_preemption_notice_in_a_heartbeat_drains_the_node_and_makes_its_work_demand(head):
    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        _register(client)  # 2 CPUs
        (job,) = client.submit_many([_job(2.0)])
        wait_for(lambda: servicer.sched.items[job].node_id == "n1", timeout=30, what="the job placed on n1")
        seen = client.watch_demand("", timeout_s=30)
        assert list(seen.demand) == []
        client.heartbeat(pb.HeartbeatRequest(node_id="n1", preempt_at=1e10, preempt_reason="spot terminate at T"))
        (node,) = client.cluster_state().nodes
        assert node.draining and (node.preempt_at, node.preempt_reason) == (1e10, "spot terminate at T")
        # what it runs needs a new home: demand now, which the autoscaler's watch hears at once
        reply = client.watch_demand(seen.fingerprint, timeout_s=30)
        assert [(dict(d.shape.amounts), d.count) for d in reply.demand] == [({"CPU": 2.0}, 1)]
        # no new work lands on it
        (other,) = client.submit_many([_job(1.0)])
        assert servicer.sched.items[other].node_id == ""


def test_a_large_cluster_beats_less_often_and_is_given_the_time_to(head):
    """Past HEARTBEATS_PER_S nodes' worth at the configured interval, the head tells every node to beat
    less often (a register and each heartbeat say the interval) and waits as many beats before it
    declares one dead (as many beats as configured): the head's heartbeat load stays bounded.""" 
    import time

    from runtime.head_nodes import HEARTBEATS_PER_S

    address, servicer = head
    with HeadClient(address, TOKEN) as client:
        n = int(HEARTBEATS_PER_S * 2.5)  # 500 nodes at the 1 s default
        for i in range(n):
            _register(client, f"n{i}")
        servicer.mark_dead_nodes()  # (the housekeeping paces them)
        reply = client.heartbeat(pb.HeartbeatRequest(node_id="n0"))
        assert reply.known and reply.heartbeat_interval_s == pytest.approx(2.5)
        assert _register(client, "late").heartbeat_interval_s == pytest.approx(2.5)
        now = servicer.nodes["n0"].last_heartbeat
        beats = servicer.node_timeout_s / servicer.heartbeat_interval_s  # as many beats missed as configured
        servicer.clock = lambda: now + beats * 2.5 - 0.2  # fewer: alive (nodes silent since registering go)
        assert "n0" not in servicer.mark_dead_nodes()
        servicer.clock = lambda: now + beats * 2.5 + 0.2
        assert "n0" in servicer.mark_dead_nodes()
        servicer.clock = time.time


def test_a_call_made_straight_is_recorded_once_whether_its_node_or_its_caller_tells_first(head):
    """A call sent straight to its actor's node (runtime/direct.py) reaches the head twice: in its node's report
    (with what it was) and from its caller before its ref leaves that process. Either may come first; the
    first is recorded, the second changes nothing; a task may then depend on it."""
    address, _ = head
    with HeadClient(address, TOKEN) as c:
        _register(c)
        actor = c.submit_many([pb.WorkSpec(kind="actor", name="A", payload=b"x")], ["a-1"])[0]
        spec = pb.WorkSpec(kind="call", name="A.f", actor_id=actor)
        first = pb.ItemResult(id="c-1", state="finished", value=b"one", node_id="n1", direct=spec)
        c.report("n1", [first])
        c.submit_many([pb.WorkSpec(kind="call", name="A.f", actor_id=actor,
                                   outcome=pb.ItemResult(id="c-1", state="finished", value=b"other"))], ["c-1"])
        c.submit_many([pb.WorkSpec(kind="call", name="A.f", actor_id=actor,
                                   outcome=pb.ItemResult(id="c-2", state="failed", message="its actor died"))], ["c-2"])
        c.report("n1", [pb.ItemResult(id="c-2", state="finished", value=b"late", node_id="n1", direct=spec)])
        done = {r.id: r for r in c.get_results(["c-1", "c-2"], timeout_s=5)}
        assert done["c-1"].value == b"one" and done["c-2"].state == "failed"
        calls = {i.id: i for i in c.list_items("call")}
        assert calls["c-1"].state == "finished" and calls["c-1"].node_id == "n1" and calls["c-2"].state == "failed"
        with pytest.raises(grpc.RpcError) as e:  # the id is taken: a submission of it as new work is refused
            c.submit_many([pb.WorkSpec(kind="call", name="A.f", actor_id=actor)], ["c-1"])
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # an outcome without the call's own id, or on anything but a call, is refused by name (not run as new work)
        for spec, ids in ((pb.WorkSpec(kind="call", name="A.f", actor_id=actor,
                                       outcome=pb.ItemResult(id="c-3", state="finished")), None),
                          (pb.WorkSpec(kind="task", name="t", outcome=pb.ItemResult(id="t-9", state="finished")),
                           ["t-9"])):
            with pytest.raises(grpc.RpcError) as e:
                c.submit_many([spec], ids)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outcome" in e.value.details()
        assert "c-3" not in {i.id for i in c.list_items("call")}


def test_an_agent_tells_a_straight_call_it_refuses_whether_its_actor_instance_is_over_or_not_there_yet(
        tmp_path, monkeypatch):
    """A call sent straight to a node (runtime/direct.py) names an actor instance. Not there yet (the head placed
    it a moment ago): refused, not over (its caller sends it by the head to that instance); there: run and
    answered; ended: refused, over (sent on to the next instance)."""
    import cloudpickle

    from runtime import pickling
    from runtime.executor import Executor
    from tests.infra import wait_for

    class Tally:  # (defined here: pickled by value, as a program's own class is)
        def __init__(self):
            self.n = 0

        def add(self):
            self.n += 1
            return self.n

    monkeypatch.setenv("HOME", str(tmp_path))
    ex = Executor("n1", dict(os.environ, HOME=str(tmp_path)), lambda r, a: None, lambda *a: None, total={"CPU": 1.0})
    replies = []
    call = lambda i: pb.CallRequest(id=f"c-{i}", actor_attempt=0, spec=pb.WorkSpec(  # noqa: E731
        kind="call", actor_id="a-1", payload=pickling.dumps(("add", (), {}))))
    try:
        ex.take_direct(call(1), replies.append)
        ex.handle(pb.Assignment(item_id="a-1", attempt=0, spec=pb.WorkSpec(
            kind="actor", payload=pickling.dumps((pickling.dumps((Tally, {"max_concurrency": None})), (), {})))))
        ex.take_direct(call(2), replies.append)
        wait_for(lambda: len(replies) == 2, timeout=30, what="the call answered")
        ex.cancel("a-1")  # killed
        wait_for(lambda: "a-1" in ex.actors_ended, timeout=30, what="the instance over")
        ex.take_direct(call(3), replies.append)
        outcomes = [(r.id, r.outcome, r.result.message) for r in replies]
        assert outcomes == [("c-1", "refused", ""), ("c-2", "done", ""), ("c-3", "refused", "over")]
        assert cloudpickle.loads(replies[1].result.value) == 1
    finally:
        ex.shutdown()


def test_an_actor_of_one_call_at_a_time_has_its_calls_sent_ahead_and_a_cancel_or_its_death_spares_those_not_started(
        tmp_path, monkeypatch):
    """Calls of an actor that runs one at a time go to its process ahead of their turn (runtime/worker.py runs
    them in order). A cancel of one that has not started is answered at once, while the call before it still
    runs, and it never runs; a cancel of the running one changes nothing. When its process dies, the call it
    was running died with it; those sent ahead never ran: refused, for their callers to send on."""
    import cloudpickle

    from runtime import pickling
    from runtime.executor import Executor
    from tests.infra import wait_for

    class Slow:  # (defined here: pickled by value, as a program's own class is)
        def __init__(self):
            self.ran = []

        def work(self, name, gate=None):
            import os as os_
            import time as time_

            while gate is not None and not os_.path.exists(gate):
                time_.sleep(0.01)
            self.ran.append(name)
            return list(self.ran)

    monkeypatch.setenv("HOME", str(tmp_path))
    reports, replies = {}, {}
    ex = Executor("n1", dict(os.environ, HOME=str(tmp_path)), lambda r, a: reports.__setitem__(r.id, r),
                  lambda *a: None, total={"CPU": 2.0})
    actor = lambda item_id: pb.Assignment(item_id=item_id, attempt=0, spec=pb.WorkSpec(  # noqa: E731
        kind="actor", payload=pickling.dumps((pickling.dumps((Slow, {"max_concurrency": None})), (), {}))))
    work = lambda *args: pickling.dumps(("work", args, {}))  # noqa: E731
    gate = tmp_path / "go"
    try:
        ex.handle(actor("a-1"))
        for i, args in enumerate([("slow", str(gate)), ("b",), ("c",), ("d",)], start=1):
            ex.handle(pb.Assignment(item_id=f"c-{i}", attempt=0, spec=pb.WorkSpec(
                kind="call", actor_id="a-1", payload=work(*args))))
        wait_for(lambda: "a-1" in ex.actors and len(ex.actors["a-1"].running) == 4, timeout=30,
                 what="the four calls in the actor's process")
        ex.cancel("c-3")
        ex.cancel("c-1")  # (running: runs to its end)
        wait_for(lambda: "c-3" in reports, timeout=30, what="the cancel answered")
        assert reports["c-3"].state == "cancelled" and "c-1" not in reports
        gate.touch()
        wait_for(lambda: {"c-1", "c-2", "c-4"} <= set(reports), timeout=30, what="the other calls")
        assert [cloudpickle.loads(reports[f"c-{i}"].value) for i in (1, 2, 4)] == [
            ["slow"], ["slow", "b"], ["slow", "b", "d"]]

        ex.handle(actor("a-2"))
        gate.unlink()
        for i, args in enumerate([("stuck", str(gate)), ("x",), ("y",)], start=1):
            ex.take_direct(pb.CallRequest(id=f"d-{i}", actor_attempt=0, spec=pb.WorkSpec(
                kind="call", actor_id="a-2", payload=work(*args))), lambda r: replies.__setitem__(r.id, r))
        wait_for(lambda: "a-2" in ex.actors and len(ex.actors["a-2"].running) == 3, timeout=30,
                 what="the three calls in the actor's process")
        os.kill(ex.actors["a-2"].worker.proc.pid, 9)
        wait_for(lambda: len(replies) == 3, timeout=30, what="the three calls' outcomes")
        assert [(replies[f"d-{i}"].outcome, replies[f"d-{i}"].result.message) for i in (1, 2, 3)] == [
            ("died", "died"), ("refused", "over"), ("refused", "over")]
    finally:
        ex.shutdown()


def test_an_actor_ends_only_once_the_replies_its_dead_process_wrote_are_read(tmp_path, monkeypatch):
    """An in-turn actor's process answers one call, starts the next and is killed, while the agent has not yet
    read the answer (its reading thread held back here). The actor's end waits for that answer: the answered
    call is done, the one running died with the process, the one after it never ran (refused). Ending it first
    took the answered call for the running one and the running one for one never started, which then ran
    twice (found by killing an actor 30 times under 6,000 calls)."""
    import threading

    import cloudpickle

    from runtime import pickling
    from runtime.executor import Executor
    from tests.infra import wait_for

    class Steps:  # (defined here: pickled by value, as a program's own class is)
        def step(self, name, marker=None):
            import time as time_

            if marker is not None:
                open(marker, "w").close()
                time_.sleep(60)
            return name

    monkeypatch.setenv("HOME", str(tmp_path))
    replies = {}
    ex = Executor("n1", dict(os.environ, HOME=str(tmp_path)), lambda r, a: None, lambda *a: None, total={"CPU": 1.0})
    marker = tmp_path / "started"
    try:
        ex.handle(pb.Assignment(item_id="a-1", attempt=0, spec=pb.WorkSpec(
            kind="actor", payload=pickling.dumps((pickling.dumps((Steps, {"max_concurrency": None})), (), {})))))
        wait_for(lambda: "a-1" in ex.actors and ex.actors["a-1"].in_turn, timeout=30, what="the actor made")
        worker = ex.actors["a-1"].worker
        read_on, deciding, read_all = threading.Event(), threading.Event(), threading.Event()
        receive, exit_code, end_actor = worker.receive, worker.exit_code, ex._end_actor
        ended_after_reading = []

        def held_receive():
            read_on.wait(30)
            try:
                return receive()
            except Exception:
                read_all.set()  # (the pipe's end: every reply read)
                raise

        def end(a, result):
            ended_after_reading.append(read_all.is_set())
            end_actor(a, result)

        monkeypatch.setattr(worker, "receive", held_receive)
        monkeypatch.setattr(worker, "exit_code", lambda *a: (deciding.set(), exit_code(*a))[1])
        monkeypatch.setattr(ex, "_end_actor", end)
        for i, args in enumerate([("answered",), ("running", str(marker)), ("never",)], start=1):
            ex.take_direct(pb.CallRequest(id=f"d-{i}", actor_attempt=0, spec=pb.WorkSpec(
                kind="call", actor_id="a-1", payload=pickling.dumps(("step", args, {})))),
                lambda r: replies.__setitem__(r.id, r))
        wait_for(marker.exists, timeout=30, what="the second call started (the first answered, unread)")
        os.kill(worker.proc.pid, 9)
        assert deciding.wait(30)  # the agent saw the process gone
        read_on.set()
        wait_for(lambda: len(replies) == 3, timeout=30, what="the three calls' outcomes")
        assert ended_after_reading == [True]
        assert [replies[f"d-{i}"].outcome for i in (1, 2, 3)] == ["done", "died", "refused"]
        assert cloudpickle.loads(replies["d-1"].result.value) == "answered"
    finally:
        ex.shutdown()
