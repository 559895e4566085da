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
