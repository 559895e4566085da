"""Ray's `docker:` section as it applies to a node (core.config), what the host says before its container
is made, and the `docker run` that follows from both (transport.docker): pure logic, no daemon."""

from __future__ import annotations

from core.config import ClusterConfig, Container, DockerConfig
from tests.infra import local_cluster
from transport.docker import SHM_MAX_BYTES, HostFacts, parse_facts, run_words

RAY_FULL = {"image": "rayproject/ray-ml:latest-gpu", "container_name": "ray_container", "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"]}


def _cfg(docker: dict | None, **per_type) -> ClusterConfig:
    data = local_cluster("c")
    data["provider"] = {"type": "aws", "region": "us-west-2"}
    if docker is not None:
        data["docker"] = docker
    for name, section in per_type.items():
        data["available_node_types"][name]["docker"] = section
    return ClusterConfig.model_validate(data)


def _facts(**kw) -> HostFacts:
    base = dict(has_cli=True, cli_error="", image="", running=False, gpus=0, nvidia_toolkit=False,
                mem_available_bytes=8 * 1024**3)
    return HostFacts(**{**base, **kw})


def test_head_and_worker_images_and_run_options_as_ray_merges_them():
    cfg = _cfg({**RAY_FULL, "head_image": "head:1", "head_run_options": ["--cap-add SYS_PTRACE"],
                "worker_run_options": ["-v /data:/data"]}, gpu={"worker_image": "cuda:12"})
    head = cfg.container_for(cfg.head_node_type, is_head=True)
    assert head.image == "head:1" and head.name == "ray_container"
    assert head.run_options == ("--ulimit nofile=65536:65536", "--cap-add SYS_PTRACE")
    cpu, gpu = cfg.container_for("cpu", False), cfg.container_for("gpu", False)
    assert cpu.image == RAY_FULL["image"] and cpu.run_options == ("--ulimit nofile=65536:65536", "-v /data:/data")
    assert gpu.image == "cuda:12" and gpu.name == "ray_container"  # the type's keys over the cluster's
    assert _cfg({"image": "", "container_name": "ray_container"}).container_for("cpu", False) is None
    assert _cfg(None).container_for("cpu", False) is None
    assert _cfg({**RAY_FULL, "use_podman": True}).container_for("cpu", False).cli == "podman"


def test_a_fresh_host_gets_rays_container_with_shm_from_its_memory():
    c = DockerConfig(**RAY_FULL).container(is_head=False)
    words = run_words(c, _facts())
    assert words[:8] == ["docker", "run", "--rm", "--name", "ray_container", "-d", "-it", "--net=host"]
    assert f"--shm-size={int(8 * 1024**3 * 0.33)}b" in words
    assert "--gpus" not in words
    assert words[-4:] == ["LANG=C.UTF-8", "--ulimit nofile=65536:65536", "rayproject/ray-ml:latest-gpu", "bash"]
    huge = run_words(c, _facts(mem_available_bytes=2 * 1024**4))
    assert f"--shm-size={SHM_MAX_BYTES}b" in huge


def test_gpus_are_passed_in_only_where_the_nvidia_toolkit_can():
    c = DockerConfig(**RAY_FULL).container(is_head=False)
    assert run_words(c, _facts(gpus=4, nvidia_toolkit=True))[8:10] == ["--shm-size=2834678415b", "--gpus"]
    assert "--gpus" not in run_words(c, _facts(gpus=4, nvidia_toolkit=False))  # nothing could pass them
    assert "--gpus" not in run_words(c, _facts(gpus=0, nvidia_toolkit=True))
    off = DockerConfig(**RAY_FULL, disable_automatic_runtime_detection=True).container(is_head=False)
    assert "--gpus" not in run_words(off, _facts(gpus=4, nvidia_toolkit=True))
    own = DockerConfig(**{**RAY_FULL, "run_options": ["--runtime=nvidia"]}).container(is_head=False)
    assert "--gpus" not in run_words(own, _facts(gpus=4, nvidia_toolkit=True))  # the user's choice stands


def test_the_users_shm_size_or_disabled_detection_wins():
    mine = DockerConfig(**{**RAY_FULL, "run_options": ["--shm-size=1g"]}).container(is_head=True)
    words = run_words(mine, _facts())
    assert [w for w in words if "shm-size" in w] == ["--shm-size=1g"]
    off = DockerConfig(**RAY_FULL, disable_shm_size_detection=True).container(is_head=True)
    assert not [w for w in run_words(off, _facts()) if "shm-size" in w]


def test_names_and_images_reach_the_shell_quoted():
    c = Container(image="reg:5000/img:tag", name="ray.c_1", run_options=(), pull_before_run=False,
                  detect_gpus=True, detect_shm_size=False)
    assert run_words(c, _facts())[-2:] == ["reg:5000/img:tag", "bash"]


def test_what_the_host_says_is_read_line_by_line():
    facts = parse_facts(["Welcome to the node", "cli: ok", "container: 10.0.0.1:5000/py313 true", "gpus: 2",
                         "toolkit: yes", "mem: 1024"])
    assert facts == HostFacts(True, "", "10.0.0.1:5000/py313", True, 2, True, 1024 * 1024)
    assert parse_facts(["cli: ok", "container: ", "gpus: 0", "toolkit: no", "mem: "]).image == ""
    broken = parse_facts(["cli: broken permission denied while trying to connect to the Docker daemon socket"])
    assert not broken.has_cli and broken.cli_error.startswith("permission denied")
    assert parse_facts(["cli: missing"]) == HostFacts(False, "", "", False, 0, False, 0)
