"""The shared test Slurm (tests/infra/slurm.py) is a real one: a job submitted with sbatch runs on its
node, count-only GPU GRES reach the job as CUDA_VISIBLE_DEVICES, and scancel empties the queue. The
Slurm provider's tests (issue 15) build on this fixture."""

from __future__ import annotations

import subprocess

from tests.infra import wait_for


def test_a_gpu_job_runs_with_its_gpus_and_cancel_empties_the_queue(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = subprocess.run(["sbatch", "--parsable", "--gres=gpu:2", "-c", "1", "-o", str(out), "--wrap",
                          'echo "gpus=$CUDA_VISIBLE_DEVICES host=$SLURMD_NODENAME"'],
                         env=slurm.env, capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: out.exists() and job not in slurm.queue() and out.read_text(), timeout=30,
             what="the job to finish")
    assert out.read_text().strip() == "gpus=0,1 host=localhost"
    holder = subprocess.run(["sbatch", "--parsable", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 600"],
                            env=slurm.env, capture_output=True, text=True, check=True).stdout.strip()
    assert holder in slurm.queue()
    slurm.scancel_all()
    assert slurm.queue() == []
