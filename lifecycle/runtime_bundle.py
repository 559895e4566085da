"""Ship the runtime to an SSH node: the same code the launcher runs, never a different version.

Two bundles, each one tar.gz built once from the launcher's own environment and cached by fingerprint:
- the **node** bundle, for every node: this project's packages plus what the runtime imports (grpc,
  protobuf, cloudpickle);
- the **head** bundle, for the head only: what the control plane there imports (the autoscaler, the
  lifecycle, SSH to the workers, the config model) and the cloud SDK of the cluster's provider
  (boto3 for AWS, with only the service models it calls; google-cloud-compute and google-auth for GCP;
  the azure-mgmt clients and azure-identity, without their async halves, for Azure).
On the node each is unpacked into ~/.launch-runtime/install/<id>/site; ~/.launch-runtime/bin/python
runs the node's python3 with them on its path, and a user-site `.pth` makes `import runtime` work in
any `python3` of the node user (as a fallback: a package the user installed wins). The node bundle's
tar.gz is kept beside its install, so the head ships exactly that bundle to the workers it sets up.
Installs already there are not sent again. The dependencies include compiled code, so the node's
Python must have the launcher's ABI (e.g. cpython-311 on x86_64); a node that differs gets a clear error.
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

from core.errors import LaunchError
from core.paths import INSTALLS, NODE_PYTHON, launch_home
from transport.base import CommandRunner

OUR_PACKAGES = ["core", "transport", "providers", "lifecycle", "autoscaler", "launcher", "runtime"]
# what the runtime (head service, agent, workers, the client API) imports
NODE_DEPENDENCIES = ["grpc", "google.protobuf", "google._upb", "cloudpickle", "typing_extensions"]
# what the control plane on the head imports: config model, SSH to workers, metrics
HEAD_DEPENDENCIES = ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml", "paramiko",
                     "invoke", "cryptography", "bcrypt", "nacl", "_cffi_backend", "prometheus_client"]
# and the cloud SDK of the provider the head's autoscaler calls
PROVIDER_DEPENDENCIES = {
    "aws": ["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "certifi"],
    "gcp": ["google.cloud.compute_v1", "google.cloud.compute", "google.api_core", "google.auth", "google.oauth2",
            "google.rpc", "proto", "requests", "urllib3", "certifi", "charset_normalizer", "idna"],
    "azure": ["azure.core", "azure.mgmt.core", "azure.mgmt.compute", "azure.mgmt.network", "azure.mgmt.resource",
              "azure.mgmt.msi", "azure.mgmt.authorization", "azure.identity", "azure.common", "azure.profiles",
              "msal", "isodate", "requests", "urllib3", "certifi", "charset_normalizer", "idna"],
}
# imported by the SDKs where present (optional there too)
PROVIDER_OPTIONAL = {"gcp": {"google.api", "google.type", "google.longrunning", "grpc_status", "opentelemetry",
                             "rsa", "pyasn1", "pyasn1_modules", "cachetools"},
                     "azure": {"jwt", "msal_extensions"}}
# botocore carries every AWS service's model; the head calls only these
BOTOCORE_SERVICES = {"ec2", "iam", "sts"}
BUNDLE_NAME = "bundle.tar.gz"  # kept beside a node install: what the head ships on to its workers


def local_abi() -> str:
    return f"{sys.implementation.cache_tag}-{platform.machine()}"


def _skip(arc: str) -> bool:
    parts = arc.split("/")
    if parts[1:3] == ["botocore", "data"] and len(parts) > 4:  # site/botocore/data/<service>/...
        return parts[3] not in BOTOCORE_SERVICES
    if parts[1:3] == ["azure", "mgmt"] and "aio" in parts[4:-1]:  # the async clients: the head uses the sync ones
        return True
    return False


def _files(modules: list[str], optional: set[str] = frozenset()) -> list[tuple[str, Path]]:
    out = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            if name in optional:
                continue
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
                arc = f"{prefix}/{path.relative_to(root).as_posix()}"
                if not _skip(arc):
                    out.append((arc, path))
    return out


def _metadata_files(modules: list[str]) -> list[tuple[str, Path]]:
    """The dist-info METADATA of each shipped distribution: some packages (paramiko) ask for their own
    version at import."""
    import importlib.metadata as md

    dists = md.packages_distributions()
    out = []
    for dist_name in sorted({d for m in modules for d in dists.get(m.split(".")[0], [])}):
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        info = getattr(dist, "_path", None)
        if info is not None and (Path(info) / "METADATA").exists():
            out.append((f"site/{Path(info).name}/METADATA", Path(info) / "METADATA"))
    return out


def bundle_modules(kind: str, provider: str = "") -> tuple[list[str], set[str]]:
    """(modules, the optional ones) of the node bundle or of the head bundle for a provider."""
    if kind == "node":
        return OUR_PACKAGES + NODE_DEPENDENCIES, set()
    optional = PROVIDER_OPTIONAL.get(provider, set())
    return (HEAD_DEPENDENCIES + PROVIDER_DEPENDENCIES.get(provider, []) + sorted(optional),
            {"invoke", "typing_inspection", *optional})


@functools.lru_cache(maxsize=4)
def _fingerprint(kind: str, provider: str) -> tuple[str, tuple[tuple[str, Path], ...]]:
    """(bundle id, files): the walk and stat of every shipped file, once per process and bundle."""
    modules, optional = bundle_modules(kind, provider)
    files = tuple(_files(modules, optional) + _metadata_files([m for m in modules if m not in OUR_PACKAGES]))
    fp = hashlib.sha256(f"{local_abi()}\0{kind}\0{provider}".encode())
    for arc, path in files:
        st = path.stat()
        fp.update(f"{arc}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"{kind}-{fp.hexdigest()[:16]}", files


def installed_node_bundle() -> tuple[str, Path] | None:
    """When this code runs from a shipped install (the head's autoscaler), that install's bundle."""
    site = Path(__file__).resolve().parent.parent
    bundle = site.parent / BUNDLE_NAME
    if site.name == "site" and bundle.exists():
        return site.parent.name, bundle
    return None


_build_lock = threading.Lock()


def build_bundle(kind: str = "node", provider: str = "") -> tuple[str, Path]:
    """(bundle id, path of the tar.gz), built on first use and cached under $LAUNCH_HOME/bundles.

    Nodes are set up in parallel threads: the lock makes the first build the only one."""
    if kind == "node" and (shipped := installed_node_bundle()) is not None:
        return shipped
    bundle_id, files = _fingerprint(kind, provider)
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


def _install_cmd(bundle_id: str, upload: str, keep: bool) -> str:
    install = f"{INSTALLS}/{bundle_id}"
    keep_it = f"mv {upload} {install}/{BUNDLE_NAME}" if keep else f"rm -f {upload}"
    return (f"rm -rf {install} && mkdir -p {install} && tar -xzf {upload} -C {install} && {keep_it} "
            f"&& touch {install}/.complete")


# Appended to the user's site-packages as a .pth line: a finder consulted after every other one, so
# `import runtime` works in any python3 of the node user, while a package the user installed still wins.
_PTH = ("import sys, importlib.machinery as m; sys.meta_path.append(type('LaunchRuntimeFinder', (), "
        "{{'find_spec': staticmethod(lambda n, p=None, t=None, f=m.PathFinder.find_spec, s={sites!r}: "
        "None if p is not None else f(n, s))}}))\n")


def ensure_runtime(runner: CommandRunner, log: TextIO, provider: str | None = None) -> str:
    """Install the launcher's runtime on the node if it is not there yet (and, for the head, the control
    plane's dependencies for `provider`); returns the node's python."""
    bundles = [build_bundle("node")] + ([build_bundle("head", provider)] if provider is not None else [])
    checks = " ".join(f"$(test -f {INSTALLS}/{bid}/.complete && echo installed || echo missing)" for bid, _ in bundles)
    # one round trip (each command costs the node's sshd ~0.1 s): the node's ABI, its user site, and
    # which installs it has
    probe = runner.run("python3 -c \"import sys, platform, site, os; print(sys.implementation.cache_tag + '-' + "
                       "platform.machine()); print(site.getusersitepackages()); print(os.path.expanduser('~'))\""
                       f" && echo {checks}")
    if not probe.ok or len(probe.tail) < 4:
        raise LaunchError("python3 is not available on the node: install Python 3 there (setup cannot run the runtime)")
    remote_abi, user_site, home = (line.strip() for line in probe.tail[-4:-1])
    installed = probe.tail[-1].split()
    if remote_abi != local_abi():
        raise LaunchError(f"the node's python3 is {remote_abi} but the launcher runs {local_abi()}: the shipped "
                          f"runtime has compiled parts; use a node image with the same Python, or run launch "
                          f"with the node's Python version")
    for (bundle_id, path), state in zip(bundles, installed):
        if state == "installed":
            log.write(f"runtime {bundle_id} already installed\n")
            continue
        log.write(f"installing the runtime ({bundle_id}, {path.stat().st_size // 1024} KiB)\n")
        upload = f"{INSTALLS}/upload-{bundle_id}.tar.gz"
        runner.put_file(path.read_bytes(), upload, mode=0o600)
        runner.run(_install_cmd(bundle_id, upload, keep=bundle_id.startswith("node-")), check=True)
    sites = [f"{home}/{INSTALLS[2:]}/{bid}/site" for bid, _ in bundles]
    wrapper = ("#!/bin/sh\n"
               f'PYTHONPATH="{":".join(sites)}${{PYTHONPATH:+:$PYTHONPATH}}" exec python3 "$@"\n')
    runner.put_file(wrapper.encode(), NODE_PYTHON, mode=0o755)
    runner.put_file(_PTH.format(sites=sites).encode(), f"{user_site}/launch-runtime.pth", mode=0o644)
    return NODE_PYTHON
