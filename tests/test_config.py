"""Cluster config: good files validate, every rule rejects bad input with a one-line, field-named error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from lifecycle.config import load_config, parse_config
from lifecycle.hashing import launch_hash, runtime_hash
from lifecycle.spec import resolve
from tests.infra import ROOT, cli, local_cluster, write_config

DATA = Path(__file__).parent / "data"


@pytest.fixture
def user_keys(tmp_path, monkeypatch):
    """A HOME whose ~/.ssh holds the keys example configs name (validate checks they are readable)."""
    ssh = tmp_path / "user" / ".ssh"
    ssh.mkdir(parents=True)
    for name in ("id_ed25519", "id_rsa", "id_rsa.pub"):
        (ssh / name).write_text("key\n")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return ssh


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path, user_keys):
    cfg = load_config(path)
    assert cfg.head_node_type in cfg.available_node_types


def test_ray_file_validates_unchanged_with_ray_aliases():
    cfg = load_config(DATA / "ray_aws_example.yaml")
    assert cfg.provider.kind == "aws"
    assert cfg.head_start_commands[0] == "ray stop"  # head_start_ray_commands is an alias
    assert cfg.worker_start_commands[1].startswith("ray start --address")
    assert cfg.available_node_types["ray.worker.default"].node_config["InstanceMarketOptions"]["MarketType"] == "spot"
    # unset per-type max falls back to the cluster's max_workers, as in Ray; the head type's to 0
    assert cfg.worker_max("ray.worker.default") == 2
    assert cfg.worker_max("ray.head.default") == 0


def test_ray_onprem_local_type_maps_to_ssh(user_keys):
    cfg = load_config(DATA / "ray_onprem.yaml")
    assert cfg.provider.type == "local"
    assert cfg.provider.kind == "ssh"
    assert cfg.provider.worker_ips == ["10.0.0.2", "10.0.0.3"]


def test_our_keys_parse():
    cfg = parse_config(local_cluster("c", max_cost_per_hour=3.5))
    cfg2 = parse_config({**local_cluster("c"), "available_node_types": {
        "head": {"resources": {"CPU": 1}},
        "spotgpu": {"resources": {"GPU": 1}, "cost_per_hour": 0.9, "spot": True, "max_workers": 1},
    }})
    assert cfg.max_cost_per_hour == 3.5
    assert cfg2.available_node_types["spotgpu"].spot is True
    assert cfg2.available_node_types["spotgpu"].cost_per_hour == 0.9


def _set(d: dict, dotted: str, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _problems(data: dict, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data, base_dir=base_dir)
    return e.value.problems


# (mutation path, value, the exact problem line expected)
LOCAL = ("docker: provider.type 'local' runs nodes as processes on this machine, which cannot hold a "
         "container of their own; remove the image to run on the host")
BAD = [
    ("available_node_types.cpu.max_workers", 0, "available_node_types.cpu.max_workers: must be >= min_workers (1)"),
    ("available_node_types.cpu.min_workers", -1, "available_node_types.cpu.min_workers: must be >= 0 (got -1)"),
    ("available_node_types.cpu.min_workers", 9, [
        "available_node_types.cpu.max_workers: must be >= min_workers (9)",
        "available_node_types.cpu.min_workers: exceeds the cluster's max_workers (3)",
        "max_workers: must be >= the sum of the worker types' min_workers (9)",
    ]),
    ("max_workers", -1, "max_workers: must be >= 0 (got -1)"),
    ("upscaling_speed", 0, "upscaling_speed: must be > 0 (got 0.0)"),
    ("idle_timeout_minutes", -2, "idle_timeout_minutes: must be >= 0 (got -2.0)"),
    ("max_cost_per_hour", 0, "max_cost_per_hour: must be > 0 (got 0.0)"),
    ("runtime", {"owner_timeout_s": -1}, "runtime.owner_timeout_s: must be > 0 (got -1)"),
    ("cluster_name", "my cluster!", "cluster_name: must start with a letter and hold only letters, digits, '-' "
     "and '_' (at most 63 characters), got 'my cluster!'"),
    ("head_node_type", "nope", "head_node_type: 'nope' is not in available_node_types (cpu, gpu, head)"),
    ("available_node_types", {}, "available_node_types: must declare at least one node type"),
    ("provider.type", "kubernetes",
     "provider.type: unknown provider 'kubernetes'; expected one of local, ssh, coordinator, aws, gcp, azure, slurm, sim"),
    ("provider", {"type": "ssh"}, ["provider.head_ip: required for an on-prem (ssh) cluster",
                                   "auth.ssh_user: required for an on-prem (ssh) cluster"]),
    ("provider", {"type": "local", "head_ip": "10.0.0.1:22", "worker_ips": ["10.0.0.2:http"]}, [
        "auth.ssh_user: required for an on-prem (ssh) cluster",
        "provider.worker_ips.0: '10.0.0.2:http' has an invalid port"]),
    ("provider", {"type": "aws", "region": "us-west-2", "worker_ips": ["1.2.3.4"]},
     "provider.worker_ips: only valid with head_ip for an on-prem cluster (provider.type 'aws')"),
    # each provider owns its typed section: a misspelt key is named, a missing required one too
    ("provider", {"type": "aws", "regoin": "us-west-2"},
     ["provider.region: required field is missing", "provider.regoin: unknown field"]),
    ("provider", {"type": "local", "capacity_error": ["gpu"]}, "provider.capacity_error: unknown field"),
    ("provider", {"type": "local", "head_ip": "10.0.0.1", "worker_ips": [], "ssh_prot": 22},
     ["auth.ssh_user: required for an on-prem (ssh) cluster", "provider.ssh_prot: unknown field"]),
    ("available_node_types.gpu.resources.GPU", -1, "available_node_types.gpu.resources.GPU: must be >= 0 (got -1.0)"),
    ("available_node_types.gpu.resources", {"bad name": 1},
     "available_node_types.gpu.resources: resource name 'bad name' must be non-empty without spaces"),
    ("available_node_types.gpu.resources.CPU", float("inf"),
     "available_node_types.gpu.resources.CPU: must be a finite number (got inf)"),
    ("idle_timeout_minutes", float("nan"), "idle_timeout_minutes: must be a finite number (got nan)"),
    ("available_node_types.gpu.cost_per_hour", -0.5, "available_node_types.gpu.cost_per_hour: must be >= 0 (got -0.5)"),
    # Ray's docker section: checked for what it is, and refused where nodes are processes of this machine
    ("docker", {"image": "rayproject/ray:latest"},
     ["docker.container_name: required with an image (the container's name on the node)", LOCAL]),
    ("docker", {"head_image": "x y", "container_name": "ray"},
     ["docker.head_image: 'x y' is not an image reference ([registry/]name[:tag])", LOCAL]),
    ("available_node_types.gpu.docker", {"worker_image": "x", "container_name": "-a"},
     ["available_node_types.gpu.docker.container_name: '-a' is not a container name (letters, digits, '_', '.' "
      "and '-')", LOCAL]),
    ("available_node_types.gpu.docker", {"worker_image": "x"},
     ["available_node_types.gpu.docker.container_name: required with an image (the container's name on the node)",
      LOCAL]),
    ("docker", {"image": "x", "container_name": "c", "pull_befor_run": True}, "docker.pull_befor_run: unknown field"),
    ("cluster_synced_files", ["a"], "cluster_synced_files: not supported yet; use file_mounts"),
    ("file_mounts", {"~/data": "./does-not-exist"}, "file_mounts.~/data: local path './does-not-exist' does not exist"),
    ("max_workers", "many", "max_workers: must be an integer (got 'many')"),
    ("available_node_types.cpu.spot", "maybe", "available_node_types.cpu.spot: must be true or false (got 'maybe')"),
    ("setup_commands", "echo hi", "setup_commands: must be a list (got 'echo hi')"),
    ("bogus_key", 1, "bogus_key: unknown field"),
    ("available_node_types.cpu.min_wrokers", 1, "available_node_types.cpu.min_wrokers: unknown field"),
    ("auth.password", "x", "auth.password: unknown field"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_each_rule_names_the_field(path, value, expected, tmp_path):
    data = copy.deepcopy(local_cluster("c"))
    _set(data, path, value)
    assert _problems(data, base_dir=tmp_path) == (expected if isinstance(expected, list) else [expected])


def test_missing_required_fields():
    problems = _problems({"cluster_name": "c"})
    assert "provider: required field is missing" in problems
    assert "available_node_types: required field is missing" in problems
    assert "head_node_type: required field is missing" in problems


def test_all_semantic_problems_reported_at_once():
    data = local_cluster("c")
    data["available_node_types"]["cpu"]["max_workers"] = 0
    data["available_node_types"]["gpu"]["resources"]["GPU"] = -1
    data["upscaling_speed"] = -1
    problems = _problems(data)
    assert len(problems) == 3, problems


def test_sum_of_min_workers_within_max_workers():
    data = local_cluster("c", max_workers=2)
    data["available_node_types"]["cpu"]["min_workers"] = 2
    data["available_node_types"]["gpu"]["min_workers"] = 1
    assert _problems(data) == ["max_workers: must be >= the sum of the worker types' min_workers (3)"]


def test_legacy_and_non_mapping_documents():
    # empty legacy keys are dropped with a warning, as Ray does; non-empty ones are refused by name
    cfg = parse_config({**local_cluster("c"), "head_node": {}, "worker_nodes": None})
    assert cfg.warnings == ["head_node: empty legacy key ignored (as Ray does)",
                            "worker_nodes: empty legacy key ignored (as Ray does)"]
    problems = _problems({**local_cluster("c"), "worker_nodes": {"InstanceType": "m5.large"}})
    assert problems == ["worker_nodes: the legacy head_node/worker_nodes format is not supported; move its "
                        "node_config into available_node_types.<type>.node_config"]
    assert _problems(["a"]) == ["(top level): the cluster config must be a mapping of keys to values"]


def test_file_mounts_resolve_relative_to_the_config_file(tmp_path):
    (tmp_path / "payload").mkdir()
    path = write_config(tmp_path / "c.yaml", local_cluster("c", file_mounts={"~/p": "./payload"}))
    cfg = load_config(path)
    assert cfg.local_mount_path("./payload") == tmp_path / "payload"


def test_hashes_separate_instance_from_setup(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f.txt").write_text("one")
    base = local_cluster("c", file_mounts={"~/m": "./m"})
    state = tmp_path / "state"

    def spec_of(data):
        return resolve(parse_config(copy.deepcopy(data), base_dir=tmp_path), state)

    spec = spec_of(base)
    cfg = spec.config
    lh, rh = launch_hash(cfg, "cpu"), runtime_hash(spec, "cpu", False)

    changed_setup = spec_of({**base, "setup_commands": ["echo v2"]})
    assert launch_hash(changed_setup.config, "cpu") == lh
    assert runtime_hash(changed_setup, "cpu", False) != rh

    node_cfg = copy.deepcopy(base)
    node_cfg["available_node_types"]["cpu"]["node_config"] = {"InstanceType": "m5.large"}
    changed_node = spec_of(node_cfg)
    assert launch_hash(changed_node.config, "cpu") != lh
    assert runtime_hash(changed_node, "cpu", False) == rh

    (tmp_path / "m" / "f.txt").write_text("two")  # file mount content is part of the runtime hash
    assert runtime_hash(spec_of(base), "cpu", False) != rh
    assert launch_hash(spec_of(base).config, "cpu") == lh
    # a worker set up against another head address is redone
    assert runtime_hash(spec, "cpu", False, head_address="a:1") != runtime_hash(spec, "cpu", False, head_address="b:1")


# --- through the CLI -------------------------------------------------------------------------------


def test_cli_validate_reports_every_problem_and_exits_2(tmp_path):
    data = local_cluster("c")
    data["available_node_types"]["cpu"]["max_workers"] = 0
    data["upscaling_speed"] = 0
    path = write_config(tmp_path / "bad.yaml", data)
    r = cli("validate", str(path), home=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "error: upscaling_speed: must be > 0 (got 0.0)",
        "error: available_node_types.cpu.max_workers: must be >= min_workers (1)",
    ]
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_validate_names_a_misspelt_provider_key(tmp_path):
    # the provider's own typed section checks its keys; the message names the field, in one line
    data = {**local_cluster("c"), "provider": {"type": "aws", "regoin": "us-west-2"}}
    r = cli("validate", str(write_config(tmp_path / "typo.yaml", data)), home=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert r.stderr.strip().splitlines() == ["error: provider.region: required field is missing",
                                             "error: provider.regoin: unknown field"]


def test_cli_up_with_bad_config_calls_no_provider(tmp_path):
    data = local_cluster("badup")
    data["available_node_types"]["cpu"]["max_workers"] = 0
    path = write_config(tmp_path / "bad.yaml", data)
    r = cli("up", str(path), "--yes", home=tmp_path / "home")
    assert r.returncode == 2
    assert "available_node_types.cpu.max_workers" in r.stderr
    assert not (tmp_path / "home" / "clusters" / "badup").exists()


def test_cli_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    r = cli("validate", str(bad), home=tmp_path)
    assert r.returncode == 2 and "invalid YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("validate", str(tmp_path / "nope.yaml"), home=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_cli_validate_good_file(tmp_path):
    r = cli("validate", "configs/local.yaml", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "cpu(0-2)" in r.stdout


def test_cli_schema_is_json_schema_of_the_config(tmp_path):
    r = cli("schema", home=tmp_path)
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    # node types and the head type may come from the provider's defaults, as in Ray
    assert set(schema["required"]) == {"cluster_name", "provider"}
    assert "cost_per_hour" in json.dumps(schema["$defs"]["NodeTypeConfig"])
    assert schema["properties"]["head_start_ray_commands"] == schema["properties"]["head_start_commands"]


def test_yaml_round_trip_of_shipped_demo():
    data = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    assert parse_config(data, base_dir=ROOT / "configs").cluster_name == "demo"


def test_an_unknown_provider_is_named_first_when_its_defaults_are_missing_too(tmp_path):
    """A Ray user's minimal file leans on the provider's defaults for its node types: with a misspelt
    provider type there are none, and the type is what to fix."""
    problems = _problems({"cluster_name": "c", "provider": {"type": "awz"}}, base_dir=tmp_path)
    assert problems[0] == ("provider.type: unknown provider 'awz'; expected one of local, ssh, coordinator, aws, gcp, azure, "
                           "slurm, sim")


def test_first_line_of_a_library_message():
    from core.errors import first_line

    assert first_line("boom\nTraceback (most recent call last):\n  ...") == "boom"
    assert first_line("x" * 500) == "x" * 300 and first_line("x" * 500, 200) == "x" * 200
    assert first_line("") == ""  # a gRPC refusal may carry no details: "".splitlines()[0] raised here
