"""Ray's coordinator form of `local` (provider.coordinator_address): hosts handed out by a coordinator
server that several clusters share, over Ray's protocol; and a cluster of VM twins made that way."""

from __future__ import annotations

import os

import jsonschema
import pytest

import runtime
from core.errors import ConfigError, NodeNotFound, ProviderError
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, KIND_WORKER, TAG_CLUSTER, TAG_KIND
from lifecycle.config import json_schema, parse_config
from providers import coordinator
from tests.infra import cli, cluster_status, wait_for, write_config
from tests.infra.coordinator import FakeCoordinator


def _ray_file(address: str, **extra) -> dict:
    """Ray's local example with its coordinator line filled in (head_ip and worker_ips left as they were)."""
    return {"cluster_name": "shared-a", "max_workers": 1,
            "provider": {"type": "local", "head_ip": "YOUR_HEAD_NODE_HOSTNAME", "worker_ips": [],
                         "coordinator_address": address},
            "auth": {"ssh_user": "root"}, "head_node": {}, "worker_nodes": {}, **extra}


def test_rays_coordinator_file_reads_as_ray_reads_it():
    cfg = parse_config(_ray_file("10.0.0.9:1234", min_workers=1, available_node_types={}, head_node_type={}))
    assert cfg.provider.kind == "coordinator"
    (name,) = cfg.available_node_types
    assert (name, cfg.head_node_type) == ("local.cluster.node", "local.cluster.node")
    t = cfg.available_node_types[name]
    assert (t.min_workers, t.max_workers) == (1, 1)
    assert any(w.startswith("provider.head_ip, provider.worker_ips: not used") for w in cfg.warnings)


@pytest.mark.parametrize("change, field", [
    ({"max_workers": None}, "max_workers: required when a coordinator hands out the hosts"),
    ({"provider": {"type": "local", "coordinator_address": "10.0.0.9"}}, "provider.coordinator_address: "),
    ({"auth": {}}, "auth.ssh_user: required"),
])
def test_a_coordinator_file_missing_what_it_needs_is_refused_by_name(change, field):
    data = {k: v for k, v in {**_ray_file("10.0.0.9:1234"), **change}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert field in str(e.value)
    with pytest.raises(jsonschema.ValidationError):  # an editor flags it too
        jsonschema.validate(data, json_schema())


@pytest.fixture
def pool():
    c = FakeCoordinator(["10.1.0.2", "10.1.0.3", "10.1.0.4"])
    yield c
    c.close()


def _provider(name: str, address: str) -> coordinator.Provider:
    cfg = parse_config({**_ray_file(address), "cluster_name": name})
    return coordinator.Provider(ClusterSpec(config=cfg, provider_state={"known_hosts": "/nonexistent"}))


def test_clusters_sharing_a_coordinator_get_and_see_only_their_own_hosts(pool):
    a, b = _provider("a", pool.address), _provider("b", pool.address)
    (head,) = a.create("local.cluster.node", 1, {TAG_CLUSTER: "a", TAG_KIND: KIND_HEAD})
    workers = a.create("local.cluster.node", 5, {TAG_CLUSTER: "a", TAG_KIND: KIND_WORKER})
    assert len(workers) == 2  # what was free: fewer than asked is not an error
    assert b.create("local.cluster.node", 1, {TAG_CLUSTER: "b", TAG_KIND: KIND_HEAD}) == []
    assert {n.id for n in a.list({})} == set(pool.hosts) and b.list({}) == []
    # tagged as Ray tags its own clusters' hosts, so a coordinator shared with Ray clusters keeps them apart
    tags = pool.running()[head.id]
    assert (tags["ray-cluster-name"], tags["ray-node-kind"], tags[TAG_KIND]) == ("a", "head", KIND_HEAD)
    assert head.internal_ip == head.id and head.node_type == "local.cluster.node"
    a.set_tags(head.id, {"launch-status": "up-to-date"})
    assert [n.id for n in a.list({"launch-status": "up-to-date"})] == [head.id]
    with pytest.raises(NodeNotFound):
        b.set_tags(head.id, {"x": "y"})  # not b's


def test_an_unreachable_coordinator_is_named(pool):
    p = _provider("a", pool.address)
    pool.close()
    with pytest.raises(ProviderError) as e:
        p.list({})
    assert str(e.value).startswith(f"provider.coordinator_address: the coordinator at {pool.address} did not answer")


# --- a cluster of twins whose hosts a coordinator hands out -------------------------------------------


@pytest.fixture(scope="module")
def twins_pool(twin_net, ssh_lab):
    hosts = [twin_net.twin(f"co-{i}", twin_net.ip(40 + i)) for i in range(2)]
    hosts[0].block_laptop()
    hosts[1].block_laptop()
    c = FakeCoordinator([h.ip for h in hosts], host=twin_net.gateway)  # the head reaches it on the bridge
    laptop, key = twin_net.laptop_for("coordinated", ssh_lab.client_key)
    yield {"coordinator": c, "hosts": hosts, "laptop": laptop, "key": key}
    c.close()
    for h in hosts:
        twin_net.remove(h.name)


def test_up_takes_the_head_and_workers_from_the_coordinator_and_down_gives_them_back(twins_pool):
    c, laptop = twins_pool["coordinator"], twins_pool["laptop"]
    data = {**_ray_file(c.address, min_workers=1), "cluster_name": "coordinated",
            "auth": {"ssh_user": "root", "ssh_private_key": str(twins_pool["key"])},
            "idle_timeout_minutes": 0.1, "autoscaler": {"tick_s": 0.5},
            "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3}}
    path = write_config(laptop / "cluster.yaml", data)
    home = laptop / "home"
    r = cli("up", str(path), "--yes", home=home, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        st = cluster_status(path, home)
        assert sorted(n["kind"] for n in st["nodes"]) == ["head", "worker"]
        assert all(n["runtime"] == "alive" for n in st["nodes"]), st["nodes"]
        given = c.running()
        assert {n["id"] for n in st["nodes"]} == set(given) == {h.ip for h in twins_pool["hosts"]}
        assert {t["ray-cluster-name"] for t in given.values()} == {"coordinated"}

        os.environ["LAUNCH_HOME"] = str(home)
        runtime.init(cluster="coordinated")

        @runtime.remote
        def hostname() -> str:
            import socket
            return socket.gethostname()

        assert runtime.get(hostname.remote(), timeout=120)
        runtime.shutdown()
    finally:
        r = cli("down", str(path), "--yes", home=home, timeout=180)
        os.environ.pop("LAUNCH_HOME", None)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: not c.running(), timeout=60, what="every host given back to the coordinator")
