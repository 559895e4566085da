"""The `slurm` provider: worker nodes are Slurm allocations, borrowed while work is queued.

A worker node is a *holder job*: `sbatch` of a small script sized like the node type (CPUs, memory,
GRES, partition, account, QoS, time limit). The script makes the node's HOME on the compute node
(`node_root/CLUSTER/JOBID`), then waits on a FIFO there until launch has installed the runtime and
says start: from then on the node's runtime supervisor *is* the job's batch step, so the agent lives
inside the allocation (in its cgroup, with the GPUs Slurm gave the job) and ends with it. Commands reach
the node with `srun --jobid=ID --overlap` (transport/srun.py); no SSH to compute nodes is needed.

- Tags (cluster, kind, type, status, hashes) are the job's comment, one reversible encoding; the job's
  name is `launch-CLUSTER`. `list` reads squeue; `set_tags` is `scontrol update`; `terminate` scancel.
- A job still PENDING is capacity on the way, shown with Slurm's reason; the node's setup waits for it
  up to `queue_wait_s`, then it is given up (cancelled) and its type backed off.
- A holder job that ends on its own (time limit, preemption, node failure) leaves the queue: the node is
  gone, the autoscaler requeues its work and plans a replacement.
- The head runs on the login host, the machine that runs `launch up` (its record is a file in the
  cluster's state dir), and binds the address compute nodes reach it at (`login_ip`, else detected).

Every Slurm command gets SLURM_CONF from `provider.slurm_conf` (or the environment `launch up` ran in),
kept in the spec, so the autoscaler on the head calls the same Slurm.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.config import ClusterConfig, pydantic_problems
from core.entry_points import NODE_CONTROL
from core.errors import ConfigError, InvalidRequest, NodeNotFound, ProviderError, QuotaError, TransientError
from core.files import locked_json
from core.node import SlurmJob
from core.paths import HOLDER_FIFO, HOLDER_SIGNALLED, NODE_DIR
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_CLUSTER, TAG_KIND
from providers.base import Bootstrapped, Capabilities, CommonSection, NodeInfo, ProviderBase, ProviderFacts
from providers.local import kill_node_processes

SLURM_TIMEOUT_S = 60.0
COMMENT_PREFIX = "launch1:"
# squeue states of a job that still holds (or will hold) its allocation; the rest are ending or ended
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                  "RESIZING", "SIGNALING", "STAGE_OUT"}
RUNNING_STATES = {"RUNNING", "SUSPENDED"}


FACTS = ProviderFacts(notices="slurm", notices_on_every_node=True)
NOTICE_SIGNAL = "USR1"


class Section(CommonSection):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None  # sbatch's --time: minutes, or [D-]HH:MM:SS
    # how long before a holder job's end its node is told (sbatch --signal=B:USR1@notice_s): at its time
    # limit, and at a preemption where the site sets PreemptParameters=send_user_signal (0: never told)
    notice_s: int = Field(default=120, ge=0, le=65535)
    constraint: str | None = None
    sbatch_options: list[str] = Field(default_factory=list)  # more sbatch options, as given
    slurm_conf: str | None = None  # SLURM_CONF for every Slurm command (default: the environment's)
    node_root: str = "~/.launch-slurm"  # on the compute nodes: each node's HOME is NODE_ROOT/CLUSTER/JOBID
    queue_wait_s: float = Field(default=1800.0, gt=0)  # a holder job pending longer is given up
    # where the head runs: on the login host that runs `launch up`, or in an allocation of its own (the
    # head node type's node_config is its request: give it a long time_limit)
    head: Literal["login", "allocation"] = "login"
    # a login head on another host, reached over SSH (`auth`), as Ray's on-prem head_ip; unset: this machine
    head_ip: str | None = None
    ssh_port: int = Field(default=22, gt=0, le=65535)
    login_ip: str | None = None  # where compute nodes reach a login-host head (default: this host's address)
    head_port: int = Field(default=0, ge=0, le=65535)
    head_bind_host: str = ""  # "": loopback and login_ip

    def node_wait_s(self) -> float:
        return self.queue_wait_s + self.ssh_wait_s


class NodeConfig(BaseModel):
    """A node type's `node_config`: the holder job's request. Unset keys take the provider's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cpus: int = Field(default=1, gt=0)  # --cpus-per-task
    memory: str | int | None = None  # --mem: MB, or with a unit (16G)
    gres: str | None = None  # --gres, e.g. gpu:a100:2
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None
    constraint: str | None = None
    sbatch_options: list[str] = Field(default_factory=list)


