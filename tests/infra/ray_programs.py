"""Ray programs (tests/ray_programs/*.py) and how one becomes a launch program: its imports changed,
nothing else. Used by tests/test_ray_programs.py (on launch) and bench/ray_conformance.py (on Ray)."""

from __future__ import annotations

import re
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parents[1] / "ray_programs"
# what each program may ask of the cluster (a launch cluster and Ray's are made with these)
CLUSTER = {"head": {"CPU": 2}, "cpu": {"CPU": 2}, "gpu": {"CPU": 1, "GPU": 2, "special": 1}}


def programs() -> list[Path]:
    return sorted(PROGRAMS.glob("*.py"))


def as_launch(text: str) -> str:
    """`import ray` -> `import runtime as ray`; `from ray.X import Y` -> `from runtime.X import Y`."""
    text = re.sub(r"^(\s*)import ray[ \t]*$", r"\1import runtime as ray", text, flags=re.M)
    return re.sub(r"^(\s*)from ray(\.[\w.]+)? import ", r"\1from runtime\2 import ", text, flags=re.M)
