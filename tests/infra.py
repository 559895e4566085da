"""Shared test helpers: the CLI as a user runs it, config files, and process checks.

Expensive fixtures (sshd hosts, moto server, Slurm) will live here too, built once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, home: Path, cwd: Path | None = None, timeout: float = 120, input: str | None = None):
    """Run `launch ARGS` in a fresh process, as a user would, with LAUNCH_HOME=home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    env.update({"LAUNCH_HOME": str(home), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        input=input if input is not None else "",
    )


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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
