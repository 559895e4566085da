"""The runtime bundle made for a node's own Python (lifecycle/runtime_bundle.py): what a probe says, which
wheels fit, and that this project's code imports on the oldest Python a node may run."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from core.errors import LaunchError
from core.paths import is_head_bundle_site
from lifecycle import runtime_bundle as rb
from lifecycle.runtime_bundle import Target


def test_a_probe_line_is_a_target_with_its_tag():
    t = Target.parse("cpython 3 9 x86_64 glibc 2.31")
    assert t == Target("cpython", (3, 9), "x86_64", "glibc 2.31")
    assert t.tag == "cp39-x86_64" and str(t) == "Python 3.9 (cpython, x86_64)"
    assert Target.parse("cpython 3 13 aarch64").libc == ""  # libc_ver() may say nothing


def test_wheels_fit_the_targets_c_library_and_machine():
    assert Target("cpython", (3, 9), "x86_64", "glibc 2.19").platforms() == [
        "manylinux_2_19_x86_64", "manylinux_2_18_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert Target("cpython", (3, 12), "aarch64", "musl").platforms() == [
        "musllinux_1_2_aarch64", "musllinux_1_1_aarch64"]


def test_the_launchers_own_packages_serve_only_the_same_interpreter_with_a_newer_libc():
    laptop = Target("cpython", (3, 11), "x86_64", "glibc 2.36")
    assert Target("cpython", (3, 11), "x86_64", "glibc 2.39").runs_wheels_of(laptop)
    assert not Target("cpython", (3, 11), "x86_64", "glibc 2.31").runs_wheels_of(laptop)
    assert not Target("cpython", (3, 10), "x86_64", "glibc 2.39").runs_wheels_of(laptop)
    assert not Target("cpython", (3, 11), "aarch64", "glibc 2.39").runs_wheels_of(laptop)


@pytest.mark.parametrize("target, says", [
    (Target("cpython", (3, 8), "x86_64"), "the node's python3 is 3.8: the runtime needs Python 3.9-3.14"),
    (Target("pypy", (3, 10), "x86_64"), "the node's python3 is pypy"),
])
def test_an_unsupported_python_is_named(target, says):
    with pytest.raises(LaunchError, match=says.replace(".", r"\.")):
        target.check_supported()


def test_a_bundle_says_what_it_was_made_for():
    assert rb.bundle_target_tag("node-cp39-x86_64-0123456789abcdef") == "cp39-x86_64"
    assert is_head_bundle_site("/root/.launch-runtime/install/head-cp39-x86_64-0123/site")
    assert not is_head_bundle_site("/root/.launch-runtime/install/node-cp39-x86_64-0123/site")
    assert not is_head_bundle_site("/opt/head-x/site")


def test_a_head_runs_one_python_its_workers_must_share(tmp_path, monkeypatch):
    """On a head, the node bundle is the one it was shipped: a worker of another Python is refused."""
    monkeypatch.setattr(rb, "installed_node_bundle", lambda: ("node-cp39-x86_64-0123456789abcdef", tmp_path))
    assert rb.build_bundle("node", target=Target("cpython", (3, 9), "x86_64"))[0].startswith("node-cp39")
    with pytest.raises(LaunchError, match=r"the node's python3 is Python 3\.12 \(cpython, x86_64\) but the "
                                          r"cluster's head runs cp39-x86_64"):
        rb.build_bundle("node", target=Target("cpython", (3, 12), "x86_64"))


def test_a_wheels_library_data_is_installed_and_its_scripts_are_not(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/__init__.py", "X = 1\n")
        zf.writestr("pkg-1.0.data/purelib/extra.py", "Y = 2\n")
        zf.writestr("pkg-1.0.data/scripts/tool", "#!/bin/sh\n")
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    rb._unpack_wheel(wheel, tmp_path / "site")
    found = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*") if p.is_file())
    assert found == ["extra.py", "pkg-1.0.dist-info/METADATA", "pkg/__init__.py"]


def test_the_head_bundle_asks_for_the_clouds_sdk_as_launch_declares_it():
    assert "boto3>=1.34" in rb.bundle_requirements("head", "aws", Target("cpython", (3, 12), "x86_64"))
    py39 = rb.bundle_requirements("head", "gcp", Target("cpython", (3, 9), "x86_64"))
    assert "google-cloud-compute>=1.14" in py39 and "eval_type_backport>=0.2" in py39
    import cloudpickle

    assert f"cloudpickle=={cloudpickle.__version__}" in rb.bundle_requirements("node", "", Target.local())


def test_the_head_bundle_leaves_out_what_its_cloud_sdk_never_imports():
    """Each provider says which of its SDK's files the head never imports (providers/<cloud>.py FACTS):
    botocore's models of services other than ec2, iam and sts; the Azure clients' async halves."""
    def arcs(provider: str) -> set[str]:
        return {arc for arc, _ in rb._dependency_files("head", provider, Target.local())}

    aws = arcs("aws")
    assert any(a.startswith("site/botocore/data/ec2/") for a in aws)
    assert not any(a.startswith("site/botocore/data/s3/") for a in aws)
    azure = arcs("azure")
    assert any(a.startswith("site/azure/mgmt/compute/") for a in azure)
    assert not any("/aio/" in a for a in azure if a.startswith("site/azure/mgmt/"))


def test_no_wheels_for_the_nodes_platform_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path))
    with pytest.raises(LaunchError) as e:
        rb.resolved_site(Target("cpython", (3, 12), "sparc64", "glibc 2.36"), ["grpcio>=1.66"])
    msg = str(e.value)
    assert msg.startswith("cannot make the runtime for a node's Python 3.12 (cpython, sparc64): resolving "
                          "grpcio>=1.66 with pip failed: ") and "\n" not in msg


IMPORT_ALL = """
import importlib, pkgutil
bad = []
for pkg in ["core", "transport", "providers", "lifecycle", "autoscaler", "runtime", "launcher"]:
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        if info.name in ("launcher.cli", "launcher.__main__"):  # the laptop's CLI (typer, rich): never on a node
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:
            bad.append(f"{info.name}: {type(e).__name__}: {e}")
