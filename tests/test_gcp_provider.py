"""The gcp provider through the real google-cloud-compute clients against the fake Compute Engine
endpoint (tests/infra/fake_gce.py): Ray's node_config shapes, labels that round-trip any name, zone
failover on stockouts, typed errors, operations that fail after they started, pagination, preemption,
stop/start, and nothing left behind."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("google.cloud.compute_v1")

import providers  # noqa: E402
from conftest import GCE_PROJECT, GCE_REGION  # noqa: E402
from core.config import parse_config  # noqa: E402
from core.errors import CapacityError, ConfigError, InvalidRequest, PermissionDenied, ProviderError, QuotaError  # noqa: E402
from core.spec import ClusterSpec  # noqa: E402
from core.tags import TAG_CLUSTER, TAG_KIND, TAG_NODE_TYPE, TAG_STATUS, tags_of  # noqa: E402

RAY_DISK = {"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": {
    "diskSizeGb": 50, "diskType": "pd-balanced",
    "sourceImage": "projects/deeplearning-platform-release/global/images/family/common-cpu"}}


def config(gce, name: str = "gcp-test", **provider) -> dict:
    return {
        "cluster_name": name,
        "provider": {"type": "gcp", "project_id": GCE_PROJECT, "region": GCE_REGION,
                     "availability_zone": "us-west1-a,us-west1-b", "api_endpoint": gce.url,
                     "gcp_credentials": {"type": "credentials_token", "credentials": "test-token"},
                     "retry_attempts": 4, **provider},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray_head_default": {"resources": {"CPU": 0}, "node_config": {"machineType": "n1-standard-2",
                                                                          "disks": [RAY_DISK]}},
            # Ray's GPU worker: short accelerator and disk names, scheduling as a list, no resources
            "gpu_worker": {"max_workers": 4, "node_config": {
                "machineType": "n1-standard-4", "disks": [RAY_DISK],
                "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}],
                "scheduling": [{"preemptible": True}],
                "metadata": {"items": [{"key": "install-nvidia-driver", "value": "True"}]}}},
            "cpu_worker": {"max_workers": 4, "node_config": {"machineType": "e2-standard-4", "disks": [RAY_DISK],
                                                             "labels": {"team": "ml"}}},
            "spot_worker": {"max_workers": 4, "spot": True, "node_config": {"machineType": "e2-standard-4"}},
            "l4_worker": {"max_workers": 2, "node_config": {"machineType": "g2-standard-4"}},
        },
        "head_node_type": "ray_head_default",
    }


def make(gce, tmp_path, name: str = "gcp-test", **provider):
    cfg = parse_config(config(gce, name, **provider))
    boot = providers.bootstrap(cfg, tmp_path)
    return providers.build(ClusterSpec(config=cfg, provider_state=boot.state)), boot


def tags(cluster: str, node_type: str, kind: str = "worker") -> dict[str, str]:
    return {TAG_CLUSTER: cluster, TAG_KIND: kind, TAG_NODE_TYPE: node_type}


def inserts(gce) -> int:
    return sum(1 for m, p in gce.calls if m == "POST" and p.endswith("/instances"))


def test_bootstrap_is_idempotent_and_opens_ssh_only(gce, tmp_path):
    _, boot = make(gce, tmp_path)
    rules = {name: fw for name, fw in gce.firewalls.items()}
    assert sorted(rules) == ["launch-gcp-test-internal", "launch-gcp-test-ssh"]
    ssh, internal = rules["launch-gcp-test-ssh"], rules["launch-gcp-test-internal"]
    assert ssh["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}] and ssh["sourceRanges"] == ["0.0.0.0/0"]
    assert internal["sourceTags"] == internal["targetTags"] == ["launch-gcp-test"]
    assert "sourceRanges" not in internal  # the runtime's port is open to the cluster only
    # a made key: 0600, its public half in the state for the instances' metadata
    assert (tmp_path / "launch-gcp-gcp-test.pem").stat().st_mode & 0o777 == 0o600
    assert boot.state["ssh_keys"].startswith("ubuntu:ssh-ed25519 ")
    before = len([c for c in gce.calls if c[0] == "POST"])
    _, again = make(gce, tmp_path)
    assert len([c for c in gce.calls if c[0] == "POST"]) == before  # nothing made twice
    assert again.state == boot.state


def test_ray_node_config_becomes_a_valid_insert_and_labels_round_trip_any_name(gce, tmp_path):
    name = "Team_A-" + "X" * 40  # upper case and '_' are not label characters; encoded, it spans two labels
    provider, _ = make(gce, tmp_path, name=name)
    (node,) = provider.create("gpu_worker", 1, tags(name, "gpu_worker"))
    assert node.tags == tags(name, "gpu_worker") and node.spot and node.state == "running"
    (inst,) = gce.live()
    assert inst["machineType"].endswith("zones/us-west1-a/machineTypes/n1-standard-4")
    assert inst["guestAccelerators"][0]["acceleratorType"] == \
        f"projects/{GCE_PROJECT}/zones/us-west1-a/acceleratorTypes/nvidia-tesla-t4"
    # GPUs need TERMINATE on host maintenance; a preemptible VM may not restart itself
    assert inst["scheduling"] == {"preemptible": True, "onHostMaintenance": "TERMINATE", "automaticRestart": False}
    keys = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert keys["install-nvidia-driver"] == "True" and keys["ssh-keys"].startswith("ubuntu:ssh-ed25519")
    assert inst["tags"]["items"] == ["launch-team-a-" + "x" * 40]  # the firewall rules' target
    assert [provider.list({TAG_CLUSTER: name})[0].id] == [node.id]
    assert provider.list({TAG_CLUSTER: name[:-1]}) == []  # a prefix of the name is another cluster
    provider.set_tags(node.id, {TAG_STATUS: "up-to-date"})
    assert provider.list({TAG_STATUS: "up-to-date"})[0].tags == {**tags(name, "gpu_worker"), TAG_STATUS: "up-to-date"}


def test_spot_node_types_are_spot_vms_deleted_when_preempted(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    (node,) = provider.create("spot_worker", 1, tags("gcp-test", "spot_worker"))
    (inst,) = gce.live()
    assert inst["scheduling"]["provisioningModel"] == "SPOT"
    assert inst["scheduling"]["instanceTerminationAction"] == "DELETE"
    gce.preempt(node.id)
    assert provider.list({TAG_CLUSTER: "gcp-test"}) == [] and gce.live() == [] and gce.all_disks() == []


def test_a_preempted_vm_left_stopped_is_deleted_when_seen(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    a, b = provider.create("gpu_worker", 2, tags("gcp-test", "gpu_worker"))
    gce.preempt(a.id)  # `preemptible: true` (Ray's example): GCE stops it
    assert [i["status"] for i in gce.live() if i["name"] == a.id] == ["TERMINATED"]
    assert [n.id for n in provider.list({TAG_CLUSTER: "gcp-test"})] == [b.id]
    assert [i["name"] for i in gce.live()] == [b.id]


def test_resources_come_from_machine_and_accelerator_types(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    types = provider.node_types()
    assert types["gpu_worker"] == {"CPU": 4.0, "memory": 15360 * 2**20, "GPU": 1.0, "accelerator_type:T4": 1.0}
    assert types["l4_worker"]["GPU"] == 1.0 and types["l4_worker"]["accelerator_type:L4"] == 1.0
    assert types["cpu_worker"] == {"CPU": 4.0, "memory": 16384 * 2**20}
    # a g2 has its GPU built in: it still gets TERMINATE on host maintenance
    provider.create("l4_worker", 1, tags("gcp-test", "l4_worker"))
    assert gce.live()[0]["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_a_stockout_fails_over_to_the_next_zone_then_backs_off(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    gce.stockout_zones.add("us-west1-a")
    nodes = provider.create("cpu_worker", 2, tags("gcp-test", "cpu_worker"))
    assert len(nodes) == 2 and {i["zone"].rsplit("/", 1)[1] for i in gce.live()} == {"us-west1-b"}
    gce.stockout_zones.add("us-west1-b")
    with pytest.raises(CapacityError) as e:
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert e.value.node_type == "cpu_worker" and "does not have enough resources" in str(e.value)
    assert len(gce.live()) == 2  # the failed inserts left nothing


def test_an_insert_that_fails_after_it_started_leaves_nothing(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    gce.fail_after_start_zones.update({"us-west1-a", "us-west1-b"})
    with pytest.raises(ProviderError) as e:
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert "INTERNAL_ERROR" in str(e.value)
    assert gce.live() == [] and gce.all_disks() == []  # the half-made instance was deleted


def test_quota_is_a_quota_error_and_429s_are_retried(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    gce.quota_exceeded = True
    with pytest.raises(QuotaError, match="cpu_worker.*Quota 'CPUS' exceeded"):
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    gce.quota_exceeded = False
    gce.throttle_next = 2  # a burst of 429 rateLimitExceeded
    (node,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert node.state == "running" and inserts(gce) == 4  # the quota refusal, two 429s, the one that went in


def test_bad_arguments_fail_fast_naming_the_node_type_and_field(gce, tmp_path):
    data = config(gce)
    data["available_node_types"]["cpu_worker"]["node_config"]["machineType"] = "n9-imaginary-4"
    cfg = parse_config(data)
    provider = providers.build(ClusterSpec(config=cfg, provider_state=providers.bootstrap(cfg, tmp_path).state))
    with pytest.raises(InvalidRequest, match=r"available_node_types\.cpu_worker\.node_config.*machineType"):
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    data["available_node_types"]["cpu_worker"]["node_config"] = {"machineTyp": "e2-standard-4"}
    cfg = parse_config(data)
    provider = providers.build(ClusterSpec(config=cfg, provider_state=providers.bootstrap(cfg, tmp_path).state))
    with pytest.raises(InvalidRequest, match=r"available_node_types\.cpu_worker\.node_config"):
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert inserts(gce) == 1 and gce.live() == []


def test_lists_page_through_and_terminate_ignores_what_is_gone(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    nodes = provider.create("cpu_worker", 5, tags("gcp-test", "cpu_worker"))
    gce.max_page = 2
    try:
        listed = provider.list({TAG_CLUSTER: "gcp-test"})
    finally:
        gce.max_page = 500
    assert sorted(n.id for n in listed) == sorted(n.id for n in nodes)
    assert sum(1 for m, p in gce.calls if m == "GET" and p.endswith("us-west1-a/instances")) >= 3
    provider.terminate([nodes[0].id])
    provider.terminate([n.id for n in nodes] + ["never-existed"])
    assert gce.live() == [] and gce.all_disks() == []


def test_cache_stopped_nodes_stops_and_starts_instances(gce, tmp_path):
    provider, _ = make(gce, tmp_path, cache_stopped_nodes=True)
    (node,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    provider.stop([node.id])
    assert provider.list({TAG_CLUSTER: "gcp-test"}) == []
    assert [n.id for n in provider.stopped({TAG_CLUSTER: "gcp-test"})] == [node.id]
    (again,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert again.id == node.id and inserts(gce) == 1  # started, not made anew
    assert [i["status"] for i in gce.live()] == ["RUNNING"]
    provider.terminate([node.id])
    provider.cleanup()
    assert gce.live() == [] and gce.firewalls == {}


def test_rays_documented_gcp_file_launches_as_it_is(gce, tmp_path, monkeypatch):
    from tests.test_ray_configs import RAY_FILES

    data = copy.deepcopy(RAY_FILES["gcp-full"])
    data["provider"].update(project_id=GCE_PROJECT, availability_zone="us-west1-b", api_endpoint=gce.url,
                            gcp_credentials={"type": "credentials_token", "credentials": "test-token"})
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config(data)
    provider = providers.build(ClusterSpec(config=cfg, provider_state=providers.bootstrap(cfg, tmp_path).state))
    for node_type, kind in (("ray_head_default", "head"), ("ray_worker_small", "worker")):
        (node,) = provider.create(node_type, 1, tags("default", node_type, kind))
        assert node.state == "running" and node.external_ip  # not use_internal_ips: an external address
    by_type = {tags_of(i["labels"])[TAG_NODE_TYPE]: i for i in gce.live()}  # '_' is escaped in labels
    assert by_type["ray_worker_small"]["scheduling"]["preemptible"] is True  # Ray's list form, merged
    assert by_type["ray_head_default"]["serviceAccounts"][0]["scopes"] == [
        "https://www.googleapis.com/auth/cloud-platform"]  # the head calls the API with its own account


def test_permission_errors_fail_fast_naming_the_node_type(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    provider.gcp.project = "someone-elses-project"
    with pytest.raises(PermissionDenied, match="instances.insert for node type 'cpu_worker' refused"):
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    provider.gcp.project = GCE_PROJECT
    gce.denied.add(("compute.instances.create", "*"))  # a role that lacks it: the permission is named
    with pytest.raises(PermissionDenied) as e:
        provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert e.value.permission == "compute.instances.create" and gce.live() == []


def test_catalog_prices_a_vm_with_its_attached_gpus():
    from autoscaler.pricing import catalog_price

    t4s = {"machineType": "n1-standard-4", "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4",
                                                                   "acceleratorCount": 2}]}
    assert catalog_price("gcp", t4s) == pytest.approx(0.19 + 2 * 0.35)
    assert catalog_price("gcp", {"machineType": "zones/us-central1-a/machineTypes/g2-standard-4"}) == 0.70683
    unknown_gpu = {"machineType": "n1-standard-4", "guestAccelerators": [{"acceleratorType": "nvidia-h200"}]}
    assert catalog_price("gcp", unknown_gpu) is None  # estimated from its resources rather than underpriced


def test_an_insert_retried_after_a_lost_reply_makes_one_vm(gce, tmp_path):
    provider, _ = make(gce, tmp_path)
    gce.lose_insert_replies = 1  # GCE made it, the 503 said otherwise: the retry carries the same requestId
    (node,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert inserts(gce) == 2 and [i["name"] for i in gce.live()] == [node.id]


def test_a_project_left_out_is_the_credentials_own(gce, tmp_path):
    """Ray's files may leave provider.project_id out: the project is the credentials' own, as gcloud
    takes it, said in one line; with credentials that name none, the field is named."""
    import json

    data = config(gce)
    del data["provider"]["project_id"]
    data["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": json.dumps(gce.service_account_key())}
    cfg = parse_config(data)
    booted = providers.bootstrap(cfg, tmp_path)
    assert booted.notes == [f"provider.project_id: not set; using {GCE_PROJECT}, the project of the credentials "
                            "(as gcloud does)"]
    provider = providers.build(ClusterSpec(config=cfg, provider_state=booted.state))
    (node,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert [i["name"] for i in gce.live()] == [node.id]
    provider.terminate([node.id])
    data["provider"]["gcp_credentials"] = {"type": "credentials_token", "credentials": "test-token"}
    with pytest.raises(ConfigError, match="provider.project_id: not set, and the credentials name no project"):
        providers.bootstrap(parse_config(data), tmp_path)


def test_a_service_account_key_in_gcp_credentials_is_used(gce, tmp_path):
    """Ray's `gcp_credentials: {type: service_account, credentials: <key JSON>}`: the calls are signed
    with the key (a self-signed JWT, as the SDK does for service accounts, or a token traded for one at
    the key's token_uri, the fake's)."""
    import json

    key = gce.service_account_key()
    data = config(gce)
    data["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": json.dumps(key)}
    cfg = parse_config(data)
    providers.bootstrap(cfg, tmp_path)
    assert gce.firewalls
    if not gce.tokens_issued:
        import base64

        jwt = gce.last_authorization.removeprefix("Bearer ").split(".")
        claims = json.loads(base64.urlsafe_b64decode(jwt[1] + "=" * (-len(jwt[1]) % 4)))
        header = json.loads(base64.urlsafe_b64decode(jwt[0] + "=" * (-len(jwt[0]) % 4)))
        assert header["kid"] == "k1" and claims["iss"] == key["client_email"]
    data["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": "{not json"}
    with pytest.raises(Exception, match="provider.gcp_credentials.credentials: not a service account key"):
        providers.bootstrap(parse_config(data), tmp_path)


def test_spot_prices_come_from_the_cloud_billing_catalog(gce, tmp_path):
    """The head's live GCP spot prices: a machine type is its family's spot core and RAM prices times its
    vCPUs and GiB (machineTypes.get), plus its built-in GPUs; an attached accelerator type is priced alone;
    on-demand, commitment, custom and other regions' SKUs are left out; the catalog is paged through."""
    from autoscaler import pricing

    provider, _ = make(gce, tmp_path, billing_endpoint=gce.url)
    assert provider.capabilities.live_spot_prices and provider.spot_prices_every_s == 86400
    found = provider.spot_prices(["n1-standard-4", "g2-standard-4", "a2-highgpu-1g", "e2-standard-4",
                                  "n2-standard-4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-h100-80gb"])
    assert found == {
        "n1-standard-4": round(4 * 0.00698 + 15 * 0.000936, 6),  # 4 vCPUs, 15 GiB
        "g2-standard-4": round(4 * 0.00827 + 16 * 0.000969 + 0.2233, 6),  # and its L4
        "a2-highgpu-1g": round(12 * 0.00966 + 85 * 0.001296 + 1.1, 6),  # and its A100 (40GB: not the 80GB SKU)
        "e2-standard-4": round(4 * 0.006543 + 16 * 0.000877, 6),
        "nvidia-tesla-t4": 0.069, "nvidia-tesla-a100": 1.1,
    }  # (no N2 or H100 SKU in the slice: left to the catalog)
    assert gce.billing_asked >= 4  # 19 SKUs, 5 a page

    # the planner's price of a spot n1 with two T4s: the machine's live price and its GPUs' live price
    cfg = parse_config(config(gce))
    cfg.available_node_types["gpu_worker"] = cfg.available_node_types["cpu_worker"].model_copy(update={
        "spot": True, "cost_per_hour": None, "node_config": {"machineType": "n1-standard-4", "guestAccelerators": [
            {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]}})
    assert {"n1-standard-4", "nvidia-tesla-t4"} <= set(pricing.live_wanted(cfg))
    live = {m: pricing.LivePrice(p, 100.0, 2 * 86400) for m, p in found.items()}
    q = pricing.quote(cfg, "gpu_worker", live=live, now=100.0 + 7200)
    assert q.per_hour == round(found["n1-standard-4"] + 2 * 0.069, 6)
    assert q.source == "live: the cloud's spot price, 120 min ago"  # a daily list is not stale in two hours


def test_equivalent_machine_types_launch_the_cheapest_with_capacity(gce, tmp_path):
    """machineType as a list (as AWS's InstanceType list): the node type has what every one has, is priced
    as the cheapest, and a launch tries them cheapest first across the zones; a machine type out of
    capacity in a zone is tried last there for a while (Karpenter's offerings)."""
    from autoscaler.pricing import catalog_price
    from providers.gcp import config_problems

    provider, _ = make(gce, tmp_path)
    nt = provider.spec.config.available_node_types["cpu_worker"]
    nt.node_config["machineType"] = ["n2-standard-4", "n1-standard-4", "e2-standard-4"]  # the user's order
    shape = provider.node_types()["cpu_worker"]
    assert shape == {"CPU": 4.0, "memory": 15 * 2**30}  # n1-standard-4 has 15 GiB, the others 16
    assert catalog_price("gcp", nt.node_config) == 0.134012  # e2-standard-4's, the cheapest
    (first,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    machine = {i["name"]: i["machineType"].rsplit("/", 1)[-1] for i in gce.live()}
    assert machine[first.id] == "e2-standard-4" and first.machine == "e2-standard-4"
    gce.stockout_offerings |= {("e2-standard-4", z) for z in provider.zones}  # e2 out everywhere: n1 next
    (second,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert {i["name"]: i["machineType"].rsplit("/", 1)[-1] for i in gce.live()}[second.id] == "n1-standard-4"
    gce.stockout_offerings.clear()  # back, but tried last for 3 minutes: n1 again
    (third,) = provider.create("cpu_worker", 1, tags("gcp-test", "cpu_worker"))
    assert {i["name"]: i["machineType"].rsplit("/", 1)[-1] for i in gce.live()}[third.id] == "n1-standard-4"
    provider.terminate([first.id, second.id, third.id])

    bad = parse_config(config(gce))
    bad.available_node_types["cpu_worker"].node_config["machineType"] = []
    bad.available_node_types["gpu_worker"].node_config["machineType"] = 4
    assert sorted(config_problems(bad)) == [
        "available_node_types.cpu_worker.node_config.machineType: equivalent machine types are a list of one or "
        "more machine type names",
        "available_node_types.gpu_worker.node_config.machineType: a machine type name, or a list of equivalent ones"]
