"""`up` of one node whose Python is the launcher's, and of one whose Python is not (a Debian 11 image twin,
Python 3.9), each with a cold and a warm runtime cache ($LAUNCH_HOME/bundles): seconds and bytes shipped.
Then what a container costs (Ray's docker section): `up` of a Debian 13 node on its host (an image twin)
against the same Debian 13 root as a container image on a docker twin, pulled from a registry on the
bridge (warm runtime cache both), and the time of one `launch exec true` on each.

    .venv/bin/python bench/node_images.py        # as root: VM twins and image twins (tests/infra)

Cold: an empty $LAUNCH_HOME, so the bundles are built (for 3.9: their dependencies resolved with pip as
wheels for that Python, which needs the package index). Warm: a second cluster on a fresh node with the
same $LAUNCH_HOME: the bundles are taken from the cache; every byte is still shipped to the new node.
Each cluster is head-only (on-prem form), taken down after it is measured.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shipped_bytes(home: Path) -> int:
    """What `up` sent to the node as runtime: the bundles it built or found in the cache."""
    return sum(p.stat().st_size for p in (home / "bundles").glob("runtime-*.tar.gz"))


def timed_up(net, lab, name: str, ip: str, image: Path | None, home: Path, container: str = "",
             execs: int = 0) -> tuple[float, int, float]:
    """(seconds of `up`, bytes of runtime shipped, median seconds of `launch exec true` over `execs`)."""
    import statistics

    from tests.infra import cli, write_config
    from tests.infra.twins import onprem_config

    twin = net.twin(name, ip, image=image, docker=bool(container))
    laptop, key = net.laptop_for(name, lab.client_key)
    extra = {"docker": {"image": container, "container_name": "bench"}} if container else {}
    path = write_config(laptop / "cluster.yaml", onprem_config(name, twin, [], key, **extra))
    try:
        t0 = time.perf_counter()
        r = cli("up", str(path), "--yes", home=home, timeout=900)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"up failed: {r.stdout}{r.stderr}")
        times = []
        for _ in range(execs):
            t0 = time.perf_counter()
            cli("exec", str(path), "true", home=home)
            times.append(time.perf_counter() - t0)
        return took, shipped_bytes(home), statistics.median(times) if times else 0.0
    finally:
        cli("down", str(path), "--yes", home=home, timeout=300)
        net.remove(name)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/node_images.py starts twins: run it as root")
    os.makedirs("/run/sshd", exist_ok=True)
    from tests.infra import SSHLab
    from tests.infra.containers import ContainerLab
    from tests.infra.images import BULLSEYE, TRIXIE, ensure
    from tests.infra.twins import TwinNet

    base = Path(tempfile.mkdtemp(prefix="bench-images-"))
    lab = SSHLab(base / "lab")
    net = TwinNet(base / "twins", lab.client_key.with_suffix(".pub"))
    rows, boxes = [], []
    containers = None
    try:
        image = ensure(BULLSEYE)
        for label, img in ((f"same Python ({sys.version_info[0]}.{sys.version_info[1]})", None),
                           ("Debian 11, Python 3.9", image)):
            home = net.laptop / f"home-{len(rows)}"
            cold, size, _ = timed_up(net, lab, f"c{len(rows)}", net.ip(60 + len(rows)), img, home)
            warm, _, _ = timed_up(net, lab, f"w{len(rows)}", net.ip(70 + len(rows)), img, home)
            rows.append((label, cold, warm, size))
            shutil.rmtree(home, ignore_errors=True)
        trixie = ensure(TRIXIE)
        containers = ContainerLab(net, base / "containers")
        ref = containers.publish("py313", trixie)
        home = net.laptop / "home-containers"
        timed_up(net, lab, "warmup", net.ip(80), trixie, home)  # the cp313 bundle, resolved once
        for label, img, box, ip in (("Debian 13 on its host", trixie, "", 81),
                                    ("Debian 13 in a container", None, ref, 82)):
            took, _, exec_s = timed_up(net, lab, f"b{ip}", net.ip(ip), img, home, container=box, execs=5)
            boxes.append((label, took, exec_s))
    finally:
        if containers is not None:
            containers.close()
        net.close()
        lab.close()
    print(f"{'node':<26}{'cold cache (s)':>16}{'warm cache (s)':>16}{'shipped (MiB)':>15}")
    for label, cold, warm, size in rows:
        print(f"{label:<26}{cold:>16.1f}{warm:>16.1f}{size / 2**20:>15.1f}")
    same, other = rows
    print(f"another Python vs the same: cold {other[1] / same[1]:.2f}x, warm {other[2] / same[2]:.2f}x")
    print(f"\n{'node (warm runtime cache)':<26}{'up (s)':>16}{'exec true (s)':>16}")
    for label, took, exec_s in boxes:
        print(f"{label:<26}{took:>16.1f}{exec_s:>16.2f}")
    (_, host_up, host_exec), (_, box_up, box_exec) = boxes
    print(f"container start overhead (pull of the image from the bridge registry, run, setup through docker exec): "
          f"{box_up - host_up:+.1f} s ({box_up / host_up:.2f}x); per command {box_exec - host_exec:+.2f} s")


if __name__ == "__main__":
    main()
