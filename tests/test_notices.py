"""A spot node's agent reads its cloud's preemption notice (runtime/notices.py) from the instance metadata
service, here the fake of tests/infra/metadata.py served on this machine's loopback."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from runtime.notices import AwsNotices, watcher
from tests.infra import free_port, wait_for
from tests.infra.metadata import serve_locally


@pytest.fixture
def imds(tmp_path):
    port = free_port()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"role": None}))
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
    state.write_text(json.dumps({"role": None, "spot_action": {"action": "terminate", "time": "2030-01-02T03:04:05Z"}}))
    notice = notices.check()
    assert notice is not None and notice.reason == "spot terminate at 2030-01-02T03:04:05Z"
    assert notice.at == 1893553445.0  # 2030-01-02T03:04:05Z, read as UTC
    notices.token = "expired"  # the service refuses it (401): a new token is asked for the next time
    assert notices.check() is None and notices.token == ""
    assert notices.check() is not None


def test_a_notice_without_a_time_is_taken_as_two_minutes_ahead_and_no_service_is_no_notice(imds, tmp_path):
    base, state = imds
    state.write_text(json.dumps({"role": None, "spot_action": {"action": "stop"}}))
    notice = AwsNotices(base).check()
    assert notice.reason == "spot stop at soon" and 100 < notice.at - time.time() <= 120
    assert AwsNotices(f"http://127.0.0.1:{free_port()}").check() is None  # nothing listens there
    assert watcher("aws") is not None and watcher("") is None and watcher("slurm") is None
