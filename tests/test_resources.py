"""Resource detection: CPUs and memory from the OS, GPUs from a real `nvidia-smi` call (a stand-in on PATH)."""

import os
import stat

from runtime.resources import accelerator_type, detect_gpus, node_resources


def _fake_nvidia_smi(tmp_path, body):
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_no_gpu_when_nvidia_smi_absent(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == []
    res = node_resources({})
    assert res["CPU"] == len(os.sched_getaffinity(0)) and res["memory"] > 0 and "GPU" not in res


def test_gpus_detected_and_declared_values_win(monkeypatch, tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, 'echo "0, NVIDIA H100 80GB HBM3, 81559"\necho "1, NVIDIA H100 80GB HBM3, 81559"\n')
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g["index"] for g in detect_gpus()] == ["0", "1"]
    res = node_resources({"CPU": 4, "custom": 2})
    assert res["GPU"] == 2 and res["accelerator_type:H100"] == 1
    assert res["CPU"] == 4 and res["custom"] == 2
    hidden = node_resources({"GPU": 0})  # a node type may hide its GPUs, and then their model too
    assert hidden["GPU"] == 0 and "accelerator_type:H100" not in hidden


def test_failing_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n"))
    assert detect_gpus() == []


def test_accelerator_type_names():
    assert accelerator_type("Tesla T4") == "T4"
    assert accelerator_type("NVIDIA A100-SXM4-40GB") == "A100"


def test_an_allocations_gpus_limit_what_the_node_uses(monkeypatch, tmp_path):
    """In a Slurm allocation the job's CUDA_VISIBLE_DEVICES names the GPUs it was given: the node uses
    those, not every GPU of the machine; without nvidia-smi (count-only GRES) the ids alone."""
    bin_dir = _fake_nvidia_smi(tmp_path, "".join(f'echo "{i}, Tesla T4, 15360"\n' for i in range(4)))
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert [g["index"] for g in detect_gpus()] == ["1", "3"]
    assert node_resources({})["GPU"] == 2
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [g["index"] for g in detect_gpus()] == ["0"]
    assert node_resources({})["GPU"] == 1 and not any(k.startswith("accelerator_type") for k in node_resources({}))
