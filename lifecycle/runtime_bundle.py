"""Ship the runtime to an SSH node, made for the node's own Python: never a copy of the laptop assumed.

Two bundles, each one tar.gz built once and cached by fingerprint under $LAUNCH_HOME/bundles:
- the **node** bundle, for every node: this project's packages plus what the runtime imports (grpc,
  protobuf, cloudpickle);
- the **head** bundle, for the head only: what the control plane there imports (the autoscaler, the
  lifecycle, SSH to the workers, the config model) and the cloud SDK of the cluster's provider
  (boto3 for AWS, with only the service models it calls; google-cloud-compute and google-auth for GCP;
  the azure-mgmt clients and azure-identity, without their async halves, for Azure).

Before anything is shipped the node's interpreter is probed (`Target`: implementation, version,
machine, libc). Our own packages are pure Python and run on 3.9-3.14. Their dependencies carry
compiled code, so they are made for the target: when it is the launcher's own interpreter, taken from
the launcher's environment (no network needed); otherwise resolved as wheels for that Python version
and manylinux (or musllinux) platform with pip and unpacked once per target and requirement set
(`$LAUNCH_HOME/bundles/deps`), so a second cluster of that Python ships at once. The node itself needs
neither pip, nor python3-venv, nor the internet.

On the node each bundle is unpacked into ~/.launch-runtime/install/<id>/site (into a folder of its
own, then renamed: nodes sharing a home share installs safely); ~/.launch-runtime/bin/python runs the
node's python3 with them first on its path, ahead of the system's packages (runtime/__init__.py also
puts its own site ahead when it is imported by a bare `python3`), and a user-site `.pth` makes
`import runtime` work in any `python3` of the node user. The node bundle's tar.gz is kept beside its
install, so the head ships exactly that bundle to the workers it sets up: a cluster runs one Python,
as Ray's does (a worker whose Python differs from the head's is refused, naming both).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import providers
from core.errors import LaunchError, first_line
from core.files import file_lock
from core.paths import INSTALLS, NODE_PYTHON, for_node, launch_home
from transport.base import CommandRunner, set_node_name

OUR_PACKAGES = ["core", "transport", "providers", "lifecycle", "autoscaler", "launcher", "runtime"]
# From the launcher's own environment, for a node of the launcher's own Python: the modules to ship.
# what the runtime (head service, agent, workers, the client API) imports
NODE_DEPENDENCIES = ["grpc", "google.protobuf", "google._upb", "cloudpickle", "typing_extensions"]
# what the control plane on the head imports: config model, SSH to workers, metrics
HEAD_DEPENDENCIES = ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml", "paramiko",
                     "invoke", "cryptography", "bcrypt", "nacl", "_cffi_backend", "prometheus_client"]
# For a node of another Python: what pip resolves (with their dependencies) for that Python and platform.
# The floors are the oldest releases the runtime works with, so that Python 3.9 (whose newest grpcio is
# 1.80 and protobuf 6.33) resolves; the generated protobuf and gRPC code in runtime/proto accepts them.
NODE_REQUIREMENTS = ["grpcio>=1.66", "protobuf>=5.28", "typing_extensions>=4.6"]  # + cloudpickle: the launcher's own
HEAD_REQUIREMENTS = ["pydantic>=2.6", "pyyaml>=6", "paramiko>=3.4", "prometheus-client>=0.20"]
PY39_HEAD_REQUIREMENTS = ["eval_type_backport>=0.2"]  # lets pydantic read `X | None` annotations on 3.9
SUPPORTED_PYTHONS = ((3, 9), (3, 14))  # oldest and newest minor version a node may run
# The last releases for Python 3.9 of packages that dropped it: a few later releases are published without
# their Requires-Python (google-auth 2.59.1, google-api-core 2.40.0, ...), and pip's resolver tried every
# version of the Google SDKs behind them for many minutes (7 s with these).
PYTHON_CONSTRAINTS = {(3, 9): ["google-auth<2.51", "google-api-core<2.31", "googleapis-common-protos<1.75.1",
                               "opentelemetry-api<1.42"]}
RESOLVE_TIMEOUT_S = 600

BUNDLE_NAME = "bundle.tar.gz"  # kept beside a node install: what the head ships on to its workers


@dataclass(frozen=True)
class Target:
    """The interpreter and platform a bundle is made for: a node's `python3`, as probed over SSH."""

    implementation: str  # sys.implementation.name: "cpython"
    version: tuple[int, int]
    machine: str  # platform.machine(): x86_64, aarch64
    libc: str = ""  # "glibc 2.31", "musl", "" (unknown)

    @classmethod
    def local(cls) -> Target:
        libc, libc_version = platform.libc_ver()
        return cls(sys.implementation.name, sys.version_info[:2], platform.machine(),
                   f"{libc} {libc_version}".strip())

    @classmethod
    def parse(cls, line: str) -> Target:
        """From the probe's `target:` line: `cpython 3 9 x86_64 glibc 2.31`."""
        impl, major, minor, machine, *libc = line.split()
        return cls(impl, (int(major), int(minor)), machine, " ".join(libc))

    @property
    def tag(self) -> str:
        """cp39-x86_64: part of every bundle id, so a bundle says what it was made for."""
        short = "cp" if self.implementation == "cpython" else self.implementation
        return f"{short}{self.version[0]}{self.version[1]}-{self.machine}"

    def __str__(self) -> str:
        return f"Python {self.version[0]}.{self.version[1]} ({self.implementation}, {self.machine})"

    def _glibc(self) -> tuple[int, int] | None:
        name, _, version = self.libc.partition(" ")
        if name != "glibc" or not version:
            return None
        major, _, minor = version.partition(".")
        return int(major), int(minor or 0)

    def runs_wheels_of(self, other: Target) -> bool:
        """Whether compiled packages installed for `other` run here: same interpreter ABI and machine, and
        a C library at least as new."""
        if (self.implementation, self.version, self.machine) != (other.implementation, other.version, other.machine):
            return False
        mine, theirs = self._glibc(), other._glibc()
        return mine is None and theirs is None or (mine is not None and theirs is not None and mine >= theirs)

    def platforms(self) -> list[str]:
        """pip's platform tags for wheels that run on this target."""
        glibc = self._glibc()
        if glibc is not None:
            tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(glibc[1], 16, -1)]
            return tags + [f"manylinux2014_{self.machine}"]
        if self.libc.startswith("musl"):
            return [f"musllinux_1_2_{self.machine}", f"musllinux_1_1_{self.machine}"]
        return [f"manylinux2014_{self.machine}"]  # unknown C library: the most widely built wheels

    def check_supported(self) -> None:
        oldest, newest = SUPPORTED_PYTHONS
        supported = f"{oldest[0]}.{oldest[1]}-{newest[0]}.{newest[1]}"
        if self.implementation != "cpython":
            raise LaunchError(f"the node's python3 is {self.implementation}: the runtime needs CPython {supported}")
        if not oldest <= self.version <= newest:
            raise LaunchError(f"the node's python3 is {self.version[0]}.{self.version[1]}: the runtime needs "
                              f"Python {supported} on the node (install one there, or use another image)")


