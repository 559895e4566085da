"""What a node has: detected CPUs, memory and NVIDIA GPUs, merged with what its node type declares."""

from __future__ import annotations

import os
import shutil
import subprocess

from core.machine import detect_cpus, detect_memory_bytes  # noqa: F401  (re-exported)


def visible_gpu_ids() -> list[str] | None:
    """The GPUs this node may use when its environment names them (a Slurm allocation's GPUs, or a
    user's CUDA_VISIBLE_DEVICES): those ids; None when nothing limits it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]


def detect_gpus() -> list[dict[str, str]]:
    """One dict (index, name, memory_mib) per GPU that `nvidia-smi` reports and the node may use
    (visible_gpu_ids); [] when there is none."""
    visible = visible_gpu_ids()
    exe = shutil.which("nvidia-smi")
    if not exe:
        # no driver tools (a GPU allocation seen only through its environment): the ids Slurm gave
        return [{"index": g, "name": "", "memory_mib": ""} for g in visible or []]
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
    if visible is not None:
        gpus = [g for g in gpus if g["index"] in visible] if all(v.isdigit() for v in visible) else \
            [{"index": v, "name": gpus[0]["name"] if gpus else "", "memory_mib": ""} for v in visible]
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
        if gpus[0]["name"]:
            detected[f"accelerator_type:{accelerator_type(gpus[0]['name'])}"] = 1.0
    detected.update({k: float(v) for k, v in declared.items()})
    if not detected.get("GPU"):
        # a node type that hides its GPUs (GPU: 0, a CPU-only head on a GPU machine) offers no GPU model
        detected = {k: v for k, v in detected.items() if not k.startswith("accelerator_type:") or k in declared}
    return {k: v for k, v in detected.items() if v > 0 or k in declared}
