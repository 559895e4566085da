"""A spot node's agent reads its cloud's preemption notice (runtime/notices.py) from the instance metadata
service, here the fake of tests/infra/metadata.py served on this machine's loopback."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from runtime.notices import AwsNotices, AzureNotices, GceNotices, watcher
from tests.infra import free_port, wait_for
from tests.infra.metadata import serve_locally


@pytest.fixture
def imds(tmp_path):
    port = free_port()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"cloud": "aws", "role": None}))
    proc = serve_locally(state, tmp_path / "asked.log", port)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/latest/api/token", method="PUT"), timeout=1)
        except urllib.error.HTTPError:
            return True  # (400: no TTL header) it answers
        except OSError:
            return False
        return True

    wait_for(up, timeout=30, every=0.05, what="the fake metadata service")
    yield base, state
    proc.kill()
    proc.wait(timeout=10)


def test_an_aws_spot_notice_is_read_with_an_imdsv2_token_when_ec2_gives_one(imds):
    base, state = imds
    notices = AwsNotices(base)
    assert notices.check() is None  # 404 until EC2 decides
    state.write_text(json.dumps({"role": None, "cloud": "aws", "spot_action": {"action": "terminate", "time": "2030-01-02T03:04:05Z"}}))
    notice = notices.check()
    assert notice is not None and notice.reason == "spot terminate at 2030-01-02T03:04:05Z"
    assert notice.at == 1893553445.0  # 2030-01-02T03:04:05Z, read as UTC
    state.write_text(json.dumps({"cloud": "aws", "rebalance": {"noticeTime": "2030-01-02T03:00:00Z"}}))
    early = notices.check()  # a rebalance recommendation, before any interruption notice: acted on as one
    assert early.reason.startswith("spot rebalance recommendation at 2030-01-02T03:00:00Z")
    assert 100 < early.at - time.time() <= 120
    state.write_text(json.dumps({"cloud": "aws", "spot_action": {"action": "terminate", "time": "2030-01-02T03:04:05Z"}}))
    notices.token = "expired"  # the service refuses it (401): a new token is asked, and the question again
    assert notices.check().reason == "spot terminate at 2030-01-02T03:04:05Z" and notices.token != "expired"


def test_a_notice_without_a_time_is_taken_as_two_minutes_ahead_and_no_service_is_no_notice(imds, tmp_path):
    base, state = imds
    state.write_text(json.dumps({"cloud": "aws", "role": None, "spot_action": {"action": "stop"}}))
    notice = AwsNotices(base).check()
    assert notice.reason == "spot stop at soon" and 100 < notice.at - time.time() <= 120
    assert AwsNotices(f"http://127.0.0.1:{free_port()}").check() is None  # nothing listens there
    assert watcher("aws") is not None and watcher("") is None and watcher("onprem") is None


def test_a_gce_preemption_is_read_from_the_metadata_server_30_s_ahead(imds):
    base, state = imds
    state.write_text(json.dumps({"cloud": "gcp", "preempted": False}))
    notices = GceNotices(base)
    assert notices.check() is None  # "FALSE"
    state.write_text(json.dumps({"cloud": "gcp", "preempted": True}))
    first = notices.check()
    assert first.reason == "spot VM preempted by GCE" and 25 < first.at - time.time() <= 30
    assert notices.check().at == first.at  # the deadline is from when it was first seen
    assert isinstance(watcher("gcp"), GceNotices)


def test_an_azure_preempt_event_for_this_vm_is_a_notice_and_is_acknowledged(imds, tmp_path):
    base, state = imds
    other = {"EventId": "E0", "EventType": "Preempt", "Resources": ["another-vm"], "EventStatus": "Scheduled",
             "NotBefore": "Mon, 07 Jan 2030 03:04:05 GMT"}
    reboot = {**other, "EventId": "E1", "EventType": "Reboot", "Resources": ["vm-7"]}
    state.write_text(json.dumps({"cloud": "azure", "name": "vm-7", "events": [other, reboot]}))
    notices = AzureNotices(base)
    assert notices.check() is None  # another VM's eviction, and maintenance this one survives
    mine = {**other, "EventId": "E2", "Resources": ["vm-7"], "DurationInSeconds": -1}
    state.write_text(json.dumps({"cloud": "azure", "name": "vm-7", "events": [other, mine]}))
    notice = notices.check()
    assert notice.at == 1893985445.0  # NotBefore, an RFC 1123 time
    assert notice.reason == "spot VM evicted by Azure (Preempt, not before Mon, 07 Jan 2030 03:04:05 GMT)"
    assert notices.acknowledge()
    posts = [json.loads(line) for line in (tmp_path / "asked.log").read_text().splitlines()]
    (ack,) = [p for p in posts if p["method"] == "POST"]
    assert ack["path"].startswith("/metadata/scheduledevents?") and json.loads(ack["body"]) == {
        "StartRequests": [{"EventId": "E2"}]}


def test_on_a_notice_a_job_gets_sigterm_and_ending_unfinished_is_lost_not_failed(tmp_path, monkeypatch):
    """The executor tells a running job of the notice with SIGTERM (its process group); the job may save
    its state (the deadline is in the file $LAUNCH_PREEMPT_FILE names) and exit: unfinished (non-zero),
    it is reported lost, which the head requeues without counting a retry; exit 0 means it finished."""
    from runtime.executor import Executor
    from runtime.proto import head_pb2 as pb

    monkeypatch.setenv("HOME", str(tmp_path))
    notice = tmp_path / "notice.json"
    reports = {}
    ex = Executor("n1", {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LAUNCH_PREEMPT_FILE": str(notice)},
                  lambda r, a: reports.__setitem__(r.id, r), lambda *a: None)
    saved = tmp_path / "saved"
    unfinished = f"trap 'cat $LAUNCH_PREEMPT_FILE > {saved}; exit 143' TERM; while true; do sleep 0.1; done"
    done_early = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    for job, command in (("j1", unfinished), ("j2", done_early)):
        ex.handle(pb.Assignment(item_id=job, attempt=0, spec=pb.WorkSpec(kind="job", command=command)))
    wait_for(lambda: all(ex.running.get(j, (0, None))[1] for j in ("j1", "j2")), timeout=10, what="the jobs")
    assert not ex.nothing_runs()
    notice.write_text(json.dumps({"at": 1e10, "reason": "spot terminate at T"}))
    assert ex.preempted() == 2
    wait_for(lambda: len(reports) == 2, timeout=10, what="the jobs to end")
    assert (reports["j1"].state, reports["j1"].exit_code) == ("lost", 143)
    assert "preempted" in reports["j1"].message and json.loads(saved.read_text())["at"] == 1e10
    assert reports["j2"].state == "finished"
    wait_for(ex.nothing_runs, timeout=5, what="the node to have nothing running")