def _never(parts: list[str]) -> bool:
    return False


def _skip(arc: str, unused: Callable[[list[str]], bool]) -> bool:
    parts = arc.split("/")
    return "__pycache__" in parts or arc.endswith(".pyc") or unused(parts[1:])  # (parts[0]: "site")


def _tree(root: Path, prefix: str, unused: Callable[[list[str]], bool] = _never) -> list[tuple[str, Path]]:
    """Every file under `root` as (archive name under `prefix`, path), in a stable order; not those
    `unused` names (a provider's SDK files the head never imports)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            path = Path(dirpath) / f
            arc = f"{prefix}/{path.relative_to(root).as_posix()}"
            if not _skip(arc, unused):
                out.append((arc, path))
    return out


def _files(modules: list[str], optional: set[str] = frozenset(),
           unused: Callable[[list[str]], bool] = _never) -> list[tuple[str, Path]]:
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
        out += _tree(Path(list(spec.submodule_search_locations)[0]), "site/" + name.replace(".", "/"), unused)
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
    """(modules, the optional ones) of the node bundle or of the head bundle for a provider, as taken
    from the launcher's own environment."""
    if kind == "node":
        return NODE_DEPENDENCIES, set()
    facts = providers.facts(provider) if provider else None  # the cloud SDK the head's autoscaler calls
    sdk, optional = (list(facts.head_sdk), set(facts.head_sdk_optional)) if facts else ([], set())
    return HEAD_DEPENDENCIES + sdk + sorted(optional), {"invoke", "typing_inspection", *optional}


