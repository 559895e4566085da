"""What the tasks of a GPU cluster see: run it on a cluster with a GPU node (`launch submit CONFIG
examples/gpu_check.py`). Prints, per task, the CUDA_VISIBLE_DEVICES the runtime gave it and what CUDA
(through PyTorch, when the image has it) sees; exits non-zero when a task saw GPUs it was not given."""

from __future__ import annotations

import json
import os
import sys

import runtime


def cuda_view() -> dict:
    seen = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "host": os.uname().nodename}
    try:
        import torch
    except ImportError:
        return seen
    seen["torch_device_count"] = torch.cuda.device_count()
    if seen["torch_device_count"]:
        seen["torch_device_name"] = torch.cuda.get_device_name(0)
        x = torch.ones(1024, 1024, device="cuda")
        seen["matmul_ok"] = bool((x @ x)[0, 0].item() == 1024)
    return seen


def main() -> int:
    runtime.init()
    whole = runtime.get(runtime.remote(num_gpus=1)(cuda_view).remote(), timeout=300)
    none = runtime.get(runtime.remote(num_gpus=0)(cuda_view).remote(), timeout=300)
    halves = runtime.get([runtime.remote(num_gpus=0.5)(cuda_view).remote() for _ in range(2)], timeout=300)
    for name, seen in [("num_gpus=1", whole), ("num_gpus=0", none)] + [("num_gpus=0.5", h) for h in halves]:
        print(f"{name:13} {json.dumps(seen, sort_keys=True)}")
    bad = []
    if not whole["CUDA_VISIBLE_DEVICES"] or "," in whole["CUDA_VISIBLE_DEVICES"]:
        bad.append("a 1-GPU task was not given exactly one GPU")
    if none["CUDA_VISIBLE_DEVICES"] != "" or none.get("torch_device_count", 0) != 0:
        bad.append("a task without GPUs could see one")
    if any(h.get("torch_device_count", 1) != 1 for h in halves + [whole]):
        bad.append("CUDA saw other than the one GPU it was given")
    for line in bad:
        print("FAIL:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
