"""Ray's cluster configs, in the forms Ray documents, read as Ray reads them; and hostile files, each
refused with one clean line in bounded time and memory."""

from __future__ import annotations

import copy
import tracemalloc

import jsonschema
import pytest
import yaml

from core.errors import ConfigError
from lifecycle.config import json_schema, load_config, parse_config
from tests.infra import ROOT, cli, write_config

RAY_START_HEAD = ["ray stop", "ray start --head --port=6379 --object-manager-port=8076 "
                              "--autoscaling-config=~/ray_bootstrap_config.yaml"]
RAY_START_WORKER = ["ray stop", "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076"]

# Ray's documented example files (minimal and full), per provider, as a Ray user has them
RAY_FILES = {
    "aws-minimal": {"cluster_name": "aws-example-minimal", "max_workers": 1,
                    "provider": {"type": "aws", "region": "us-west-2"}},
    "aws-full": {
        "cluster_name": "default", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "aws", "region": "us-west-2", "availability_zone": "us-west-2a,us-west-2b",
                     "cache_stopped_nodes": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {
                "InstanceType": "m5.large", "BlockDeviceMappings": [
                    {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 140, "VolumeType": "gp3"}}]}},
            "ray.worker.default": {"min_workers": 1, "max_workers": 2, "resources": {}, "node_config": {
                "InstanceType": "m5.large", "InstanceMarketOptions": {"MarketType": "spot"}}}},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": ["**/.git", "**/.git/**"], "rsync_filter": [".gitignore"],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": RAY_START_HEAD,
        "worker_start_ray_commands": RAY_START_WORKER, "head_node": {}, "worker_nodes": {},
        "metadata": {"team": "ml"},
    },
    "gcp-minimal": {"cluster_name": "minimal", "max_workers": 1,
                    "provider": {"type": "gcp", "region": "us-west1", "availability_zone": "us-west1-a",
                                 "project_id": "my-project"}},
    "gcp-full": {
        "cluster_name": "default", "max_workers": 2,
        "provider": {"type": "gcp", "region": "us-west1", "availability_zone": "us-west1-a",
                     "project_id": "my-project"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray_head_default": {"resources": {"CPU": 2}, "node_config": {"machineType": "n1-standard-2", "disks": [
                {"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": {
                    "diskSizeGb": 50, "sourceImage": "projects/deeplearning-platform-release/global/images/family/common-cpu"}}]}},
            "ray_worker_small": {"min_workers": 0, "resources": {"CPU": 2}, "node_config": {
                "machineType": "n1-standard-2", "scheduling": [{"preemptible": True}]}}},
        "head_node_type": "ray_head_default",
        "head_setup_commands": ["pip install google-api-python-client==1.7.8"],
        "head_start_ray_commands": RAY_START_HEAD, "worker_start_ray_commands": RAY_START_WORKER,
    },
    "azure-minimal": {"cluster_name": "minimal", "max_workers": 1,
                      "provider": {"type": "azure", "location": "westus2", "resource_group": "ray-cluster"},
                      "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa",
                               "ssh_public_key": "~/.ssh/id_rsa.pub"}},
    "azure-full": {
        "cluster_name": "default", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "azure", "location": "westus2", "resource_group": "ray-cluster",
                     "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa", "ssh_public_key": "~/.ssh/id_rsa.pub"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {"azure_arm_parameters": {
                "vmSize": "Standard_D2s_v3", "imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-1804",
                "imageSku": "1804-gen2", "imageVersion": "latest"}}},
            "ray.worker.default": {"min_workers": 0, "max_workers": 2, "resources": {"CPU": 2}, "node_config": {
                "azure_arm_parameters": {"vmSize": "Standard_D2s_v3", "imagePublisher": "microsoft-dsvm",
                                         "imageOffer": "ubuntu-1804", "imageSku": "1804-gen2",
                                         "imageVersion": "latest", "priority": "Spot"}}}},
        "head_node_type": "ray.head.default",
        "file_mounts": {"~/.ssh/id_rsa.pub": "~/.ssh/id_rsa.pub"},
        "head_start_ray_commands": RAY_START_HEAD, "worker_start_ray_commands": RAY_START_WORKER,
    },
    "onprem-minimal": {"cluster_name": "default",
                       "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]},
                       "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa"}},
    "onprem-full": {"cluster_name": "default", "min_workers": 0, "max_workers": 2, "upscaling_speed": 1.0,
                    "idle_timeout_minutes": 5, "docker": {"image": "", "container_name": ""},
                    "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]},
                    "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa"},
                    "file_mounts": {}, "initialization_commands": [], "setup_commands": [],
                    "head_start_ray_commands": RAY_START_HEAD, "worker_start_ray_commands": RAY_START_WORKER},
}

# what Ray makes of each: node types (name: min-max) and the head type
EXPECTED = {
    "aws-minimal": ({"ray.head.default": (0, 0), "ray.worker.default": (0, 2)}, "ray.head.default"),
    "aws-full": ({"ray.head.default": (0, 0), "ray.worker.default": (1, 2)}, "ray.head.default"),
    "gcp-minimal": ({"ray_head_default": (0, 0), "ray_worker_small": (0, 2)}, "ray_head_default"),
    "gcp-full": ({"ray_head_default": (0, 0), "ray_worker_small": (0, 2)}, "ray_head_default"),
    "azure-minimal": ({"ray.head.default": (0, 0), "ray.worker.default": (0, 2)}, "ray.head.default"),
    "azure-full": ({"ray.head.default": (0, 0), "ray.worker.default": (0, 2)}, "ray.head.default"),
    "onprem-minimal": ({"local.cluster.node": (2, 2)}, "local.cluster.node"),
    "onprem-full": ({"local.cluster.node": (0, 2)}, "local.cluster.node"),
}


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    """A HOME whose ~/.ssh has the keys Ray's files name (validate checks they are there)."""
    ssh = tmp_path / "user" / ".ssh"
    ssh.mkdir(parents=True)
    for name in ("id_rsa", "id_rsa.pub"):
        (ssh / name).write_text("key\n")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path


@pytest.mark.parametrize("name", sorted(RAY_FILES))
def test_rays_documented_files_validate_as_ray_reads_them(name, user_home):
    path = write_config(user_home / f"{name}.yaml", RAY_FILES[name])
    cfg = load_config(path)
    types, head = EXPECTED[name]
    assert {n: (t.min_workers, cfg.worker_max(n)) for n, t in cfg.available_node_types.items()} == types
    assert cfg.head_node_type == head
    # and the editor's schema accepts what validate accepts
    jsonschema.validate(RAY_FILES[name], json_schema())


def test_a_file_with_only_a_provider_gets_that_providers_defaults_and_says_so(user_home):
    cfg = load_config(write_config(user_home / "c.yaml", RAY_FILES["aws-minimal"]))
    assert cfg.auth.ssh_user == "ubuntu"  # the file's own provider section replaces the default's, as in Ray
    assert cfg.available_node_types["ray.worker.default"].spot
    assert "ImageId" not in cfg.available_node_types["ray.head.default"].node_config  # the region's default, at up
    assert any(w.startswith("available_node_types: none declared; using the aws provider's default") for w in cfg.warnings)
    # node types but no head_node_type: Ray's default head type, which the file must then have
    data = {**RAY_FILES["aws-minimal"], "available_node_types": {"gpu": {"node_config": {"InstanceType": "g5.xlarge"}}}}
    with pytest.raises(ConfigError, match=r"head_node_type: 'ray.head.default' is not in available_node_types \(gpu\)"):
        load_config(write_config(user_home / "c2.yaml", data))


def test_top_level_min_workers_is_dropped_off_prem_with_a_warning(user_home):
    cfg = load_config(write_config(user_home / "c.yaml", {**RAY_FILES["aws-minimal"], "min_workers": 3}))
    assert all(t.min_workers == 0 for t in cfg.available_node_types.values())
    assert any(w.startswith("min_workers: ignored at the top level") for w in cfg.warnings)
    r = cli("validate", str(user_home / "c.yaml"), home=user_home / "launch")
    assert r.returncode == 0 and "warning: min_workers: ignored at the top level" in r.stderr


def test_rays_node_type_and_auth_keys_are_understood(user_home):
    data = copy.deepcopy(RAY_FILES["aws-full"])
    data["available_node_types"]["ray.worker.default"].update(
        idle_timeout_s=30, priority=2, initialization_commands=["echo first"])
    data["auth"]["ssh_proxy_use_node_id"] = True
    data["auth"]["ssh_proxy_command"] = "aws ssm start-session --target %h"
    cfg = load_config(write_config(user_home / "c.yaml", data))
    w = cfg.available_node_types["ray.worker.default"]
    assert (w.idle_timeout_s, w.priority) == (30, 2)
    assert cfg.initialization_commands_for("ray.worker.default") == ["echo first"]
    assert cfg.auth.ssh_proxy_use_node_id and cfg.metadata == {"team": "ml"}
    assert cfg.head_start_commands == RAY_START_HEAD  # Ray's start commands run as written


def test_ssh_proxy_use_node_id_gives_the_proxy_the_node_id(tmp_path):
    from core.node import NodeInfo
    from transport import SSHAuth, runner_for

    node = NodeInfo(id="i-0abc", node_type="cpu", state="running", tags={}, internal_ip="10.0.0.5")
    auth = SSHAuth(user="ubuntu", private_key=None, known_hosts=tmp_path / "kh",
                   proxy_command="aws ssm start-session --target %h", proxy_use_node_id=True)
    assert runner_for(node, auth).proxy_host == "i-0abc"
    assert runner_for(node, SSHAuth(user="u", private_key=None, known_hosts=tmp_path / "kh")).proxy_host == "10.0.0.5"


def test_a_docker_section_is_checked_beside_other_problems(user_home):
    data = {"cluster_name": "c", "docker": {"image": "rayproject/ray-ml:latest-gpu", "contianer_name": "ray"}}
    with pytest.raises(ConfigError) as e:
        load_config(write_config(user_home / "c.yaml", data))
    assert e.value.problems[:2] == ["provider: required field is missing", "docker.contianer_name: unknown field"]


def test_a_missing_or_unreadable_private_key_is_named_before_any_host_is_contacted(user_home):
    data = {**RAY_FILES["onprem-minimal"], "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/nope"}}
    path = write_config(user_home / "c.yaml", data)
    r = cli("up", str(path), "--yes", home=user_home / "launch")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: auth.ssh_private_key: ~/.ssh/nope: no such file"


def test_every_file_validate_accepts_passes_the_schema(user_home):
    files = [*sorted((ROOT / "configs").glob("*.yaml")), *sorted((ROOT / "tests" / "data").glob("*.yaml"))]
    ssh = user_home / "user" / ".ssh"
    (ssh / "id_ed25519").write_text("key\n")
    for path in files:
        load_config(path)
        jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


# --- hostile files -----------------------------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\ncluster_name: c\nprovider: {type: local}\n"


def _many_types(n: int) -> str:
    return "cluster_name: c\nprovider: {type: local}\nhead_node_type: t0\navailable_node_types:\n" + "".join(
        f"  t{i}: {{resources: {{CPU: {i}}}}}\n" for i in range(n))


HOSTILE = {
    "not-utf8": (b"cluster_name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 17)"),
    "binary": (bytes(range(256)) * 64, "contains NUL bytes: not a text file"),
    "nul-bytes": (b"cluster_name: c\x00\n", "contains NUL bytes: not a text file"),
    "deep-flow": (("a: " + "[" * 100_000 + "]" * 100_000).encode(), "nested deeper than 64 levels"),
    "deep-block": ("".join(" " * i + f"k{i}:\n" for i in range(400)).encode(), "nested deeper than 64 levels"),
    "alias-bomb": (_bomb().encode(), "once YAML aliases are expanded (an alias bomb?)"),
    "huge-file": (b"# padding\n" * 200_000, "larger than 1 MiB"),
    "many-node-types": (_many_types(5000).encode(), "available_node_types: 5,000 node types; at most 1,000"),
    "huge-bad-value": (("cluster_name: c\nmax_workers: '" + "9" * 500_000 + "x'\n").encode(),
                       "max_workers: must be an integer (got '99999"),
    "not-a-mapping": (b"- just\n- a list\n", "must be a mapping of keys to values"),
    "bad-yaml": (b"cluster_name: [unclosed\n", "invalid YAML"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_get_one_clean_line_in_bounded_memory(name, tmp_path):
    content, expected = HOSTILE[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as e:
            load_config(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(e.value)
    assert expected in message, message
    assert peak < 200 * 2**20, f"{name}: {peak / 2**20:.0f} MiB"
    assert all(len(line) < 400 for line in e.value.problems)  # no bad value expanded into the message


def test_a_hostile_file_through_the_cli_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    r = cli("validate", str(path), home=tmp_path / "launch")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "alias bomb" in r.stderr


# Ray's own files use these forms too (each written here as a Ray user has it): accepted as Ray accepts them
RAY_FORMS = {
    "aws-cloudwatch": {  # accepted, with one warning that it is not applied
        **RAY_FILES["aws-minimal"], "provider": {
            "type": "aws", "region": "us-west-2", "availability_zone": "us-west-2a",
            "cloudwatch": {"agent": {"config": "cloudwatch/agent.json", "retryer": {"max_attempts": 120, "delay_seconds": 30}},
                           "dashboard": {"name": "dash", "config": "cloudwatch/dashboard.json"},
                           "alarm": {"config": "cloudwatch/alarm.json"}}}},
    "gcp-no-project": {  # the project: the credentials' own, at `up`
        "cluster_name": "minimal", "max_workers": 1,
        "provider": {"type": "gcp", "region": "us-west1", "availability_zone": "us-west1-a"}},
    "sync-continuously": {**RAY_FILES["aws-minimal"], "file_mounts_sync_continuously": True},
    "onprem-coordinator": {  # Ray's local example with its coordinator line: the hosts are the coordinator's
        **RAY_FILES["onprem-full"], "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"],
                                                 "coordinator_address": "10.0.0.9:1234"}},
}


@pytest.mark.parametrize("name", sorted(RAY_FORMS))
def test_rays_other_forms_are_accepted(name, user_home):
    cfg = load_config(write_config(user_home / f"{name}.yaml", RAY_FORMS[name]))
    jsonschema.validate(RAY_FORMS[name], json_schema())
    cloudwatch = [w for w in cfg.warnings if w.startswith("provider.cloudwatch")]
    assert len(cloudwatch) == (name == "aws-cloudwatch")


# What JSON Schema cannot say: rules that span fields of the file, or the disk (validate's alone)
SPANNING = {"available_node_types.cpu.max_workers", "available_node_types.cpu.min_workers", "head_node_type",
            "file_mounts"}


def test_the_schema_and_validate_give_every_file_of_the_corpus_the_same_verdict(user_home):
    """`launch schema` is `launch validate` for an editor: the corpus (Ray's files and forms, the shipped
    configs, and every bad field of test_config) gets the same verdict from both, except the rules that
    span fields, each named."""
    import math

    from tests.infra import local_cluster
    from tests.test_config import BAD, _set

    (user_home / "user" / ".ssh" / "id_ed25519").write_text("key\n")  # (a shipped config names it)
    validator = jsonschema.Draft202012Validator(json_schema())
    corpus = [(f"ray:{n}", d, user_home) for n, d in {**RAY_FILES, **RAY_FORMS}.items()]
    corpus += [(f"configs:{p.name}", yaml.safe_load(p.read_text()), p.parent)
               for p in sorted((ROOT / "configs").glob("*.yaml"))]
    for path, value, _ in BAD:
        if isinstance(value, float) and not math.isfinite(value):
            continue  # (.inf/.nan: no JSON number; validate refuses them by name)
        data = copy.deepcopy(local_cluster("c"))
        _set(data, path, value)
        corpus.append((path, data, user_home))
    disagree = []
    for name, data, base_dir in corpus:
        try:
            parse_config(copy.deepcopy(data), base_dir=base_dir)
            valid = True
        except ConfigError:
            valid = False
        if valid != validator.is_valid(data):
            disagree.append(name)
    assert set(disagree) == SPANNING, disagree
