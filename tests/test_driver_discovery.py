"""Which cluster `runtime.init()` with no arguments connects to: the node's own, while its runtime runs
there; else the one cluster `launch up` started from this machine. Files and a real process, no cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.paths import NODE_CONFIG, on_this_node
from runtime import api
from tests.infra import wait_for


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host whose home holds a node's runtime config (a node of cluster 'old') and whose LAUNCH_HOME
    names one cluster that is up ('live')."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path / "launch"))
    for var in ("LAUNCH_HEAD_ADDRESS", "LAUNCH_CLUSTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    node_cfg = on_this_node(NODE_CONFIG)
    node_cfg.parent.mkdir(parents=True)
    node_cfg.write_text(json.dumps({"head_address": "10.0.0.9:7000", "token": "old-token"}))
    live = tmp_path / "launch" / "clusters" / "live"
    live.mkdir(parents=True)
    (live / "cluster.json").write_text(json.dumps({"head_address": "127.0.0.1:6999", "head_reach": "direct"}))
    (live / "token").write_text("live-token\n")
    return node_cfg


def test_a_node_config_left_by_a_runtime_that_is_gone_is_not_taken(host):
    # a crash (or a host given back without `runtime.node stop`) left the config; no agent runs here
    assert api._discover() == ("127.0.0.1:6999", "live-token")


def test_the_nodes_own_cluster_while_its_runtime_runs(host):
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "runtime.agent"])
    # Popen returns once the child's exec began (vfork): its arguments show in /proc a moment later
    wait_for(lambda: b"runtime.agent" in open(f"/proc/{agent.pid}/cmdline", "rb").read(), timeout=10,
             every=0.01, what="the stand-in agent's command line")
    try:
        pids = host.parent / "pids"
        pids.mkdir()
        (pids / "agent.pid").write_text(str(agent.pid))
        assert api._discover() == ("10.0.0.9:7000", "old-token")
    finally:
        agent.kill()
        agent.wait()
    assert api._discover() == ("127.0.0.1:6999", "live-token")
