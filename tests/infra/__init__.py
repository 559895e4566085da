"""Shared test helpers: the CLI as a user runs it, config files, and process checks.

Expensive fixtures live here too, built once per session: sshd hosts (below), VM twins (twins.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, home: Path, cwd: Path | None = None, timeout: float = 120, input: str | None = None):
    """Run `launch ARGS` in a fresh process, as a user would, with LAUNCH_HOME=home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    env.update({"LAUNCH_HOME": str(home), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        input=input if input is not None else "",
    )


def cluster_status(path: Path, home: Path) -> dict:
    """`launch status FILE --json`, as a user runs it (and it must succeed)."""
    import json

    r = cli("status", str(path), "--json", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def fill_disk(folder: Path) -> Path:
    """Fill the disk `folder` is on (a tmpfs of the test's) until it has no room left; the file that did
    it, to remove for room again. Unbuffered: a buffered file would fail once more on close."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 65536)
        except OSError:
            pass
    return filler


def node_dir(home: Path, hostname: str | None = None) -> Path:
    """A node's own runtime files (core.paths.NODE_DIR) under its home: `hostname` is a twin's name, by
    default this machine's (local nodes, sshd hosts)."""
    from core.paths import NODE_DIR, for_node

    return home / for_node(NODE_DIR, hostname or os.uname().nodename)[2:]


def job_result(config: Path, source: str, home: Path, timeout: float = 300):
    """Run `source` as a job (`launch submit`, as a user would) and return what it printed after
    `RESULT ` on one line, read as JSON."""
    import json

    script = config.parent / "job_result.py"
    script.write_text(source)
    r = cli("submit", str(config), str(script), home=home, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def wait_for(pred, timeout: float = 60.0, every: float = 0.2, what: str = "condition"):
    """Poll `pred` until it returns something truthy (returned), or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_pidfile(pidfile: Path, what: str) -> int:
    """The pid a daemon (sshd) wrote once it started; fails naming `what` if it did not within 5 s."""
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=5, every=0.01,
             what=f"{what} to start")
    return int(pidfile.read_text())


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class RunningCluster:
    """A cluster brought up as a user does (`launch up FILE`), with this process's runtime API connected
    to its head; `down()` ends both."""

    def __init__(self, tmp: Path, data: dict):
        import json

        import runtime

        self.home = tmp / "home"
        self.path = write_config(tmp / f"{data['cluster_name']}.yaml", data)
        r = cli("up", str(self.path), "--yes", home=self.home)
        assert r.returncode == 0, r.stdout + r.stderr
        cdir = self.home / "clusters" / data["cluster_name"]
        self.info = json.loads((cdir / "cluster.json").read_text())
        self.address = self.info["head_address"]
        self.token = (cdir / "token").read_text().strip()
        self.nodes_dir = cdir / "local" / "nodes"  # local nodes' homes
        self.head_home = self.nodes_dir / self.info["head_node_id"]
        runtime.init(address=self.address, token=self.token)

    def node_types(self) -> dict[str, str]:
        """node id -> its node type, as `launch status` lists them."""
        return {n["id"]: n["node_type"] for n in cluster_status(self.path, self.home)["nodes"]}

    def down(self) -> None:
        import runtime

        runtime.shutdown()
        cli("down", str(self.path), "--yes", home=self.home)


def local_cluster(name: str, **overrides) -> dict:
    """A small local cluster: a 1-CPU head and one 2-CPU worker (min 1), plus a declared-GPU type."""
    cfg = {
        "cluster_name": name,
        "max_workers": 3,
        "provider": {"type": "local"},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 1, "max_workers": 2},
            "gpu": {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "head",
        "setup_commands": ["echo setup-v1 >> ~/setup.log"],
    }
    cfg.update(overrides)
    return cfg


def processes_with_env(needle: str) -> list[int]:
    """Live processes whose environment contains `needle` (e.g. a local node's marker)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if needle.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return [p for p in found if p != os.getpid()]


# --- real sshd hosts ----------------------------------------------------------------------------------

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_PORT = 2222


class SSHHost:
    """One real sshd on its own loopback address, with its own HOME (sessions and SFTP) and host key."""

    def __init__(self, lab: SSHLab, index: int):
        self.lab = lab
        self.ip = f"127.{lab.octet}.{lab.subnet}.{10 + index}"
        self.port = SSH_PORT
        self.dir = lab.root / f"host{index}"
        self.home = self.dir / "home"
        self.home.mkdir(parents=True)
        self.pid: int | None = None
        self.new_host_key()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def new_host_key(self) -> None:
        key = self.dir / "host_key"
        key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.dir / "sshd_config").write_text(
            f"HostKey {key}\nAuthorizedKeysFile {self.lab.root}/authorized_keys\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 50\n"
            f"SetEnv HOME={self.home}\nSubsystem sftp internal-sftp -d {self.home}\n"
        )

    def start(self) -> SSHHost:
        pidfile = self.dir / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run([SSHD, "-f", str(self.dir / "sshd_config"), "-o", f"ListenAddress={self.ip}",
                        "-o", f"Port={self.port}", "-o", f"PidFile={pidfile}"], check=True)
        self.pid = wait_for_pidfile(pidfile, f"sshd on {self.address}")
        return self

    def stop(self) -> None:
        """Stop the listener (sessions already open keep running, as with a real sshd restart)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.pid = None

    def runtime_processes(self) -> list[int]:
        """Processes started on this host by the runtime (their HOME is this host's)."""
        return processes_with_env(f"HOME={self.home}\0")


CLAIMS = Path("/run/launch-test-claims")  # KIND-N.pid: the test session that holds number N of KIND


def process_alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def claim(kind: str, count: int) -> int:
    """A number in [0, count) of `kind` (a twin net, the SSH hosts' addresses) no live test session on this
    machine holds, starting from this process's own: two sessions at once (a CI run and a developer's)
    never take, or clean up, each other's. One whose holder died is taken over. `release` gives it back."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    start = os.getpid() % count
    for i in range(count):
        n = (start + i) % count
        path = CLAIMS / f"{kind}-{n}.pid"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = int(path.read_text() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder and process_alive(holder):
                    break
                path.unlink(missing_ok=True)  # its session died: free again (raced by another: next number)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return n
    raise RuntimeError(f"no free {kind} number: {count} live test sessions hold {CLAIMS}")


def release(kind: str, n: int) -> None:
    (CLAIMS / f"{kind}-{n}.pid").unlink(missing_ok=True)


class SSHLab:
    """A factory of SSH hosts for one test session; every host and process goes at close()."""

    _subnets = itertools.count(60)

    def __init__(self, root: Path):
        self.root = root
        self.octet = claim("sshlab", 250)  # 127.<octet>.<subnet>.x: this session's own loopback addresses
        self.subnet = next(self._subnets)
        root.mkdir(parents=True, exist_ok=True)
        self.client_key = root / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True)
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        self.hosts: list[SSHHost] = []
        self.blackholes: list[socket.socket] = []

    def host(self, start: bool = True) -> SSHHost:
        h = SSHHost(self, len(self.hosts) + len(self.blackholes))
        self.hosts.append(h)
        return h.start() if start else h

    def blackhole(self) -> str:
        """An address that accepts TCP connections and never says a word (a hung host)."""
        ip = f"127.{self.octet}.{self.subnet}.{10 + len(self.hosts) + len(self.blackholes)}"
        s = socket.socket()
        s.bind((ip, SSH_PORT))
        s.listen(16)
        self.blackholes.append(s)
        return f"{ip}:{SSH_PORT}"

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
            for pid in h.runtime_processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for s in self.blackholes:
            s.close()
        release("sshlab", self.octet)


def ssh_cluster(name: str, lab: SSHLab, head: SSHHost, workers: list[str], **overrides) -> dict:
    """An on-prem cluster config over lab hosts: Ray's `type: local` with head_ip/worker_ips."""
    cfg = {
        "cluster_name": name,
        "max_workers": len(workers),
        "provider": {"type": "local", "head_ip": head.address, "worker_ips": workers,
                     "head_port": free_port(head.ip), "ssh_wait_s": 20},
        "auth": {"ssh_user": "root", "ssh_private_key": str(lab.client_key)},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "worker": {"resources": {"CPU": 1}, "min_workers": len(workers), "max_workers": len(workers)},
        },
        "head_node_type": "head",
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
    }
    cfg.update(overrides)
    return cfg


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]