# --- pure parts: the request, the tags, squeue's lines -----------------------------------------------


def node_config(config: ClusterConfig, node_type: str) -> NodeConfig:
    try:
        return NodeConfig.model_validate(config.node_type(node_type).node_config or {})
    except ValidationError as e:
        raise ConfigError(pydantic_problems(e, ("available_node_types", node_type, "node_config"))) from None


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def memory_mb(value: str | int | None, where: str) -> float | None:
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{where}.memory: {value!r} is not an amount of memory (MB, or with K/M/G/T)")
    return float(m.group(1)) * _MEM_UNITS[(m.group(2) or "M").upper()]


def gres_gpus(gres: str | None, where: str) -> tuple[int, str | None]:
    """GPUs a --gres value asks for, and their type if named: `gpu:a100:2` -> (2, 'a100')."""
    count, kind = 0, None
    for part in (gres or "").split(","):
        fields = part.strip().split(":")
        if fields[0] != "gpu":
            continue
        if len(fields) == 1:
            count += 1
        elif fields[-1].isdigit():
            count += int(fields[-1])
            kind = fields[1] if len(fields) == 3 else kind
        elif len(fields) == 2:
            count, kind = count + 1, fields[1]
        else:
            raise ConfigError(f"{where}.gres: {gres!r} is not a GRES request Slurm takes (e.g. gpu:a100:2)")
    return count, kind


def node_resources(nc: NodeConfig, where: str) -> dict[str, float]:
    res: dict[str, float] = {"CPU": float(nc.cpus)}
    mb = memory_mb(nc.memory, where)
    if mb is not None:
        res["memory"] = mb * 1024 * 1024
    gpus, kind = gres_gpus(nc.gres, where)
    if gpus:
        res["GPU"] = float(gpus)
        if kind:
            res[f"accelerator_type:{kind.upper()}"] = 1.0
    return res


def encode_tags(tags: dict[str, str]) -> str:
    raw = json.dumps(tags, sort_keys=True, separators=(",", ":")).encode()
    return COMMENT_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_tags(comment: str) -> dict[str, str] | None:
    """The tags of a launch holder job, or None for any other comment."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    body = comment[len(COMMENT_PREFIX):]
    try:
        tags = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error):
        return None
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None


def job_name(cluster: str) -> str:
    return f"launch-{cluster}"


def sbatch_args(section: Section, nc: NodeConfig, cluster: str, tags: dict[str, str]) -> list[str]:
    """The holder job's sbatch options: the node type's request over the provider's defaults."""
    args = ["--parsable", f"--job-name={job_name(cluster)}", f"--comment={encode_tags(tags)}",
            "--nodes=1", "--ntasks=1", f"--cpus-per-task={nc.cpus}", "--output=/dev/null", "--no-requeue"]
    if section.notice_s:  # the holder's shell is signalled ahead of the end (holder_script): the node's notice
        args.append(f"--signal=B:{NOTICE_SIGNAL}@{section.notice_s}")
    if nc.memory is not None:
        args.append(f"--mem={int(memory_mb(nc.memory, 'node_config') or 0)}")
    if nc.gres:
        args.append(f"--gres={nc.gres}")
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos"),
                      ("time_limit", "--time"), ("constraint", "--constraint")):
        value = getattr(nc, key) or getattr(section, key)
        if value:
            args.append(f"{flag}={value}")
    return args + list(section.sbatch_options) + list(nc.sbatch_options)


