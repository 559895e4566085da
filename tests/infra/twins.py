"""VM twins (../shared/TESTING.md): hosts that are network namespaces on a bridge, each with its own IP,
hostname and /root (a mount namespace), running a real sshd. A cloud's instance gets a twin at its
private IP, so the production path runs for real: laptop -> head over SSH -> autoscaler on the head ->
cloud API -> worker set up over SSH from the head.

The "laptop" (the tests' LAUNCH_HOME, config files and keys) lives under `TwinNet.laptop`, which every
twin sees as an empty tmpfs: anything on a node that still reads a laptop path fails.

An **image twin** (`TwinNet.twin(..., image=...)`, tests/infra/images.py) boots an OS image of its own
instead of sharing this machine's files: a copy-on-write overlay of a Debian root, its own PID namespace
(sshd is its PID 1: killing it is a power-off), its own Python and system packages. Twins may share one
home folder (`shared_home`), as hosts with an NFS home do. `block_laptop`
lets the laptop reach a twin on port 22 only, as a firewall in front of a cloud head would.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

from tests.infra import SSHD, claim, process_alive, release, wait_for, wait_for_pidfile

# a docker twin's own daemons: part of the machine, like its sshd
DAEMONS = ("dockerd ", "containerd ")
METADATA_HOST = "metadata.google.internal"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def twins_unavailable() -> str | None:
    """Why twins cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "VM twins need root (network and mount namespaces)"
    for tool in ("ip", "unshare", "iptables"):
        if shutil.which(tool) is None:
            return f"VM twins need `{tool}` (./dev test installs it when run as root)"
    if not os.path.exists(SSHD):
        return "VM twins need openssh-server (./dev test installs it when run as root)"
    probe = f"lt-probe-{os.getpid()}"
    if _sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return "network namespaces are not available on this machine"
    _sh("ip", "netns", "del", probe, check=False)
    return None


