"""The Slurm provider: the holder job's request, tags in the job's comment, squeue's lines and sbatch's
errors (pure), then create / list / tag / terminate against the shared real Slurm (tests/infra/slurm.py):
a holder job that cannot start yet is listed pending with Slurm's reason, a refused request names its
node type with Slurm's own line, and terminate leaves nothing in the queue."""

from __future__ import annotations

import pytest

from core.config import parse_config
from core.errors import ConfigError, InvalidRequest, ProviderError, QuotaError, TransientError
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, KIND_WORKER, TAG_CLUSTER, TAG_KIND, TAG_NODE_TYPE
from providers import slurm as sp
from tests.infra import wait_for


def _config(provider: dict | None = None, **types) -> dict:
    return {"cluster_name": "hpc", "max_workers": 4,
            "provider": {"type": "slurm", **(provider or {})},
            "available_node_types": {"head": {"resources": {"CPU": 0}}, **types}, "head_node_type": "head"}


def test_a_node_type_becomes_the_holder_jobs_request():
    cfg = parse_config(_config({"partition": "batch", "account": "proj", "time_limit": "12:00:00",
                                "sbatch_options": ["--exclusive"]},
                               a100={"node_config": {"cpus": 8, "memory": "64G", "gres": "gpu:a100:2",
                                                     "partition": "gpu", "qos": "high"}}))
    section = sp.Section.of(cfg.provider)
    nc = sp.node_config(cfg, "a100")
    args = sp.sbatch_args(section, nc, "hpc", {TAG_CLUSTER: "hpc"})
    assert "--cpus-per-task=8" in args and "--mem=65536" in args and "--gres=gpu:a100:2" in args
    # the type's own partition wins over the provider's; the rest come from the provider
    assert "--partition=gpu" in args and "--partition=batch" not in args
    assert "--account=proj" in args and "--qos=high" in args and "--time=12:00:00" in args
    assert args[-1] == "--exclusive" and "--job-name=launch-hpc" in args and "--no-requeue" in args
    res = sp.node_resources(nc, "x")
    assert res == {"CPU": 8.0, "memory": 64 * 2**30, "GPU": 2.0, "accelerator_type:A100": 1.0}


@pytest.mark.parametrize("gres,gpus", [("gpu:2", 2), ("gpu", 1), ("gpu:v100:4", 4), ("gpu:t4", 1),
                                       ("mps:100,gpu:3", 3), (None, 0)])
def test_gpus_counted_from_gres(gres, gpus):
    assert sp.gres_gpus(gres, "x")[0] == gpus


def test_bad_node_config_names_the_field():
    cfg = parse_config(_config(cpu={"node_config": {"cpus": 2, "memroy": "1G"}}))
    with pytest.raises(ConfigError, match=r"available_node_types\.cpu\.node_config\.memroy"):
        sp.node_config(cfg, "cpu")
    with pytest.raises(ConfigError, match=r"x\.memory: 'lots'"):
        sp.memory_mb("lots", "x")


def test_tags_round_trip_through_the_comment_whatever_they_hold():
    tags = {TAG_CLUSTER: "my cluster|1", "launch-status": "pending", "odd": "a=b c,d\"e'f"}
    comment = sp.encode_tags(tags)
    assert all(c.isalnum() or c in "-_:" for c in comment)  # safe for squeue's separators and scontrol
    assert sp.decode_tags(comment) == tags
    assert sp.decode_tags("someone else's job") is None and sp.decode_tags("launch1:%%%") is None


def test_squeue_lines_keep_a_comment_with_separators_whole():
    out = "12|PENDING||Resources|2026-11-24T06:16:12|launch1:abc|def\n13|RUNNING|node7|None|2026-11-24T06:16:13|x\n"
    jobs = sp.parse_squeue(out)
    assert [j["id"] for j in jobs] == ["12", "13"] and jobs[0]["comment"] == "launch1:abc|def"
    assert jobs[0]["reason"] == "Resources" and jobs[1]["nodes"] == "node7"
    assert sp.parse_node_addrs("NodeName=node7 Arch=x86_64 NodeAddr=10.1.0.7 NodeHostName=node7\n") == {
        "node7": "10.1.0.7"}


