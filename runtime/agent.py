"""The node agent: registers its node's resources with the head, heartbeats, and runs assigned work.

Work arrives over a stream the agent opens to the head (the agent needs no open port). If the head
forgets the node (a head restart) the agent registers again; if the head is unreachable it keeps
retrying with capped backoff, so a worker started before its head catches up.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

import grpc

from core.machine import pids_with_env
from core.files import atomic_write
from core.paths import HEAD_ADDRESS, NODE_MARKER_ENV, PREEMPT_NOTICE, is_head_bundle_site, on_this_node
from runtime.agent_calls import serve_calls
from runtime.auth import work_token
from runtime.client import HeadClient
from runtime.direct import enabled as direct_calls_enabled
from runtime.executor import Executor
from runtime.limits import MAX_REPLY_BYTES
from runtime.node import single_instance
from runtime.node_config import NodeRuntimeConfig
from runtime.notices import NOTICE_POLL_S, watcher
from runtime.preemption import PREEMPT_FILE_ENV
from runtime.processes import died_of_signal, discard_results
from runtime.proto import head_pb2 as pb
from runtime.resources import detect_gpus, node_resources
from runtime.work import DIRECT_ATTEMPT

log = logging.getLogger("launch.runtime.agent")

REPORT_BATCH = 1000
# A report message asks for the head's acknowledgement while the node is busy: the next one waits for it,
# and what finishes meanwhile goes in that one, together (more messages in flight made smaller batches,
# measured slower). A node that has nothing else running sends its report without asking (an ack is a
# message each way, on the round trip's CPUs) and asks only once this many are unacknowledged, or after
# STREAM_IDLE_ACK_S with nothing to send: the results it keeps for a head restart stay few.
STREAM_UNACKED = 64
STREAM_IDLE_ACK_S = 1.0
# A machine shutting down signals every process at once: a worker may die, and be reported, before this
# agent hears of it. A process death by a signal waits this long for the agent's own stop: then it is not
# reported, and the head counts the node's death once (a restart of an actor put back on a dying node, or a
# retry, would be spent on it otherwise).
SHUTDOWN_GRACE_S = 2.0
# Calls sent straight here (runtime/direct.py) are reported to the head this long after the first of a batch:
# their callers have their outcomes already, so the head records many in one transaction, not one each (its
# CPU is the callers' and the actors' too)
DIRECT_REPORT_DELAY_S = 0.05


class Agent:
    def __init__(self, cfg: NodeRuntimeConfig, head_address: str):
        self.cfg = cfg
        self.client = HeadClient(head_address, cfg.token, timeout_s=10.0, streams_on_caller=True)
        self.total = node_resources(cfg.resources)
        detected = [g["index"] for g in detect_gpus()]
        self.gpu_ids = detected if len(detected) >= int(self.total.get("GPU", 0)) else []
        self.interval = cfg.heartbeat_interval_s
        self.stop = threading.Event()
        self.notice = None  # the cloud's preemption notice, once one came (notice_loop)
        self.registered = threading.Event()
        self.ever_registered = False
        # The node's marker stays: every process the node runs, jobs and tasks too, goes with the node.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_") or k == NODE_MARKER_ENV}
        # What this agent starts carries its run's mark: work a killed agent left is ended by the next one
        self.run_mark = f"{cfg.node_id}.{secrets.token_hex(6)}"
        env[AGENT_RUN_ENV] = self.run_mark
        end_orphaned_work(cfg.node_id)
        discard_results()
        # Work on the node can submit more work: it finds the head and a credential in its environment,
        # the work credential, which cannot register nodes, drain them, or take work as an agent.
        env.update({"LAUNCH_HEAD_ADDRESS": head_address, "LAUNCH_CLUSTER_TOKEN": work_token(cfg.token),
                    "LAUNCH_NODE_ID": cfg.node_id, "LAUNCH_PYTHON": sys.executable})
        # where a preemption notice is written for the work (runtime/preemption.py); none there until then
        self.preempt_file = on_this_node(PREEMPT_NOTICE)
        self.preempt_file.unlink(missing_ok=True)
        env[PREEMPT_FILE_ENV] = str(self.preempt_file)
        # The head's control plane (its cloud SDK, paramiko, pydantic) is not the work's: tasks and jobs see
        # the runtime's own site and the node's packages, never the head bundle's (its cryptography would
        # shadow the image's own).
        path = [p for p in env.get("PYTHONPATH", "").split(":") if p and not is_head_bundle_site(p)]
        env.pop("PYTHONPATH", None)
        if path:
            env["PYTHONPATH"] = ":".join(path)
        self.executor = Executor(cfg.node_id, env, self._report, self._ship_log, total=self.total, head=self)
        # results not yet taken by the head, (result, attempt): sent in batches, kept until the head has them
        self.reports: list[tuple[pb.ItemResult, int]] = []
        lock = threading.RLock()
        self.reports_cond = threading.Condition(lock)  # report_loop waits on it
        self.stream_cond = threading.Condition(lock)  # the report stream's sender waits on it
        self.sending = False  # a thread is sending reports: others leave theirs to it
        # the report stream (ReportStream), while it is up: results go as messages on it, no call each
        self.stream_id = 0  # which stream is up (0: none); a new one per (re)open
        self.stream_pending: list[pb.ItemResult] = []  # not yet sent on it
        self.stream_busy = False  # a result among them came while other work ran here: ask for an ack
        self.stream_inflight: dict[int, set[int]] = {}  # seq -> id() of the results it carried, until acked
        self.stream_seq = 0
        self.stream_awaiting = 0  # the seq of a message that asked for an ack not yet come (0: none)
        self.calls_server, self.call_port = None, 0  # actor calls straight from callers (runtime/agent_calls.py)
        self.direct_reports: list[pb.ItemResult] = []  # of those, not yet handed to the reports (direct_loop)

    def register(self) -> None:
        # in this order: an item finishing meanwhile is in what runs (or is being handed over) when that
        # is read, or among the reports when those are; listed once (the head drops what it sees twice)
        in_flight = self.executor.in_flight()
        with self.reports_cond:  # (a call sent straight here is not the head's to adopt: not listed)
            unreported = [(r.id, attempt) for r, attempt in self.reports if not r.HasField("direct")]
        running = list(dict.fromkeys(in_flight + unreported))
        reply = self.client.register(
            pb.RegisterNodeRequest(
                node_id=self.cfg.node_id, node_type=self.cfg.node_type, address=self.cfg.address,
                is_head=self.cfg.is_head, total=pb.Resources(amounts=self.total), labels=self.cfg.labels,
                gpu_ids=self.gpu_ids, running=[pb.RunningItem(id=i, attempt=a) for i, a in running],
                first=not self.ever_registered, call_port=self.call_port,
            )
        )
        self.interval = reply.heartbeat_interval_s or self.interval
        drop = {(d.id, d.attempt) for d in reply.drop}
        if drop:  # the head gave this work to others meanwhile: stop it, report none of it
            with self.reports_cond:
                self.reports = [(r, a) for r, a in self.reports if (r.id, a) not in drop]
                kept = {id(r) for r, _ in self.reports}
                self.stream_pending = [r for r in self.stream_pending if id(r) in kept]
            self.executor.drop(sorted(drop))
            log.warning("the head no longer counts %d item(s) as this node's: dropped them", len(drop))
        self.ever_registered = True
        self.registered.set()
        log.info("registered with the head at %s: %s", self.client.address, self.total)

    def _retrying(self, what: str, fn, attempts: int = 30) -> None:
        delay = 0.1
        for _ in range(attempts):
            try:
                fn()
                return
            except grpc.RpcError as e:
                if self.stop.is_set():
                    return
                log.warning("%s failed (%s); retrying in %.1fs", what, e.code().name, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
        log.error("%s failed %d times; giving up", what, attempts)

    def _report(self, result: pb.ItemResult, attempt: int) -> None:
        """The thread that finished the item sends the report itself unless a send is under way (that
        one takes this result along): no hand-over to another thread on the way to the head."""
        if result.HasField("direct"):  # (a call sent straight: its caller has it; the head, in a while)
            with self.reports_cond:
                self.direct_reports.append(result)
                if len(self.direct_reports) == 1:
                    self.reports_cond.notify_all()  # direct_loop
            return
        signalled = result.state in ("lost", "failed") and died_of_signal(result.exit_code)
        if signalled and self.stop.wait(SHUTDOWN_GRACE_S):
            log.info("%s: its process ended by a signal (exit code %d) as the node stops: not reported",
                     result.id, result.exit_code)
            return
        busy = self.executor.busy()
        with self.reports_cond:
            self.reports.append((result, attempt))
            if self.stream_id:  # the stream's sender takes it (and whatever else is ready) in one message
                self.stream_pending.append(result)
                self.stream_busy = self.stream_busy or busy
                self.stream_cond.notify()
                return
            if self.sending:
                return
            self.sending = True
        if not self._send_reports():
            with self.reports_cond:
                self.reports_cond.notify()  # report_loop retries

    def _send_reports(self) -> bool:
        """(as the one sender) Send batches until none is left. False: the head did not take one; what is
        left stays for report_loop to send again."""
        while True:
            with self.reports_cond:
                batch, size = [], 0
                for r, a in self.reports:  # bounded in count and bytes, like any message
                    size += r.ByteSize()
                    if batch and (len(batch) >= REPORT_BATCH or size > MAX_REPLY_BYTES):
                        break
                    batch.append((r, a))
                if not batch:
                    self.sending = False
                    return True
            try:
                self.client.report(self.cfg.node_id, [r for r, _ in batch])
            except grpc.RpcError as e:
                log.warning("report of %d result(s) failed (%s)", len(batch), e.code().name)
                with self.reports_cond:
                    self.sending = False
                return False
            with self.reports_cond:
                sent = {id(r) for r, _ in batch}
                self.reports = [(r, a) for r, a in self.reports if id(r) not in sent]

    def report_loop(self) -> None:
        """Results the head did not take are sent again (a head restarting takes them when it is back),
        never dropped."""
        backoff = 0.1
        while not self.stop.is_set():
            with self.reports_cond:
                while (not self.reports or self.sending or self.stream_id) and not self.stop.is_set():
                    self.reports_cond.wait(timeout=1.0)
                if self.stop.is_set():
                    return
                self.sending = True
            if self._send_reports():
                backoff = 0.1
            else:
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def direct_loop(self) -> None:
        """Reports of calls sent straight here, DIRECT_REPORT_DELAY_S after the first of each batch, with the
        others (kept as they are until the head has them)."""
        while not self.stop.is_set():
            with self.reports_cond:
                while not self.direct_reports and not self.stop.is_set():
                    self.reports_cond.wait(timeout=1.0)
            if self.stop.wait(DIRECT_REPORT_DELAY_S):  # the batch's window: what finishes meanwhile joins it
                return
            with self.reports_cond:
                batch, self.direct_reports = self.direct_reports, []
                self.reports += [(r, DIRECT_ATTEMPT) for r in batch]
                if self.stream_id:
                    self.stream_pending += batch
                    self.stream_cond.notify()
                elif not self.sending:
                    self.reports_cond.notify_all()  # report_loop sends them

    def report_stream_loop(self) -> None:
        """Keeps a ReportStream open while the node is registered: a result reaches the head as a message
        on it, without a call's setup (a task's round trip is shorter by that). What the head has not
        acknowledged when the stream breaks is sent again (report_loop, then the next stream); the head
        counts a completion once, so a result sent twice is harmless."""
        while not self.stop.is_set():
            if not self.registered.wait(timeout=0.5):
                continue
            with self.reports_cond:
                self.stream_id += 1
                stream_id = self.stream_id
                self.stream_inflight.clear()
                self.stream_awaiting = 0
                self.stream_pending = [r for r, _ in self.reports]  # unacknowledged: sent again
                self.reports_cond.notify_all()
            try:
                for ack in self.client.report_stream(self._stream_requests(stream_id)):
                    with self.reports_cond:  # an ack covers every message up to its seq
                        acked = [s for s in self.stream_inflight if s <= ack.seq]
                        sent = set().union(*(self.stream_inflight.pop(s) for s in acked))
                        self.reports = [(r, a) for r, a in self.reports if id(r) not in sent]
                        if self.stream_awaiting and self.stream_awaiting <= ack.seq:
                            self.stream_awaiting = 0
                            self.stream_cond.notify()
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    log.warning("report stream closed (%s); reports go one call each until it is back", e.code().name)
            finally:
                with self.reports_cond:
                    if self.stream_id == stream_id:
                        self.stream_id = 0
                    self.stream_pending.clear()
                    self.stream_inflight.clear()
                    self.reports_cond.notify_all()  # report_loop sends what is left
                    self.stream_cond.notify_all()
            self.stop.wait(0.5)

    def _stream_requests(self, stream_id: int):
        """The stream's messages: every result ready when the last acknowledgement asked for came, bounded
        like any message; an empty one that asks for an ack when results sent wait for one, idle."""
        while True:
            with self.reports_cond:
                while ((not self.stream_pending or self.stream_awaiting)
                       and self.stream_id == stream_id and not self.stop.is_set()):
                    if not self.stream_cond.wait(timeout=STREAM_IDLE_ACK_S) and self.stream_inflight \
                            and not self.stream_awaiting and not self.stream_pending:
                        break
                if self.stream_id != stream_id or self.stop.is_set():
                    return
                batch, size = [], 0
                for r in self.stream_pending:
                    size += r.ByteSize()
                    if batch and (len(batch) >= REPORT_BATCH or size > MAX_REPLY_BYTES):
                        break
                    batch.append(r)
                self.stream_pending = self.stream_pending[len(batch):]
                self.stream_seq += 1
                self.stream_inflight[self.stream_seq] = {id(r) for r in batch}
                ask = self.stream_busy or not batch or len(self.stream_inflight) >= STREAM_UNACKED
                self.stream_busy = self.stream_busy and bool(self.stream_pending)
                if ask:
                    self.stream_awaiting = self.stream_seq
                request = pb.ReportRequest(node_id=self.cfg.node_id, results=batch, seq=self.stream_seq,
                                           want_ack=ask)
            yield request

    # --- Transfers, for the executor: large payloads and results move in chunks ----------------------

    def fetch_args(self, item_id: str) -> bytes:
        return self.client.fetch_args(item_id)

    def fetch_result(self, item_id: str) -> bytes:
        return self.client.fetch_result(item_id)

    def upload_result(self, item_id: str, source: Path, direct: bool = False) -> None:
        delay = 0.2
        while True:  # the head restarting: wait for it, as reports do
            try:
                return self.client.upload_result(item_id, self.cfg.node_id, source, direct)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or self.stop.is_set():
                    raise
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _ship_log(self, item_id: str, data: bytes) -> None:
        self._retrying(f"log of {item_id}",
                       lambda: self.client.append_log(pb.AppendLogRequest(item_id=item_id, data=data)))

    def heartbeat_loop(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                if not self.registered.is_set():
                    self.register()
                notice = self.notice
                reply = self.client.heartbeat(pb.HeartbeatRequest(
                    node_id=self.cfg.node_id, preempt_at=notice.at if notice else 0.0,
                    preempt_reason=notice.reason if notice else ""))
                if not reply.known:
                    log.warning("the head does not know this node; registering again")
                    self.registered.clear()
                    continue
                self.interval = reply.heartbeat_interval_s or self.interval  # (a large cluster: less often)
                backoff = 0.2
                self.stop.wait(self.interval)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the head refused this node's cluster token")
                elif e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("the head removed this node from the cluster: it takes no work (%s)", e.details())
                else:
                    log.warning("head unreachable (%s); retrying in %.1fs", e.code().name, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def work_loop(self) -> None:
        while not self.stop.is_set():
            if not self.registered.wait(timeout=0.5):
                continue
            try:
                for batch in self.client.work_stream(self.cfg.node_id):
                    for assignment in batch.items:
                        self.executor.handle(assignment)
                    if self.stop.is_set():
                        break
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    log.warning("work stream closed (%s); reopening", e.code().name)
                    self.stop.wait(0.5)

    def notice_loop(self, source) -> None:
        """(a spot node) Asks its cloud's metadata service until a preemption notice comes; then its
        heartbeats carry it (the head drains the node and its work becomes demand: runtime/notices.py)."""
        while not self.stop.wait(NOTICE_POLL_S):
            notice = source.check()
            if notice is not None:
                log.warning("preemption notice from the cloud: %s", notice.reason)
                atomic_write(self.preempt_file, json.dumps({"at": notice.at, "reason": notice.reason}), mode=0o644)
                self.notice = notice
                # the head hears it first: what ends on the node from now on (a hook that saves and exits)
                # is then lost to a preemption, requeued without costing a retry; the replacement starts now
                self._retrying("the preemption notice", lambda: self.client.heartbeat(pb.HeartbeatRequest(
                    node_id=self.cfg.node_id, preempt_at=notice.at, preempt_reason=notice.reason)), attempts=5)
                told = self.executor.preempted()
                log.warning("told %d task, actor and job process(es) of the notice", told)
                break
        else:
            return
        # (Azure) the node says it may go as soon as nothing runs on it: the cloud takes it early, not at the
        # deadline (the head drained it: no new work comes)
        if hasattr(source, "acknowledge"):
            while not self.executor.nothing_runs():
                if self.stop.wait(NOTICE_POLL_S / 4):
                    return
            log.warning("nothing runs here any more: the notice acknowledged (%s)",
                        "done" if source.acknowledge() else "the metadata service did not take it")

    def run(self) -> None:
        if direct_calls_enabled():  # (LAUNCH_DIRECT_CALLS=0: every call goes by the head)
            self.calls_server, self.call_port = serve_calls(self.executor, self.cfg.token, self.cfg.address)
            if self.calls_server is None:
                log.warning("cannot listen for actor calls sent straight here: they go by the head")
        source = watcher(self.cfg.notices)
        if source is not None:
            threading.Thread(target=self.notice_loop, args=(source,), daemon=True, name="notices").start()
        threads = [threading.Thread(target=self.heartbeat_loop, daemon=True, name="heartbeat"),
                   threading.Thread(target=self.work_loop, daemon=True, name="work"),
                   threading.Thread(target=self.report_loop, daemon=True, name="report"),
                   threading.Thread(target=self.report_stream_loop, daemon=True, name="report-stream"),
                   threading.Thread(target=self.direct_loop, daemon=True, name="direct-reports")]
        for t in threads:
            t.start()
        self.stop.wait()
        self.executor.shutdown()
        if self.calls_server is not None:
            self.calls_server.stop(grace=0)
        self.client.close()


AGENT_RUN_ENV = "LAUNCH_AGENT_RUN"


def end_orphaned_work(node_id: str) -> int:
    """(before this agent starts anything) Kill what an earlier agent of this node started and left
    running when it died (kill -9, a crash): the head requeues that work once this agent registers, so it
    must not also run on. Returns how many."""
    orphans = pids_with_env(AGENT_RUN_ENV, f"{node_id}.", prefix=True)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if orphans:
        log.warning("ended %d process(es) an earlier agent of this node left running", len(orphans))
    return len(orphans)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    single_instance("agent")
    cfg = NodeRuntimeConfig.load()
    head_address = cfg.head_address or on_this_node(HEAD_ADDRESS).read_text().strip()
    agent = Agent(cfg, head_address)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    agent.run()
    log.info("agent stopped")


if __name__ == "__main__":
    main()
