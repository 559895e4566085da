"""What this machine has: the resources a node takes when its type declares none."""

from __future__ import annotations

import os


def detect_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:
        return float(os.cpu_count() or 1)


def detect_memory_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 0.0


def pids_with_env(name: str, value: str, prefix: bool = False) -> list[int]:
    """Every live process (but this one) whose environment, as it was started, holds NAME=VALUE (with
    prefix, a value that starts with VALUE): a tree marked this way is found whole, also the processes
    that left its session or process group."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if (any(e.startswith(needle) for e in env) if prefix else needle in env):
            found.append(int(entry.name))
    return [p for p in found if p != os.getpid()]
