"""`up` of one node whose Python is the launcher's, and of one whose Python is not (a Debian 11 image twin,
Python 3.9), each with a cold and a warm runtime cache ($LAUNCH_HOME/bundles): seconds and bytes shipped.

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


def timed_up(net, lab, name: str, ip: str, image: Path | None, home: Path) -> tuple[float, int]:
    from tests.infra import cli, write_config
    from tests.infra.twins import onprem_config

    twin = net.twin(name, ip, image=image)
    laptop, key = net.laptop_for(name, lab.client_key)
    path = write_config(laptop / "cluster.yaml", onprem_config(name, twin, [], key))
    try:
        t0 = time.perf_counter()
        r = cli("up", str(path), "--yes", home=home, timeout=900)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"up failed: {r.stdout}{r.stderr}")
        return took, shipped_bytes(home)
    finally:
        cli("down", str(path), "--yes", home=home, timeout=300)
        net.remove(name)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/node_images.py starts twins: run it as root")
    os.makedirs("/run/sshd", exist_ok=True)
    from tests.infra import SSHLab
    from tests.infra.images import BULLSEYE, ensure
    from tests.infra.twins import TwinNet

    base = Path(tempfile.mkdtemp(prefix="bench-images-"))
    lab = SSHLab(base / "lab")
    net = TwinNet(base / "twins", lab.client_key.with_suffix(".pub"))
    rows = []
    try:
        image = ensure(BULLSEYE)
        for label, img in ((f"same Python ({sys.version_info[0]}.{sys.version_info[1]})", None),
                           ("Debian 11, Python 3.9", image)):
            home = net.laptop / f"home-{len(rows)}"
            cold, size = timed_up(net, lab, f"c{len(rows)}", net.ip(60 + len(rows)), img, home)
            warm, _ = timed_up(net, lab, f"w{len(rows)}", net.ip(70 + len(rows)), img, home)
            rows.append((label, cold, warm, size))
            shutil.rmtree(home, ignore_errors=True)
    finally:
        net.close()
        lab.close()
    print(f"{'node':<26}{'cold cache (s)':>16}{'warm cache (s)':>16}{'shipped (MiB)':>15}")
    for label, cold, warm, size in rows:
        print(f"{label:<26}{cold:>16.1f}{warm:>16.1f}{size / 2**20:>15.1f}")
    same, other = rows
    print(f"another Python vs the same: cold {other[1] / same[1]:.2f}x, warm {other[2] / same[2]:.2f}x")


if __name__ == "__main__":
    main()
