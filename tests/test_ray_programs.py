"""Ray programs, written as Ray's documentation teaches, run on a launch cluster with only their imports
changed (tests/ray_programs/README.md): the conformance suite of the client API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.infra import RunningCluster, local_cluster
from tests.infra.ray_programs import CLUSTER, as_launch, programs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rayprog")
    data = local_cluster("rayprog", autoscaler={"enabled": False})
    data["available_node_types"] = {
        "head": {"resources": CLUSTER["head"], "max_workers": 0},
        "cpu": {"resources": CLUSTER["cpu"], "min_workers": 1, "max_workers": 1},
        "gpu": {"resources": CLUSTER["gpu"], "min_workers": 1, "max_workers": 1},
    }
    c = RunningCluster(tmp, data)
    import runtime

    runtime.shutdown()  # the programs connect on their own
    yield c, tmp
    c.down()


def test_imports_are_all_that_changes():
    text = "import ray\nfrom ray.util import ActorPool\nfrom ray import exceptions\nimport rayon\n  import ray\n"
    assert as_launch(text) == ("import runtime as ray\nfrom runtime.util import ActorPool\n"
                               "from runtime import exceptions\nimport rayon\n  import runtime as ray\n")


@pytest.mark.parametrize("program", programs(), ids=lambda p: p.stem)
def test_ray_program_runs(cluster, program):
    c, tmp = cluster
    path = tmp / program.name
    path.write_text(as_launch(program.read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    env["LAUNCH_HOME"] = str(c.home)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=180, env=env,
                       cwd=tmp)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-3000:] + r.stderr[-5000:]