def _provider_requirements(provider: str) -> list[str]:
    """The cloud SDK of `provider` as launch's own install declares it (its extra of that name)."""
    import importlib.metadata as md

    try:
        declared = md.requires("launch") or []
    except md.PackageNotFoundError:
        raise LaunchError("launch is not installed (pip install -e .): its cloud extras are unknown") from None
    return [r.split(";")[0].strip() for r in declared
            if r.replace('"', "'").replace(" ", "").endswith(f"extra=='{provider}'")]


def bundle_requirements(kind: str, provider: str, target: Target) -> list[str]:
    """What pip resolves for a node of another Python: the node bundle's or the head bundle's."""
    if kind == "node":
        import cloudpickle  # the launcher's own: a task pickled here must unpickle there

        return NODE_REQUIREMENTS + [f"cloudpickle=={cloudpickle.__version__}"]
    extra = PY39_HEAD_REQUIREMENTS if target.version < (3, 10) else []
    return HEAD_REQUIREMENTS + extra + _provider_requirements(provider)


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel's files into `site`, as pip would install them (its purelib/platlib data too; its scripts,
    headers and other data are of no use to the runtime)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            if info.is_dir() or not name:
                continue
            dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(info))
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, mode or 0o644)


def pinned_versions(site: Path) -> list[str]:
    """`name==version` of every distribution installed in a resolved site (from its dist-info folders)."""
    pins = []
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        pins.append(f"{name}=={version}")
        if name.lower() == "grpcio":  # its status package is released with it
            pins.append(f"grpcio-status=={version}")
    return pins


def resolved_site(target: Target, requirements: list[str], constraints: list[str] = ()) -> Path:
    """The requirements resolved as wheels for `target` and unpacked into a site folder, once per target
    and requirement set (pip, with the launcher's own index settings). `constraints` bound what pip may
    pick without asking for it (the versions another bundle on the same path already has)."""
    platforms = target.platforms()
    constraints = [*constraints, *PYTHON_CONSTRAINTS.get(target.version, [])]
    key = hashlib.sha256("\0".join([target.tag, *platforms, *sorted(requirements), "-c",
                                     *sorted(constraints)]).encode()).hexdigest()[:12]
    root = launch_home() / "bundles" / "deps" / f"{target.tag}-{key}"
    site = root / "site"
    if (root / ".complete").exists():
        return site
    with file_lock(root.with_name(root.name + ".lock")):
        if (root / ".complete").exists():
            return site
        wheels = root / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp",
               "--python-version", f"{target.version[0]}.{target.version[1]}", "-d", str(wheels)]
        for tag in platforms:
            cmd += ["--platform", tag]
        if constraints:
            (root / "constraints.txt").write_text("\n".join(constraints) + "\n")
            cmd += ["-c", str(root / "constraints.txt")]
        try:
            result = subprocess.run(cmd + requirements, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"cannot make the runtime for a node's {target}: pip did not resolve "
                              f"{' '.join(requirements)} within {RESOLVE_TIMEOUT_S} s") from None
        if result.returncode != 0:
            said = (result.stderr + result.stdout).strip().splitlines()
            errors = [ln for ln in said if ln.startswith("ERROR") or "No matching distribution" in ln]
            why = first_line((errors or said[-1:] or ["pip failed"])[0])
            raise LaunchError(f"cannot make the runtime for a node's {target}: resolving "
                              f"{' '.join(requirements)} with pip failed: {why}")
        shutil.rmtree(site, ignore_errors=True)
        for wheel in sorted(wheels.glob("*.whl")):
            _unpack_wheel(wheel, site)
        (root / ".complete").write_text(" ".join(requirements) + "\n")
    return site


