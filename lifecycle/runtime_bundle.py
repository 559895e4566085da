"""Ship the runtime to an SSH node: the same code the launcher runs, never a different version.

The bundle is this project's packages plus the runtime's dependencies (grpc, protobuf, cloudpickle)
taken from the launcher's own environment, as one tar.gz built once and cached by fingerprint. On the
node it is unpacked into ~/.launch-runtime/install/<id>/site, and ~/.launch-runtime/bin/python runs
the node's python3 with that on its path. An install that is already there is not sent again. The
dependencies include compiled code, so the node's Python must have the launcher's ABI (e.g.
cpython-311 on x86_64); a node that differs gets a clear error instead of a broken runtime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import platform
import sys
import tarfile
import threading
from pathlib import Path
from typing import TextIO

from transport.base import CommandRunner
from core.errors import LaunchError
from core.paths import NODE_PYTHON
from core.paths import launch_home

OUR_PACKAGES = ["core", "transport", "providers", "lifecycle", "autoscaler", "launcher", "runtime"]
DEPENDENCIES = ["grpc", "google.protobuf", "google._upb", "cloudpickle", "typing_extensions"]


def local_abi() -> str:
    return f"{sys.implementation.cache_tag}-{platform.machine()}"


def _files() -> list[tuple[str, Path]]:
    out = []
    for name in OUR_PACKAGES + DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise LaunchError(f"cannot find {name} to ship to nodes; reinstall launch")
        if not spec.submodule_search_locations:  # a single-file module
            out.append((f"site/{Path(spec.origin).name}", Path(spec.origin)))
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        prefix = "site/" + name.replace(".", "/")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if f.endswith(".pyc"):
                    continue
                path = Path(dirpath) / f
                out.append((f"{prefix}/{path.relative_to(root).as_posix()}", path))
    return out


@functools.lru_cache(maxsize=1)
def _fingerprint() -> tuple[str, tuple[tuple[str, Path], ...]]:
    """(bundle id, files): the walk and stat of every shipped file, once per launcher process."""
    files = tuple(_files())
    fp = hashlib.sha256(local_abi().encode())
    for arc, path in files:
        st = path.stat()
        fp.update(f"{arc}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return fp.hexdigest()[:16], files


_build_lock = threading.Lock()


def build_bundle() -> tuple[str, Path]:
    """(bundle id, path of the tar.gz), built on first use and cached under $LAUNCH_HOME/bundles.

    Nodes are set up in parallel threads: the lock makes the first build the only one."""
    bundle_id, files = _fingerprint()
    cache = launch_home() / "bundles" / f"runtime-{bundle_id}.tar.gz"
    with _build_lock:
        if cache.exists():
            return bundle_id, cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
            for arc, path in files:
                tar.add(path, arcname=arc, recursive=False)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, cache)
    return bundle_id, cache


def ensure_runtime(runner: CommandRunner, log: TextIO) -> str:
    """Install the launcher's runtime on the node if it is not there yet; returns the node's python."""
    bundle_id, path = build_bundle()
    install = f"~/.launch-runtime/install/{bundle_id}"
    # one round trip (each command costs the node's sshd ~0.1 s): the node's ABI, and whether it has this install
    probe = runner.run("python3 -c \"import sys, platform; print(sys.implementation.cache_tag + '-' + platform.machine())\""
                       f" && if test -f {install}/.complete; then echo installed; else echo missing; fi")
    if not probe.ok or len(probe.tail) < 2:
        raise LaunchError("python3 is not available on the node: install Python 3 there (setup cannot run the runtime)")
    remote_abi, installed = probe.tail[-2].strip(), probe.tail[-1].strip() == "installed"
    if remote_abi != local_abi():
        raise LaunchError(f"the node's python3 is {remote_abi} but the launcher runs {local_abi()}: the shipped "
                          f"runtime has compiled parts; use a node image with the same Python, or run launch "
                          f"with the node's Python version")
    if not installed:
        log.write(f"installing the runtime ({bundle_id}, {path.stat().st_size // 1024} KiB)\n")
        upload = f"~/.launch-runtime/runtime-{bundle_id}.tar.gz"
        runner.put_file(path.read_bytes(), upload, mode=0o600)
        runner.run(f"rm -rf {install} && mkdir -p {install} && tar -xzf {upload} -C {install} && rm -f {upload} "
                   f"&& touch {install}/.complete", check=True)
    else:
        log.write(f"runtime {bundle_id} already installed\n")
    wrapper = ("#!/bin/sh\n"
               f'PYTHONPATH="$HOME/.launch-runtime/install/{bundle_id}/site${{PYTHONPATH:+:$PYTHONPATH}}" '
               'exec python3 "$@"\n')
    runner.put_file(wrapper.encode(), NODE_PYTHON, mode=0o755)
    return NODE_PYTHON

