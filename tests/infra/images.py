"""OS images for image twins (../shared/TESTING.md): Debian roots made with debootstrap, built once per
machine and cached by suite and packages, so a twin boots a Python, libc and packages of its own.

    python -m tests.infra.images bullseye trixie     # build (or find) the images the tests use

CI builds them as root on a fresh machine (about 75 s each); later runs find them in the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("LAUNCH_TEST_IMAGES", "/var/cache/launch-test-images"))
BASE_PACKAGES = ("python3", "openssh-server", "iproute2", "procps", "rsync", "ca-certificates")


@dataclass(frozen=True)
class Image:
    """A Debian suite and the packages installed into it beside the base."""
    suite: str
    packages: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        digest = hashlib.sha256(" ".join(BASE_PACKAGES + self.packages).encode()).hexdigest()[:10]
        return f"{self.suite}-{digest}"

    @property
    def path(self) -> Path:
        return CACHE / self.key


# Debian 11 with the distribution's protobuf and cryptography in the system site-packages: what a real
# image carries (docker.io pulls python3-protobuf in), and what shadowed a runtime taken from the laptop.
BULLSEYE = Image("bullseye", ("python3-protobuf", "python3-cryptography"))   # Python 3.9
TRIXIE = Image("trixie")                                                      # Python 3.13
IMAGES = {"bullseye": BULLSEYE, "trixie": TRIXIE}


def images_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "image twins need root (debootstrap, chroot, mount namespaces)"
    if shutil.which("debootstrap") is None:
        return "image twins need debootstrap (./dev test installs it when run as root)"
    return None


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {(r.stdout + r.stderr)[-2000:]}")


def ensure(image: Image) -> Path:
    """The image's root filesystem, built on first use (a lock keeps two sessions from building it twice)."""
    if (image.path / ".complete").exists():
        return image.path
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{image.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image.path / ".complete").exists():
            return image.path
        tmp = CACHE / f".{image.key}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", image.suite, str(tmp)])
        if image.packages:  # with apt, which resolves virtual packages (debootstrap's --include does not)
            _run(["chroot", str(tmp), "apt-get", "install", "-y", "-q", "--no-install-recommends", *image.packages])
        subprocess.run(["chroot", str(tmp), "ssh-keygen", "-A"], check=True, capture_output=True)
        subprocess.run(["chroot", str(tmp), "apt-get", "clean"], check=False, capture_output=True)
        (tmp / ".complete").write_text(image.key + "\n")
        shutil.rmtree(image.path, ignore_errors=True)
        os.replace(tmp, image.path)
    return image.path


if __name__ == "__main__":
    for name in sys.argv[1:] or list(IMAGES):
        print(ensure(IMAGES[name]))
