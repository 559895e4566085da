"""What a node has: detected CPUs, memory and NVIDIA GPUs, merged with what its node type declares."""

from __future__ import annotations

import shutil
import subprocess

from core.machine import detect_cpus, detect_memory_bytes  # noqa: F401  (re-exported)


def detect_gpus() -> list[dict[str, str]]:
    """One dict (index, name, memory_mib) per GPU that `nvidia-smi` reports; [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append({"index": parts[0], "name": parts[1], "memory_mib": parts[2]})
    return gpus


def accelerator_type(gpu_name: str) -> str:
    """A short model name for the custom resource `accelerator_type:<T>` (e.g. 'NVIDIA H100 80GB HBM3' -> 'H100')."""
    words = [w for w in gpu_name.replace("-", " ").split() if w.upper() not in ("NVIDIA", "TESLA", "GEFORCE")]
    return words[0] if words else gpu_name


def node_resources(declared: dict[str, float]) -> dict[str, float]:
    """Detected resources, overridden by the node type's declared ones (which may add GPUs it lacks)."""
    detected: dict[str, float] = {"CPU": detect_cpus(), "memory": detect_memory_bytes()}
    gpus = detect_gpus()
    if gpus:
        detected["GPU"] = float(len(gpus))
        detected[f"accelerator_type:{accelerator_type(gpus[0]['name'])}"] = 1.0
    detected.update({k: float(v) for k, v in declared.items()})
    return {k: v for k, v in detected.items() if v > 0 or k in declared}