def _dependency_files(kind: str, provider: str, target: Target) -> list[tuple[str, Path]]:
    unused = providers.facts(provider).head_sdk_unused if kind == "head" and provider else _never
    if target.runs_wheels_of(Target.local()):
        modules, optional = bundle_modules(kind, provider)
        return _files(modules, optional, unused) + _metadata_files(modules)
    constraints = []
    if kind == "head":  # beside the node bundle on the head's path: the same grpcio, protobuf, ...
        constraints = pinned_versions(resolved_site(target, bundle_requirements("node", "", target)))
    return _tree(resolved_site(target, bundle_requirements(kind, provider, target), constraints), "site", unused)


@functools.lru_cache(maxsize=8)
def _fingerprint(kind: str, provider: str, target: Target) -> tuple[str, tuple[tuple[str, Path], ...]]:
    """(bundle id, files): the walk and stat of every shipped file, once per process and bundle."""
    ours = _files(OUR_PACKAGES) if kind == "node" else []  # the head bundle sits beside the node bundle
    files = tuple(ours + _dependency_files(kind, provider, target))
    fp = hashlib.sha256(f"{target.tag}\0{kind}\0{provider}".encode())
    for arc, path in files:
        st = path.stat()
        fp.update(f"{arc}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"{kind}-{target.tag}-{fp.hexdigest()[:16]}", files


def installed_node_bundle() -> tuple[str, Path] | None:
    """When this code runs from a shipped install (the head's autoscaler), that install's bundle."""
    site = Path(__file__).resolve().parent.parent
    bundle = site.parent / BUNDLE_NAME
    if site.name == "site" and bundle.exists():
        return site.parent.name, bundle
    return None


def bundle_target_tag(bundle_id: str) -> str:
    """The target a bundle was made for, from its id (`node-cp39-x86_64-<hash>`)."""
    return bundle_id.split("-", 1)[1].rsplit("-", 1)[0]


_build_lock = threading.Lock()


def build_bundle(kind: str = "node", provider: str = "", target: Target | None = None) -> tuple[str, Path]:
    """(bundle id, path of the tar.gz) for `target` (default: this interpreter), built on first use and
    cached under $LAUNCH_HOME/bundles.

    On a head, the node bundle is the one it was shipped: a worker must run the head's Python. Nodes are
    set up in parallel threads: the lock makes the first build the only one."""
    target = target or Target.local()
    if kind == "node" and (shipped := installed_node_bundle()) is not None:
        if bundle_target_tag(shipped[0]) != target.tag:
            raise LaunchError(f"the node's python3 is {target} but the cluster's head runs "
                              f"{bundle_target_tag(shipped[0])}: every node of a cluster runs the same "
                              f"Python version (use one image, or images with the same Python)")
        return shipped
    with _build_lock:
        bundle_id, files = _fingerprint(kind, provider, target)
        cache = launch_home() / "bundles" / f"runtime-{bundle_id}.tar.gz"
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
    """Unpack into a folder of this process's own, then rename it into place: a node whose home another
    node shares (NFS) never sees, or removes, an install half-made by the other."""
    install = f"{INSTALLS}/{bundle_id}"
    tmp = f"{INSTALLS}/.{bundle_id}.$$"
    keep_it = f"mv {upload} {tmp}/{BUNDLE_NAME}" if keep else f"rm -f {upload}"
    return (f"rm -rf {tmp} && mkdir -p {tmp} && tar -xzf {upload} -C {tmp} && {keep_it} && touch {tmp}/.complete "
            f"&& {{ test -f {install}/.complete || {{ rm -rf {install} && mv -T {tmp} {install}; }}; }} "
            f"&& rm -rf {tmp}")


# Appended to the user's site-packages as a .pth line: a finder consulted after every other one, so
# `import runtime` works in any python3 of the node user, while a package the user installed still wins.
_PTH = ("import sys, importlib.machinery as m; sys.meta_path.append(type('LaunchRuntimeFinder', (), "
        "{{'find_spec': staticmethod(lambda n, p=None, t=None, f=m.PathFinder.find_spec, s={sites!r}: "
        "None if p is not None else f(n, s))}}))\n")

# One round trip (each command costs the node's sshd ~0.1 s): the node's interpreter, where it reads our
# .pth (its user site; a venv's python3 reads none: its own site-packages, where writable), its home, its
# hostname and the installs it has; each line named, since a login may print lines of its own.
_PROBE = ("python3 -c \"import sys, platform, site, os; print('target:', sys.implementation.name, "
          "*sys.version_info[:2], platform.machine(), *platform.libc_ver()); "
          "print('user-site:', site.getusersitepackages() if site.ENABLE_USER_SITE else "
          "next((d for d in site.getsitepackages() if os.access(d, os.W_OK)), '')); "
          "print('home:', os.path.expanduser('~')); "
          "print('host:', os.uname().nodename)\" "
          "&& echo \"installs: $(cd " + INSTALLS + " 2>/dev/null && ls */.complete 2>/dev/null)\"")


def probe(runner: CommandRunner) -> tuple[Target, str, str, set[str]]:
    """(target, user site, home, installed bundle ids) of the node; the runner learns the node's name."""
    result = runner.run(_PROBE)
    said = {}
    names = {"target", "user-site", "home", "host", "installs"}
    for line in result.tail:
        name, sep, value = line.strip().partition(":")
        if sep and name in names:
            said[name] = value.strip()
    if not result.ok or not names <= said.keys():
        raise LaunchError("python3 is not available on the node: install Python 3 there (setup cannot run the runtime)")
    try:
        target = Target.parse(said["target"])
    except ValueError:
        raise LaunchError(f"the node's python3 did not say what it is (it printed {said['target']!r})") from None
    set_node_name(runner, said["host"])
    return target, said["user-site"], said["home"], {p.split("/")[0] for p in said["installs"].split()}


def ensure_runtime(runner: CommandRunner, log: TextIO, provider: str | None = None) -> str:
    """Install the runtime on the node, made for its python3, if it is not there yet (and, for the head,
    the control plane's dependencies for `provider`); returns the node's python."""
    target, user_site, home, installed = probe(runner)
    target.check_supported()
    log.write(f"the node runs {target}\n")
    bundles = [build_bundle("node", target=target)]
    if provider is not None:
        bundles.append(build_bundle("head", provider, target))
    for bundle_id, path in bundles:
        if bundle_id in installed:
            log.write(f"runtime {bundle_id} already installed\n")
            continue
        log.write(f"installing the runtime ({bundle_id}, {path.stat().st_size // 1024} KiB)\n")
        # a name of this upload's own: nodes sharing a home upload side by side
        upload = f"{INSTALLS}/upload-{bundle_id}-{os.getpid()}-{threading.get_ident()}.tar.gz"
        runner.put_file(path.read_bytes(), upload, mode=0o600)
        runner.run(_install_cmd(bundle_id, upload, keep=bundle_id.startswith("node-")), check=True)
    sites = [f"{home}/{INSTALLS[2:]}/{bid}/site" for bid, _ in bundles]
    wrapper = ("#!/bin/sh\n"
               f'PYTHONPATH="{":".join(sites)}${{PYTHONPATH:+:$PYTHONPATH}}" exec python3 "$@"\n')
    python = for_node(NODE_PYTHON, runner.node_name)  # the node's own: nodes sharing a home may differ
    runner.put_file(wrapper.encode(), python, mode=0o755)
    if user_site:  # a venv's python3 reads no user site: its own site-packages, where the user may write
        runner.put_file(_PTH.format(sites=sites).encode(), f"{user_site}/launch-runtime.pth", mode=0o644)
    return python
