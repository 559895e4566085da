"""The local provider: real processes on this machine, state that survives CLI invocations."""

from __future__ import annotations

import os
import signal
import time

import pytest

import providers
from core.errors import NodeNotFound
from core.files import locked_json
from lifecycle.config import parse_config
from lifecycle.spec import resolve
from providers.local import Provider as LocalProvider, process_start_time
from tests.infra import local_cluster, processes_with_env, wait_for
from transport import SSHAuth, runner_for


@pytest.fixture
def provider(tmp_path):
    spec = resolve(parse_config(local_cluster("prov")), tmp_path / "cluster")
    p = providers.build(spec)
    yield p
    p.terminate([n.id for n in p.list({})])


def runner_of(node):
    return runner_for(node, SSHAuth(user="root", private_key=None, known_hosts=None))


def test_registry_returns_local_provider(provider):
    assert isinstance(provider, LocalProvider)


def test_create_list_tag_terminate(provider, tmp_path):
    nodes = provider.create("cpu", 2, {"launch-cluster": "prov", "role": "x"})
    assert len(nodes) == 2 and all(n.state == "running" and n.internal_ip == "127.0.0.1" for n in nodes)
    assert {n.id for n in provider.list({"role": "x"})} == {n.id for n in nodes}
    assert provider.list({"role": "y"}) == []

    provider.set_tags(nodes[0].id, {"role": "y"})
    # a second provider object, as a second CLI invocation would make, sees the same nodes and tags
    again = LocalProvider(provider.spec)
    assert [n.id for n in again.list({"role": "y"})] == [nodes[0].id]

    again.terminate([nodes[0].id, "local-unknown"])  # unknown ids are ignored
    assert [n.id for n in provider.list({})] == [nodes[1].id]
    assert processes_with_env(f"LAUNCH_LOCAL_NODE={nodes[0].id}\0") == []
    provider.terminate([nodes[0].id])  # idempotent
    with pytest.raises(NodeNotFound):
        provider.set_tags(nodes[0].id, {"a": "b"})


def test_terminate_stops_daemonized_descendants(provider):
    node = provider.create("cpu", 1, {})[0]
    runner = runner_of(node)
    # a daemon in its own session, as a runtime would start it: it outlives the command that started it
    r = runner.run("setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo started")
    assert r.ok and r.tail == ["started"]
    marker = f"LAUNCH_LOCAL_NODE={node.id}\0"
    wait_for(lambda: len(processes_with_env(marker)) >= 2, timeout=10, every=0.05,
             what="the machine and the sleeper")
    provider.terminate([node.id])
    assert processes_with_env(marker) == []
    assert not (provider.nodes_dir / node.id).exists()


def test_dead_machine_is_dropped_and_its_processes_swept(provider):
    node = provider.create("cpu", 1, {})[0]
    runner_of(node).run("setsid sleep 300 >/dev/null 2>&1 < /dev/null &")
    with locked_json(provider.state_path) as s:
        pid = s[node.id]["pid"]
    os.kill(pid, signal.SIGKILL)  # the "VM" crashes
    wait_for(lambda: process_start_time(pid) is None, timeout=10, every=0.05, what=f"process {pid} gone")
    assert provider.list({}) == []
    assert processes_with_env(f"LAUNCH_LOCAL_NODE={node.id}\0") == []


def test_runner_home_env_exit_code_and_streaming(provider):
    node = provider.create("cpu", 1, {})[0]
    runner = runner_of(node)
    lines = []
    r = runner.run('echo "$HOME"; pwd; echo err >&2; exit 7', on_output=lines.append)
    home = str(provider.nodes_dir / node.id)
    assert r.exit_code == 7
    assert [l.rstrip("\n") for l in lines] == [home, home, "err"]


def test_runner_put_file_is_atomic_with_mode(provider):
    node = provider.create("cpu", 1, {})[0]
    runner = runner_of(node)
    runner.put_file(b"secret", "~/.launch-runtime/nodes/n1/node.json", mode=0o600)
    path = provider.nodes_dir / node.id / ".launch-runtime" / "nodes" / "n1" / "node.json"
    assert path.read_bytes() == b"secret"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert runner.read_file("~/.launch-runtime/nodes/n1/node.json") == b"secret"
    assert runner.read_file("~/missing") is None


def test_slurm_where_there_is_no_slurm_is_a_clear_config_error(tmp_path, monkeypatch):
    """`provider: {type: slurm}` on a machine without Slurm's commands (or with a slurm.conf that is not
    there) says so in one line naming the field, before anything is made."""
    from core.errors import ConfigError

    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue, sbatch on it
    cfg = parse_config({**local_cluster("c"), "provider": {"type": "slurm"}})
    with pytest.raises(ConfigError, match=r"^provider.type: slurm needs Slurm's `squeue` on this machine"):
        resolve(cfg, tmp_path)
    cfg = parse_config({**local_cluster("c"), "provider": {"type": "slurm", "slurm_conf": str(tmp_path / "no.conf")}})
    with pytest.raises(ConfigError, match=r"^provider.slurm_conf: .*no.conf does not exist$"):
        resolve(cfg, tmp_path)


def test_a_creator_killed_mid_create_leaks_no_node(provider, tmp_path):
    # The creating process (an autoscaler) is kill -9'd right after the machine process started and
    # before it could record it: the node must be findable by its tags, and go with a terminate.
    import subprocess
    import sys
    import textwrap

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(provider.spec.to_json())
    creator = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, time
        import providers, providers.local
        from core.spec import ClusterSpec
        real = subprocess.Popen
        def popen_then_hang(*a, **kw):
            real(*a, **kw)
            print("spawned", flush=True)
            time.sleep(600)  # killed here, before the pid is recorded
        providers.local.subprocess.Popen = popen_then_hang
        p = providers.build(ClusterSpec.from_json(open({str(spec_path)!r}).read()))
        p.create("cpu", 1, {{"launch-cluster": "prov", "launch-request-id": "r1"}})
    """)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path.parent), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert creator.stdout.readline().strip() == "spawned"
    creator.kill()
    creator.wait()
    (node,) = provider.list({"launch-request-id": "r1"})  # findable by its tags from the moment it exists
    marker = f"LAUNCH_LOCAL_NODE={node.id}\0"
    wait_for(lambda: processes_with_env(marker) != [], timeout=10, every=0.05, what="its machine running, unrecorded")
    provider.terminate([node.id])
    assert processes_with_env(marker) == []
    assert not (provider.nodes_dir / node.id).exists()


def test_a_terminate_cut_short_leaves_the_node_known_and_the_next_one_ends_it(provider, monkeypatch):
    """Ctrl-C while `down` terminates: the node's record outlives its machine, so the node is never
    running unknown to every later command; terminating again ends it."""
    import providers.local as local

    node = provider.create("cpu", 1, {"k": "v"})[0]
    runner_of(node).run("sleep 300 >/dev/null 2>&1 &")  # a process of the node, as its runtime would be
    assert processes_with_env(node.id)

    def interrupted(node_id, grace_s=3.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "kill_node_processes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        provider.terminate([node.id])
    monkeypatch.undo()
    assert [n.id for n in provider.list({"k": "v"})] == [node.id]  # still known, still running
    provider.terminate([node.id])
    assert provider.list({}) == [] and processes_with_env(node.id) == []