print("\\n".join(bad) or "all imported")
"""


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_every_module_imports_on_python_39_with_the_head_bundle_of_each_cloud(provider, node_images, tmp_path,
                                                                                monkeypatch):
    """Debian 11's Python 3.9, the oldest a node may run (Amazon Linux 2023's too), with the bundles made
    for it: this project's code and each cloud's SDK, ahead of the image's own protobuf."""
    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path / "home"))
    target = Target("cpython", (3, 9), "x86_64", "glibc 2.31")
    sites = []
    for kind in ("node", "head"):
        _, bundle = rb.build_bundle(kind, provider, target)
        dest = tmp_path / kind
        dest.mkdir()
        subprocess.run(["tar", "-xzf", str(bundle), "-C", str(dest)], check=True)
        sites.append(dest / "site")
    (sites[0] / "import_all.py").write_text(IMPORT_ALL)
    root = tmp_path / "root"
    root.mkdir()
    # the image, read-only underneath, with the two sites bound in
    script = (f"mount --bind {node_images['bullseye']} {root} && mount -o remount,bind,ro {root} && "
              f"mount -t tmpfs tmpfs {root}/tmp && mkdir {root}/tmp/node {root}/tmp/head && "
              f"mount --bind {sites[0]} {root}/tmp/node && mount --bind {sites[1]} {root}/tmp/head && "
              f"mount -t proc proc {root}/proc && "
              f"exec chroot {root} env PYTHONPATH=/tmp/node:/tmp/head python3 /tmp/node/import_all.py")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "all imported", out.stdout + out.stderr


def test_a_node_whose_python3_is_a_venv_imports_the_runtime(tmp_path, monkeypatch):
    """A venv's python3 (an image that puts one first on PATH) reads no user site: the runtime's .pth
    goes into the venv's own site-packages, so a bare `python3` there imports the shipped runtime."""
    import io
    import sys

    from transport.local import LocalCommandRunner

    monkeypatch.setenv("LAUNCH_HOME", str(tmp_path / "launch"))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the node's python3 finds the runtime by itself
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    home = tmp_path / "node"
    home.mkdir()
    node = LocalCommandRunner(home, {}, str(venv / "bin" / "python3"))  # `python3` there is the venv's
    target, pth_dir, _, _ = rb.probe(node)
    assert target == Target.local() and pth_dir.startswith(str(venv)) and pth_dir.endswith("site-packages")
    rb.ensure_runtime(node, io.StringIO())
    r = node.run("cd / && python3 -c 'import runtime; print(runtime.__file__)'")
    assert r.ok and r.tail[-1].startswith(f"{home}/.launch-runtime/install/node-"), r.tail