def holder_script(node_root: str, cluster: str) -> str:
    """The holder job: the node's HOME, then the node's runtime supervisor once launch says start.
    `runtime.node start` writes the interpreter to run into the FIFO (runtime/node.py)."""
    node_dir, fifo, signalled = (f'"$HOME"/{p[2:].replace("{node}", "$(uname -n)")}'
                                 for p in (NODE_DIR, HOLDER_FIFO, HOLDER_SIGNALLED))
    return f"""#!/bin/bash
# launch: this job holds a node of cluster {cluster} while the cluster needs it
umask 077
export HOME={shlex.quote(f"{node_root}/{cluster}")}/$SLURM_JOB_ID
mkdir -p {node_dir} && cd "$HOME" || exit 1
exec >>"$HOME/holder.log" 2>&1
echo "holding job $SLURM_JOB_ID on $(hostname), GPUs: ${{CUDA_VISIBLE_DEVICES:-none}}"
fifo={fifo}
rm -f "$fifo" && mkfifo -m 600 "$fifo" || exit 1
trap 'rm -rf "$HOME"' EXIT
trap 'kill -TERM $pid 2>/dev/null; wait $pid; exit 0' TERM
# Slurm's notice (--signal=B:{NOTICE_SIGNAL}@notice_s): the node's agent reads it (runtime/notices.py); the node
# runs on until the job's end
trap 'date +%s >{signalled}' {NOTICE_SIGNAL}
read -r python <"$fifo" || exit 1
"$python" -m {NODE_CONTROL} supervise &
pid=$!
while kill -0 $pid 2>/dev/null; do wait $pid; done  # (a trapped signal ends a wait, not the node)
"""


def parse_squeue(out: str) -> list[dict]:
    """squeue -o '%i|%T|%N|%r|%V|%k' lines (the comment last: it may hold anything)."""
    jobs = []
    for line in out.splitlines():
        fields = line.split("|", 5)
        if len(fields) < 6:
            continue
        job_id, state, nodes, reason, submitted, comment = fields
        jobs.append({"id": job_id.strip(), "state": state.strip().upper(), "nodes": nodes.strip(),
                     "reason": reason.strip(), "submitted": submitted.strip(), "comment": comment.strip()})
    return jobs


def parse_node_addrs(out: str) -> dict[str, str]:
    """`scontrol show node -o` lines -> NodeName -> NodeAddr."""
    addrs = {}
    for line in out.splitlines():
        kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "NodeName" in kv:
            addrs[kv["NodeName"]] = kv.get("NodeAddr") or kv["NodeName"]
    return addrs


def _submitted_at(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return time.time()


# errors sbatch prints, mapped once to what the core does with them
_QUOTA = ("maxsubmit", "submit limit", "qosmax", "assocmax", "assocgrp", "qosgrp", "job violates accounting/qos policy")
_TRANSIENT = ("socket timed out", "unable to contact slurm controller", "temporarily unable", "try again",
              "slurm_persist_conn", "connection refused")
_INVALID = ("invalid partition", "invalid account", "invalid qos", "invalid generic resource", "invalid gres",
            "invalid feature", "requested node configuration is not available", "node count specification invalid",
            "invalid time limit", "time limit", "memory specification can not be satisfied",
            "more processors requested than permitted", "invalid job", "unrecognized option", "invalid option",
            "access/permission denied", "not available in partition", "invalid argument")


def sbatch_error(node_type: str, stderr: str) -> ProviderError:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "sbatch failed with no message"
    low = line.lower()
    where = f"available_node_types.{node_type}"
    if any(k in low for k in _QUOTA):
        return QuotaError(node_type, f"Slurm: {line}")
    if any(k in low for k in _TRANSIENT):
        return TransientError(f"{where}: Slurm is not answering: {line}")
    if any(k in low for k in _INVALID):
        return InvalidRequest(f"{where}: Slurm refused the holder job: {line}")
    return ProviderError(f"{where}: sbatch failed: {line}")


# --- running Slurm's commands ------------------------------------------------------------------------


def slurm_env(slurm_conf: str | None) -> dict[str, str]:
    # a caller inside an allocation (a head in a job) must not pass its own job to these commands
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env


def run_slurm(argv: list[str], slurm_conf: str | None, stdin: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"provider.type: slurm needs Slurm's `{argv[0]}` on this machine (a Slurm login host); "
                          f"it is not on PATH")
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S,
                              env=slurm_env(slurm_conf))
    except subprocess.TimeoutExpired:
        raise TransientError(f"`{argv[0]}` did not answer in {SLURM_TIMEOUT_S:.0f}s (is slurmctld up?)") from None