@pytest.mark.parametrize("line,kind", [
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", InvalidRequest),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     InvalidRequest),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available", InvalidRequest),
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification", InvalidRequest),
    ("sbatch: error: QOSMaxSubmitJobPerUserLimit", QuotaError),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's "
     "size and/or time limits)", QuotaError),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", TransientError),
    ("sbatch: error: something new", ProviderError),
])
def test_sbatch_errors_map_to_what_the_core_does(line, kind):
    err = sp.sbatch_error("gpu", "sbatch: warning: noise\n" + line + "\n")
    assert type(err) is kind
    assert "gpu" in str(err) and line.split("error: ")[-1] in str(err)  # names the type, keeps Slurm's line


# --- against the real Slurm ------------------------------------------------------------------------------


@pytest.fixture
def provider(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cfg = parse_config(_config(
        {"node_root": str(tmp_path / "nodes")},
        cpu={"node_config": {"cpus": 2, "memory": 100}},
        big={"node_config": {"cpus": 4}},
        gpu={"node_config": {"cpus": 1, "gres": "gpu:1", "partition": "gpu"}},
        nopart={"node_config": {"partition": "nosuch"}},
        toomany={"node_config": {"gres": "gpu:8"}},
    ))
    boot = sp.bootstrap(cfg, tmp_path / "state")
    yield sp.Provider(ClusterSpec(config=cfg, provider_state=boot.state))
    slurm.scancel_all()


def _tags(node_type: str, kind: str = KIND_WORKER) -> dict:
    return {TAG_CLUSTER: "hpc", TAG_KIND: kind, TAG_NODE_TYPE: node_type, "launch-status": "pending"}


def test_holder_jobs_are_listed_pending_with_slurms_reason_then_running(provider, slurm):
    (a,) = provider.create("cpu", 1, _tags("cpu"))
    (b,) = provider.create("big", 1, _tags("big"))  # needs the whole 4-CPU node: waits for `a`
    assert a.id.isdigit() and set(slurm.queue()) == {a.id, b.id}
    nodes = wait_for(lambda: {n.id: n for n in provider.list({TAG_CLUSTER: "hpc"})}
                     if any(n.state == "running" for n in provider.list({TAG_CLUSTER: "hpc"})) else None,
                     timeout=30, what="the first holder job running")
    assert nodes[a.id].state == "running" and nodes[a.id].internal_ip == "127.0.0.1"
    assert nodes[a.id].tags[TAG_NODE_TYPE] == "cpu" and nodes[a.id].slurm.home.endswith(f"/hpc/{a.id}")
    assert nodes[b.id].state == "pending" and nodes[b.id].internal_ip is None
    # Slurm says "Priority" (a job ahead of it) until a pass of its scheduler, main or backfill (every
    # 30 s), has weighed it against the running one: then "Resources"
    wait_for(lambda: next(n for n in provider.list({TAG_CLUSTER: "hpc"}) if n.id == b.id).detail
             == "queued in Slurm (Resources)", timeout=45, what="Slurm's reason for the waiting job")

    provider.set_tags(a.id, {"launch-status": "up-to-date"})
    (listed,) = [n for n in provider.list({"launch-status": "up-to-date"})]
    assert listed.id == a.id and listed.tags[TAG_CLUSTER] == "hpc"

    provider.terminate([a.id, b.id, a.id])
    wait_for(lambda: not provider.list({TAG_CLUSTER: "hpc"}), timeout=30, what="both jobs gone from the list")
    provider.terminate([a.id])  # idempotent: an ended job is no error
    with pytest.raises(ProviderError):
        provider.set_tags(a.id, {"x": "y"})


def test_a_gpu_holder_gets_its_own_gpus(provider, slurm):
    (g,) = provider.create("gpu", 1, _tags("gpu"))
    node = wait_for(lambda: next((n for n in provider.list({}) if n.id == g.id and n.state == "running"), None),
                    timeout=30, what="the GPU holder running")
    from transport import SSHAuth, runner_for

    runner = runner_for(node, SSHAuth(user="root", private_key=None, known_hosts=slurm.root / "kh"))
    runner.wait_ready(30)
    out: list[str] = []
    assert runner.run("echo gpus=$CUDA_VISIBLE_DEVICES home=$HOME", on_output=out.append).ok
    assert out[-1].strip() == f"gpus=0 home={node.slurm.home}"
    runner.put_file(b"secret\n", "~/.x/token", mode=0o600)
    assert runner.read_file("~/.x/token") == b"secret\n" and runner.read_file("~/nothing") is None
    mode: list[str] = []
    runner.run("stat -c %a .x/token", on_output=mode.append)
    assert mode[-1].strip() == "600"
    provider.terminate([g.id])


def test_refused_requests_fail_fast_naming_the_node_type(provider, slurm):
    with pytest.raises(InvalidRequest, match=r"available_node_types\.nopart: .*Invalid partition name"):
        provider.create("nopart", 1, _tags("nopart"))
    with pytest.raises(InvalidRequest, match=r"available_node_types\.toomany: .*(configuration is not available|"
                                             r"Invalid generic resource)"):
        provider.create("toomany", 1, _tags("toomany"))
    assert slurm.queue() == []  # nothing half-made


def test_the_head_is_the_login_host(provider):
    (head,) = provider.create("head", 1, _tags("head", KIND_HEAD))
    assert head.local_home and head.slurm is None and head.internal_ip
    assert [n.id for n in provider.list({TAG_KIND: KIND_HEAD})] == [head.id]
    provider.set_tags(head.id, {"launch-status": "up-to-date"})
    assert provider.list({TAG_KIND: KIND_HEAD})[0].tags["launch-status"] == "up-to-date"
    provider.terminate([head.id])
    assert provider.list({}) == []


def test_a_holder_job_queued_past_its_wait_is_given_up_with_slurms_reason(provider, slurm):
    from core.errors import LaunchError
    from transport import SSHAuth, runner_for

    (a,) = provider.create("cpu", 1, _tags("cpu"))
    wait_for(lambda: any(n.id == a.id and n.state == "running" for n in provider.list({})), timeout=30,
             what="the first holder running")
    (b,) = provider.create("big", 1, _tags("big"))  # 4 CPUs: cannot start while `a` holds 2 of them
    runner = runner_for(b, SSHAuth(user="root", private_key=None, known_hosts=slurm.root / "kh"))
    with pytest.raises(LaunchError, match=rf"node {b.id} \(Slurm job\): not running after 4s in the queue "
                                          r"\(Slurm says PENDING\|(Resources|Priority|None)\)"):
        runner.wait_ready(4)
    provider.terminate([a.id, b.id])
    with pytest.raises(LaunchError, match="holder job ended"):
        runner.wait_ready(30)


def test_the_holder_script_takes_node_root_literally(tmp_path):
    """A node_root with spaces or shell syntax is a path, never a command: the holder makes that folder."""
    import subprocess

    root = tmp_path / "odd root $(touch pwned)"
    script = sp.holder_script(str(root), "hpc").split("exec >>")[0]  # up to where it would start waiting
    subprocess.run(["bash", "-c", script + 'echo "$HOME"'], env={"SLURM_JOB_ID": "7", "PATH": "/usr/bin:/bin"},
                   cwd=tmp_path, check=True, capture_output=True)
    assert (root / "hpc" / "7" / ".launch-runtime").is_dir() and not (tmp_path / "pwned").exists()
