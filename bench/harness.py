"""What the benches share (bench/scale.py, autoscale_twins.py, preemption.py, fanout_twins.py): a twin
network of the run's own with a key for the laptop, `launch` run as a user runs it, CPU time of a process,
a config written as YAML. The twins themselves are the tests' (tests/infra/twins.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def launch(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "launcher", *args], env={**os.environ, "LAUNCH_HOME": str(home)},
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"launch {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def twin_lab(prefix: str) -> Iterator[tuple]:
    """(net, key, home): a twin network, the laptop's SSH key, and the laptop's LAUNCH_HOME (hidden from the
    twins, set in this process's environment too). Closed on the way out, twins and all."""
    from tests.infra.twins import TwinNet, twins_unavailable

    reason = twins_unavailable()
    if reason:
        raise SystemExit(reason)
    os.makedirs("/run/sshd", exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    net = TwinNet(tmp / "net", Path(f"{key}.pub"))
    home = net.laptop / "home"
    os.environ["LAUNCH_HOME"] = str(home)
    try:
        yield net, key, home
    finally:
        net.close()