def _detect_login_ip(slurm_conf: str | None) -> str:
    """The address this host uses toward the Slurm controller: the one compute nodes can reach too."""
    out = run_slurm(["scontrol", "show", "config"], slurm_conf)
    m = re.search(r"^SlurmctldHost\[0\]\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", out.stdout, re.MULTILINE)
    target = (m.group(2) or m.group(1)) if m else None
    if target:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((socket.gethostbyname(target), 6817))  # no packet is sent: a route lookup
                return s.getsockname()[0]
        except OSError:
            pass
    return "127.0.0.1"


def node_config_problems(config: ClusterConfig) -> list[str]:
    """Each worker type's node_config as a holder job's request (a misspelt key, a bad memory or gres)."""
    problems = []
    head_on_login = Section.of(config.provider).head == "login"
    for name in config.available_node_types:
        if name == config.head_node_type and head_on_login:
            continue  # the head is the login host: its node_config is not a request
        try:
            node_resources(node_config(config, name), f"available_node_types.{name}.node_config")
        except ConfigError as e:
            problems += e.problems
    return problems


def config_problems(config: ClusterConfig) -> list[str]:
    """Each worker type's node_config as a holder job's request (once the section itself is valid)."""
    try:
        Section.of(config.provider)
    except ValidationError:
        return []  # the section's own problems are said instead
    return node_config_problems(config)


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    """Checks the node types' requests and that Slurm answers here; keeps where the head's record and
    the nodes' homes are, and the SLURM_CONF every later command uses. With `head_ip`, Slurm is on that
    host: nothing of it is looked for here (its first command there says what is wrong)."""
    section = Section.of(config.provider)
    problems = node_config_problems(config)
    if section.head_ip and section.head != "login":
        problems.append("provider.head_ip: a head given by head_ip is a login host; leave provider.head unset")
    if not (section.node_root.startswith("/") or section.node_root == "~" or section.node_root.startswith("~/")):
        problems.append(f"provider.node_root: {section.node_root!r} must be an absolute path (or start with ~)")
    if problems:
        raise ConfigError(problems)
    root = state_dir / "slurm"
    root.mkdir(parents=True, exist_ok=True)
    state = {"root": str(root.resolve()), "node_root": section.node_root}
    if section.head_ip:
        from core.paths import KNOWN_HOSTS_FILE
        from providers.ssh import POOL_DIR, parse_host

        host, port = parse_host(section.head_ip, section.ssh_port)
        return Bootstrapped(state={**state, "slurm_conf": section.slurm_conf, "head_host": host, "head_port": port,
                                   "claims": f"{POOL_DIR}/{config.cluster_name}-slurm-head.json",
                                   "known_hosts": str((state_dir / KNOWN_HOSTS_FILE).resolve()),
                                   "login_ip": section.login_ip or host})
    slurm_conf = section.slurm_conf or os.environ.get("SLURM_CONF")
    if slurm_conf:
        slurm_conf = str(Path(slurm_conf).expanduser().resolve())
        if not Path(slurm_conf).is_file():
            raise ConfigError(f"provider.slurm_conf: {slurm_conf} does not exist")
    ping = run_slurm(["squeue", "-h", "--me", "-o", "%i"], slurm_conf)
    if ping.returncode != 0:
        last = (ping.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"provider.type: slurm: Slurm does not answer here ({last})")
    return Bootstrapped(state={**state, "slurm_conf": slurm_conf, "node_root": os.path.expanduser(section.node_root),
                               "login_ip": section.login_ip or _detect_login_ip(slurm_conf)})


