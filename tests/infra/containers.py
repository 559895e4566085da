"""Containers in twins (../shared/TESTING.md, "Containers in twins"): a Docker daemon per twin, a registry
on the twins' bridge, and images made from the debootstrap roots of tests/infra/images.py (no hub), so a
node pulls its image as it would in production.

    lab = ContainerLab(twin_net, tmp)            # the registry, and a daemon on this machine to build with
    ref = lab.publish("py313", trixie_root)      # -> "10.N.0.1:5000/py313", pullable by docker twins
    twin_net.twin("vm", ip, docker=True)         # a twin whose own dockerd pulls from that registry
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.infra import wait_for


def containers_unavailable() -> str | None:
    missing = [b for b in ("dockerd", "docker", "docker-registry") if shutil.which(b) is None]
    if missing:
        return f"containers in twins need {', '.join(missing)} (./dev test installs docker.io and docker-registry as root)"
    return None


def _daemon_flags(registry: str) -> str:
    # no bridge, NAT or iptables of docker's: containers run on their host's network (--net=host)
    return f"--iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 --insecure-registry {registry}"


def dockerd_script(twin_dir: Path, registry: str) -> str:
    """Shell, run in a twin's own mount namespace before its sshd: the twin's own /run and /var/lib/docker
    (so `docker` over SSH talks to this twin's daemon), and its dockerd in the background."""
    run, lib = twin_dir / "run", twin_dir / "docker"
    run.mkdir(exist_ok=True)
    lib.mkdir(exist_ok=True)
    return (f"mount --bind {run} /run && mkdir -p /run/sshd /var/lib/docker && mount --bind {lib} /var/lib/docker && "
            f"(dockerd {_daemon_flags(registry)} </dev/null >>{twin_dir}/dockerd.log 2>&1 &) && ")


class ContainerLab:
    """The registry on the bridge and a daemon of this machine's own that builds and pushes images."""

    def __init__(self, net, root: Path):
        self.net, self.root = net, root
        self.registry = net.registry
        store = root / "registry"
        store.mkdir(parents=True, exist_ok=True)
        (root / "registry.yml").write_text(
            f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {store}}}}}\n"
            f"http: {{addr: '{self.registry}'}}\n")
        self._procs = [subprocess.Popen(["docker-registry", "serve", str(root / "registry.yml")],
                                        stdout=open(root / "registry.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)]
        sock = root / "build" / "docker.sock"
        for sub in ("data", "exec"):
            (root / "build" / sub).mkdir(parents=True, exist_ok=True)
        self._procs.append(subprocess.Popen(
            ["dockerd", "--data-root", str(root / "build" / "data"), "--exec-root", str(root / "build" / "exec"),
             "--pidfile", str(root / "build" / "docker.pid"), "-H", f"unix://{sock}", *_daemon_flags(self.registry).split()],
            stdout=open(root / "build" / "dockerd.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True))
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        wait_for(lambda: self._docker("version", check=False).returncode == 0, timeout=60, what="the build dockerd")

    def _docker(self, *args: str, check: bool = True, stdin=None) -> subprocess.CompletedProcess:
        r = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, stdin=stdin)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:2])} failed: {(r.stdout + r.stderr)[-1000:]}")
        return r

    def publish(self, name: str, image_root: Path) -> str:
        """An image made from a root filesystem, pushed to the bridge's registry; its reference."""
        ref = f"{self.registry}/{name}"
        tar = subprocess.Popen(["tar", "-C", str(image_root), "--exclude=./proc", "--exclude=./sys", "--exclude=./dev",
                                "-c", "."], stdout=subprocess.PIPE)
        self._docker("import", "-", ref, stdin=tar.stdout)
        tar.wait()
        self._docker("push", ref)
        return ref

    def alias(self, ref: str, name: str) -> str:
        """The same image under another name in the registry (a changed image, at no cost)."""
        new = f"{self.registry}/{name}"
        self._docker("tag", ref, new)
        self._docker("push", new)
        return new

    def close(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