class Twin:
    def __init__(self, net: TwinNet, name: str, ip: str, index: int, image: Path | None = None,
                 shared_home: Path | None = None, docker: bool = False):
        self.net, self.name, self.ip, self.index = net, name, ip, index
        self.image = image
        self.docker = docker  # a Docker daemon of its own (tests/infra/containers.py)
        self.netns = f"{net.prefix}-{name}"
        self.dir = net.root / "twins" / name
        self.root = shared_home or self.dir / "root"  # what the twin sees as /root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sshd_pid: int | None = None
        self.metadata = None  # its cloud's metadata service (tests/infra/metadata.py), started again at boot

    @property
    def node_dir(self) -> Path:
        """Its runtime's own files (core.paths.NODE_DIR): keyed by its hostname, its name."""
        from tests.infra import node_dir

        return node_dir(self.root, self.name)

    def start(self) -> Twin:
        net, ns = self.net, self.netns
        host_if, ns_if = f"{net.prefix}h{self.index}", f"{net.prefix}n{self.index}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _sh("ip", "link", "set", host_if, "master", net.bridge, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{self.ip}/24", "dev", ns_if)
        _sh("ip", "-n", ns, "link", "set", ns_if, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "route", "add", "default", "via", net.gateway)
        # A cloud reuses a freed address at once and its network reaches the new machine at once; here the
        # others' ARP caches would still name the old twin's MAC, and their connections to the new one
        # would stall in SYN retries for half a minute (what a gratuitous ARP settles on a real LAN).
        _sh("ip", "neigh", "flush", "to", self.ip, check=False)
        for other in list(net.twins.values()):
            if other is not self:
                _sh("ip", "-n", other.netns, "neigh", "flush", "to", self.ip, check=False)
        return self._start_sshd()

    def _start_sshd(self) -> Twin:
        if self.image is not None:
            return self._boot_image()
        net, ns = self.net, self.netns
        key = self.dir / "host_key"
        if not key.exists():
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        cfg = self.dir / "sshd_config"
        cfg.write_text(
            f"Port 22\nHostKey {key}\nAuthorizedKeysFile {net.authorized_keys}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 50\nSubsystem sftp internal-sftp\n")
        pidfile = self.dir / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        # the name of GCE's metadata server resolves in the twin, as a cloud's DNS resolves it
        hosts = self.dir / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text() + f"\n169.254.169.254 {METADATA_HOST}\n")
        script = (f"hostname {self.name} && mount --bind {self.root} /root && "
                  f"mount --bind {hosts} /etc/hosts && mount -t tmpfs -o size=1m none {net.laptop} && ")
        enter = ["ip", "netns", "exec", ns]
        if self.docker:
            from tests.infra.containers import dockerd_script

            script += dockerd_script(self.dir, net.registry)
            enter = ["nsenter", f"--net=/run/netns/{ns}"]  # `ip netns exec` would hide the cgroup mounts
        script += f"exec {SSHD} -f {cfg} -o PidFile={pidfile}"
        _sh(*enter, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script)
        self.sshd_pid = wait_for_pidfile(pidfile, f"sshd of twin {self.name}")
        return self

    def _boot_image(self) -> Twin:
        """The image's root as an overlay of this twin's own (its disk), mounted in a mount namespace of
        the twin's own with /proc, /dev, /sys and a fresh /run, and sshd as PID 1 of its PID namespace.
        Only the network namespace is entered with nsenter (`ip netns exec` would hide the cgroup mounts)."""
        d = self.dir
        for sub in ("upper", "work", "merged"):
            (d / sub).mkdir(exist_ok=True)
        shutil.copy(self.net.authorized_keys, self.root / ".authorized_keys_twin")
        root = d / "merged"
        script = (f"mount -t overlay overlay -o lowerdir={self.image},upperdir={d}/upper,workdir={d}/work {root} && "
                  f"mount --bind {self.root} {root}/root && "
                  f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
                  f"mount --rbind /sys {root}/sys && mount -t tmpfs tmpfs {root}/run && "
                  f"mount -t tmpfs tmpfs {root}/tmp && mkdir -p {root}/run/sshd && "
                  f"hostname {self.name} && echo {self.name} > {root}/etc/hostname && "
                  f"exec chroot {root} /usr/sbin/sshd -D -e -o AuthorizedKeysFile=/root/.authorized_keys_twin "
                  f"-o StrictModes=no -o MaxStartups=100 -o MaxSessions=50 -o UsePAM=no "
                  f"-o PasswordAuthentication=no -o PermitRootLogin=prohibit-password")
        log = open(d / "boot.log", "ab")
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--uts",
                                 "--pid", "--fork", "--propagation", "private", "sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"image twin {self.name} did not boot: {(d / 'boot.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.ip, 22), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, timeout=20, every=0.05, what=f"sshd of image twin {self.name}")
        self.sshd_pid = proc.pid
        self._boot = proc
        return self

    @property
    def files(self) -> Path:
        """The twin's whole filesystem as this machine sees it (an image twin's own; else this machine's)."""
        return self.dir / "upper" if self.image is not None else Path("/")

    def inside(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command run in the twin's own namespaces (its mounts, hostname and network), as its root."""
        return subprocess.run(["nsenter", "-t", str(self.sshd_pid), "-m", "-u", "-n", "--", *cmd],
                              capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        r = _sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in r.stdout.split()]

    def processes(self) -> list[str]:
        """Command lines of what runs in the twin, its sshd aside."""
        out = []
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if pid != self.sshd_pid and not cmd.startswith((SSHD, "sshd:", "unshare ", "nsenter ", *DAEMONS)) \
                    and "metadata_server.py" not in cmd:  # the cloud's, not the node's
                out.append(cmd)
        return out

    def kill(self) -> None:
        """The machine dies: every process in it, sshd included; returns once they are all gone (a
        listener not yet closed would keep a restarted sshd from binding port 22)."""
        def killed_all() -> bool:
            # again on every look: a process forked after the last look (a supervisor restarting a
            # daemon, sshd starting a session) dies too
            alive = [p for p in self.pids() if process_alive(p)]
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return not alive

        wait_for(killed_all, timeout=30, every=0.02, what=f"the processes of twin {self.name} to die")
        if getattr(self, "_boot", None) is not None:
            self._boot.wait(timeout=10)  # reaped: its mounts went with its namespace
            self._boot = None
        self._lose_memory()

    def _lose_memory(self) -> None:
        """A machine's memory goes with it: the head memory folders its node kept on /dev/shm (which a twin
        shares with this machine; a VM's tmpfs is its own) go too (core/shm.py)."""
        from core.shm import MEMORY_ROOT, OWNER_FILE

        for folder in MEMORY_ROOT.glob("launch-*"):
            try:
                owner = (folder / OWNER_FILE).read_text()
            except OSError:
                continue
            if f"/nodes/{self.name}/" in owner:
                shutil.rmtree(folder, ignore_errors=True)

    def boot(self) -> None:
        """A stopped machine starts again: its disk (/root), network and firewall were kept."""
        self._start_sshd()
        if self.metadata is not None:
            self.metadata.start()

    def reboot(self) -> None:
        """The machine restarts: every process dies; its disk (/root), network and firewall stay; sshd
        comes back."""
        self.kill()
        self.boot()

    def block_laptop(self) -> None:
        """The laptop (the bridge's address) reaches this twin on port 22 only; other twins reach all."""
        for rule in (["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["-s", self.net.gateway, "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
                     ["-s", self.net.gateway, "-j", "DROP"]):
            _sh("ip", "netns", "exec", self.netns, "iptables", "-A", "INPUT", *rule)

    def destroy(self) -> None:
        self.kill()
        _sh("ip", "netns", "del", self.netns, check=False)


class TwinNet:
    """A bridge 10.<N>.0.1/24 on this machine and the twins on it; N is this session's own."""

    def __init__(self, root: Path, authorized_key: Path):
        self.root = root
        self.n = 200 + claim("twins", 50)  # a net of this session's own (10.N.0.0/24)
        self.prefix = f"lt{self.n}"
        self.bridge = f"{self.prefix}br"
        self.gateway = f"10.{self.n}.0.1"
        self.subnet = f"10.{self.n}.0.0/24"
        self.laptop = root / "laptop"  # hidden from every twin
        self.laptop.mkdir(parents=True, exist_ok=True)
        self.authorized_keys = root / "authorized_keys"
        shutil.copy(authorized_key, self.authorized_keys)
        self.twins: dict[str, Twin] = {}
        self.registry = f"{self.gateway}:5000"  # where tests/infra/containers.py serves images to twins
        self._lock = threading.Lock()
        self._index = itertools.count(1)  # veth names are never reused while the net lives
        self._cleanup_stale()
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        # A bridge takes the lowest MAC of its ports unless given one: each new twin could change the
        # gateway's MAC under the others' ARP caches, stalling their connections for a minute.
        _sh("ip", "link", "set", self.bridge, "address", f"02:00:0a:{self.n:02x}:00:01")
        _sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")

    def _cleanup_stale(self) -> None:
        """What a killed earlier session with the same N left behind."""
        for line in _sh("ip", "netns", "list", check=False).stdout.splitlines():
            ns = line.split()[0] if line.split() else ""
            if ns.startswith(f"{self.prefix}-"):
                for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    def laptop_for(self, name: str, private_key: Path) -> tuple[Path, Path]:
        """A folder of the laptop for one test (its LAUNCH_HOME, config, key), hidden from every twin;
        and the cluster's SSH key in it (0600)."""
        d = self.laptop / name
        d.mkdir(parents=True, exist_ok=True)
        key = d / "id_ed25519"
        shutil.copy(private_key, key)
        shutil.copy(f"{private_key}.pub", f"{key}.pub")
        os.chmod(key, 0o600)
        return d, key

    def ip(self, host: int) -> str:
        return f"10.{self.n}.0.{host}"

    def twin(self, name: str, ip: str, image: Path | None = None, shared_home: Path | None = None,
             docker: bool = False) -> Twin:
        """A twin at `ip`; with `image`, an image twin booting that root; with `shared_home`, its /root is
        that folder, which other twins may share; with `docker`, a Docker daemon of its own that pulls
        from the bridge's registry."""
        with self._lock:
            assert name not in self.twins, f"twin {name} exists"
            t = Twin(self, name, ip, next(self._index), image, shared_home, docker)
            self.twins[name] = t
        return t.start()

    def remove(self, name: str) -> None:
        with self._lock:
            t = self.twins.pop(name, None)
        if t is not None:
            t.destroy()

    def close(self) -> None:
        for name in list(self.twins):
            self.remove(name)
        _sh("ip", "link", "del", self.bridge, check=False)
        release("twins", self.n - 200)


def onprem_config(name: str, head: Twin, workers: list[Twin], key: Path, **extra) -> dict:
    """Ray's on-prem file over twins (no node types: each host's resources detected), with an autoscaler
    and a runtime quick enough for tests: workers claimed and released within seconds."""
    data = {
        "cluster_name": name,
        "provider": {"type": "local", "head_ip": head.ip, "worker_ips": [w.ip for w in workers]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key)},
        "min_workers": 0,
        "idle_timeout_minutes": 0.1,
        "autoscaler": {"tick_s": 0.5},
        "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
    }
    data.update(extra)
    return data