class Provider(ProviderBase):
    # the head is on the login host, where sbatch/squeue/scancel work: the autoscaler runs there
    capabilities = Capabilities()

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.section = Section.of(spec.config.provider)
        self.head_port = self.section.head_port
        self.head_bind_host = self.section.head_bind_host
        state = spec.provider_state
        self.slurm_conf: str | None = state.get("slurm_conf")
        self._node_root: str = state["node_root"]
        self.login_ip: str = state["login_ip"]
        self.root = Path(state["root"])
        self.head_path = self.root / "head.json"
        self.head_on_login = self.section.head == "login"
        # a login head on another host (head_ip): its record and Slurm's commands are there
        self.head_host: tuple[str, int] | None = (state["head_host"], state["head_port"]) if "head_host" in state else None
        self.remote = self.head_host is not None and not spec.on_head
        self._runner = None
        self._claims_remote = None

    # --- where Slurm's commands run: here, or on the head host over SSH ------------------------------------

    def _head_runner(self):
        if self._runner is None:
            from core.paths import HEAD_KNOWN_HOSTS, on_this_node
            from transport import SSHAuth, runner_for

            host, port = self.head_host
            known = on_this_node(HEAD_KNOWN_HOSTS) if self.spec.on_head else Path(self.spec.provider_state["known_hosts"])
            auth = SSHAuth(user=self.spec.ssh_user or "root", private_key=self.spec.ssh_private_key, known_hosts=known,
                           proxy_command=self.spec.config.auth.ssh_proxy_command,
                           connect_timeout_s=self.section.ssh_connect_timeout_s)
            self._runner = runner_for(NodeInfo(id=f"{host}:{port}", node_type="", state="running",
                                               internal_ip=host, external_ip=host, ssh_port=port), auth)
        return self._runner

    def _slurm(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        if not self.remote:
            return run_slurm(argv, self.slurm_conf, stdin)
        runner = self._head_runner()
        staged = None
        if stdin is not None:  # sbatch's script: a file of the head host's, not a command line
            staged = f".launch-sbatch-{secrets.token_hex(6)}"
            runner.put_file(stdin.encode(), staged, mode=0o600)
            argv = [*argv, staged]
        conf = f"export SLURM_CONF={shlex.quote(self.slurm_conf)}; " if self.slurm_conf else ""
        lines: list[str] = []
        try:
            result = runner.run(f"(unset ${{!SLURM_@}}; {conf}exec {shlex.join(argv)})", on_output=lines.append,
                                timeout=SLURM_TIMEOUT_S)
        finally:
            if staged:
                runner.run(f"rm -f {staged}", timeout=SLURM_TIMEOUT_S)
        out = "".join(lines)
        if result.exit_code == 127:
            raise ConfigError(f"provider.head_ip: Slurm's `{argv[0]}` is not on the head host's PATH")
        return subprocess.CompletedProcess(argv, result.exit_code, out if result.ok else "", "" if result.ok else out)

    @property
    def node_root(self) -> str:
        """Absolute: `~` is the home of whoever submits the holder jobs (on the head host with head_ip)."""
        if self._node_root.startswith("~"):
            if self.remote:
                lines: list[str] = []
                self._head_runner().run("echo \"$HOME\"", on_output=lines.append, timeout=SLURM_TIMEOUT_S)
                self._node_root = lines[-1].strip() + self._node_root[1:]
            else:
                self._node_root = os.path.expanduser(self._node_root)
        return self._node_root

    def node_types(self) -> dict[str, dict[str, float]]:
        cfg = self.spec.config
        return {name: node_resources(node_config(cfg, name), f"available_node_types.{name}.node_config")
                for name in cfg.available_node_types if name != cfg.head_node_type or not self.head_on_login}

    # --- create ---------------------------------------------------------------------------------------

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        if tags.get(TAG_KIND) == KIND_HEAD and self.head_on_login:
            return [self._create_head(node_type, tags)]
        cluster = tags[TAG_CLUSTER]
        nc = node_config(self.spec.config, node_type)
        args = sbatch_args(self.section, nc, cluster, tags)
        script = holder_script(self.node_root, cluster)
        created = []
        for _ in range(count):
            out = self._slurm(["sbatch", *args], stdin=script)
            if out.returncode != 0:
                if created:  # some were submitted: fewer than asked is fine
                    break
                raise sbatch_error(node_type, out.stderr)
            job_id = out.stdout.strip().split(";")[0]
            created.append(NodeInfo(id=job_id, node_type=node_type, state="pending", tags=dict(tags),
                                    launched_at=time.time(), slurm=self._job(job_id), detail="queued"))
        return created

    def _job(self, job_id: str) -> SlurmJob:
        cluster = self.spec.name
        return SlurmJob(job_id=job_id, home=f"{self.node_root}/{cluster}/{job_id}", slurm_conf=self.slurm_conf)

    # --- the head on the login host ---------------------------------------------------------------------

    def _claims(self, op: str, **args):
        """The head_ip head's record, kept on the head host (providers/ssh_claims.py)."""
        from providers import ssh_claims

        path = self.spec.provider_state["claims"]
        if not self.remote:
            return ssh_claims.apply(path, op, args)
        if self._claims_remote is None:
            from providers.ssh import RemoteClaims

            self._claims_remote = RemoteClaims(path, self._head_runner())
        return self._claims_remote.apply(op, args)

    def _create_head(self, node_type: str, tags: dict[str, str]) -> NodeInfo:
        if self.head_host is not None:
            host, port = self.head_host
            self._claims("claim", hosts=[f"{host}:{port}"], count=1, node_type=node_type, tags=dict(tags),
                         now=time.time())
            return self._head_info(self._login_head())
        with locked_json(self.head_path) as head:
            if not head:
                head.update(id=f"login-{secrets.token_hex(4)}", node_type=node_type, tags=dict(tags),
                            launched_at=time.time())
            record = dict(head)
        home = self.root / "head"
        home.mkdir(mode=0o700, exist_ok=True)
        return self._head_info(record)

    def _head_info(self, record: dict) -> NodeInfo:
        if self.head_host is not None:
            host, port = self.head_host
            return NodeInfo(id=record["id"], node_type=record["node_type"], state="running",
                            tags=dict(record["tags"]), internal_ip=self.login_ip, external_ip=host,
                            launched_at=record["launched_at"], ssh_port=port)
        return NodeInfo(id=record["id"], node_type=record["node_type"], state="running", tags=dict(record["tags"]),
                        internal_ip=self.login_ip, external_ip=self.login_ip, launched_at=record["launched_at"],
                        local_home=str(self.root / "head"))

    # --- list, tags, terminate -----------------------------------------------------------------------

    def _jobs(self, tag_filters: dict[str, str]) -> list[dict]:
        argv = ["squeue", "-h", "--me", "-o", "%i|%T|%N|%r|%V|%k"]
        if TAG_CLUSTER in tag_filters:
            argv.append(f"--name={job_name(tag_filters[TAG_CLUSTER])}")
        out = self._slurm(argv)
        if out.returncode != 0:
            raise TransientError(f"squeue failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
        return parse_squeue(out.stdout)

    def _addrs(self, names: set[str]) -> dict[str, str]:
        if not names:
            return {}
        out = self._slurm(["scontrol", "show", "node", "-o", ",".join(sorted(names))])
        return parse_node_addrs(out.stdout) if out.returncode == 0 else {}

    def _login_head(self) -> dict:
        if not self.head_on_login:
            return {}
        if self.head_host is not None:
            claimed = self._claims("list", filters={})
            return {"id": claimed[0][0], **claimed[0][1]} if claimed else {}
        with locked_json(self.head_path) as head:
            return dict(head)

    def list(self, tag_filters: dict[str, str]) -> list[NodeInfo]:
        nodes = []
        record = self._login_head()
        if record and all(record["tags"].get(k) == v for k, v in tag_filters.items()):
            nodes.append(self._head_info(record))
        jobs = []
        for job in self._jobs(tag_filters):
            tags = decode_tags(job["comment"])
            if tags is None or not all(tags.get(k) == v for k, v in tag_filters.items()):
                continue
            if job["state"] not in PENDING_STATES | RUNNING_STATES:
                continue  # completing, or ended: the allocation is gone
            jobs.append((job, tags))
        addrs = self._addrs({j["nodes"] for j, _ in jobs if j["state"] in RUNNING_STATES and j["nodes"]})
        for job, tags in jobs:
            running = job["state"] in RUNNING_STATES
            ip = addrs.get(job["nodes"], job["nodes"]) if running else None
            reason = job["reason"] if job["reason"] not in ("None", "") else ""
            nodes.append(NodeInfo(
                id=job["id"], node_type=tags.get("launch-node-type", ""), state="running" if running else "pending",
                tags=tags, internal_ip=ip, external_ip=ip, launched_at=_submitted_at(job["submitted"]),
                slurm=self._job(job["id"]),
                detail="" if running else f"queued in Slurm ({reason or job['state'].lower()})"))
        return sorted(nodes, key=lambda n: n.launched_at)

    def set_tags(self, node_id: str, tags: dict[str, str]) -> None:
        if self._login_head().get("id") == node_id:
            if self.head_host is not None:
                self._claims("set_tags", node_id=node_id, tags=dict(tags))
                return
            with locked_json(self.head_path) as head:
                head["tags"].update(tags)
            return
        current = next((j for j in self._jobs({}) if j["id"] == node_id), None)
        old = decode_tags(current["comment"]) if current else None
        if old is None:
            raise NodeNotFound(node_id)
        out = self._slurm(["scontrol", "update", f"JobId={node_id}", f"Comment={encode_tags({**old, **tags})}"])
        if out.returncode != 0:
            if "invalid job id" in out.stderr.lower() or "already completing" in out.stderr.lower():
                raise NodeNotFound(node_id)
            raise ProviderError(f"scontrol update of job {node_id} failed: {out.stderr.strip()}")

    def terminate(self, node_ids: list[str]) -> None:
        jobs = []
        login_head = self._login_head().get("id")
        for node_id in node_ids:
            # the head's processes go first, its record last: a terminate cut short is done again
            if node_id == login_head and self.head_host is not None:
                from core.errors import LaunchError
                from core.paths import NODE_PYTHON, in_shell
                python = in_shell(NODE_PYTHON)
                try:  # best effort: the runtime's processes on the head host
                    self._head_runner().run(f"test -x {python} && {python} -m {NODE_CONTROL} stop", timeout=60)
                except LaunchError:
                    pass
                self._claims("release", ids=[node_id])
            elif node_id == login_head:
                kill_node_processes(node_id)
                shutil.rmtree(self.root / "head", ignore_errors=True)
                with locked_json(self.head_path) as head:
                    head.clear()
            elif node_id.isdigit():
                jobs.append(node_id)
        if jobs:  # a job that ended already is not an error: scancel of it does nothing
            out = self._slurm(["scancel", *jobs])
            if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
                raise ProviderError(f"scancel {' '.join(jobs)} failed: {out.stderr.strip()}")

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
