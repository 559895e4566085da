"""Ray's runtime_env: what a task or actor runs with, beyond the node's own environment.

    @runtime.remote(runtime_env={"env_vars": {"MODE": "fast"}, "working_dir": "./project",
                                 "py_modules": ["./mylib"], "pip": ["requests==2.32.3"]})

- env_vars: set in its process;
- working_dir: a local directory, zipped and put in the cluster once (content-addressed: the same
  contents are one object), unpacked once per node; the work runs in it and imports from it;
- py_modules: local packages (directories) or modules (.py files), shipped the same way, importable;
- pip: requirements (a list, {"packages": [...]}, or a requirements.txt path), installed once per node
  per set of requirements into a directory of their own (cached by their hash), importable by that
  work only. A failed install fails the work with pip's own words (RuntimeEnvSetupError).

The driver packs (`pack`, once per distinct runtime_env) into the JSON a WorkSpec carries; a node
prepares it (`prepare`) before it starts the work's process, which is kept for work of the same
runtime_env only. init(runtime_env=...) is the default of every task and actor of the driver: theirs
override it key by key (env_vars merged, theirs winning), as in Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.files import file_lock

KEYS = ("env_vars", "working_dir", "py_modules", "pip", "excludes")
ALWAYS_EXCLUDED = (".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache")
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
PIP_TIMEOUT_S = 900

# --- the driver's side --------------------------------------------------------------------------------

_packed: dict[str, str] = {}  # a runtime_env (as JSON) -> what the WorkSpecs of its work carry


def merged(base: dict | None, own: dict | None) -> dict:
    """The job's runtime_env with a task's or actor's own over it (env_vars merged, the task's winning)."""
    out = dict(base or {})
    for k, v in (own or {}).items():
        out[k] = {**out.get("env_vars", {}), **v} if k == "env_vars" and isinstance(v, dict) else v
    return out


def pack(runtime_env: dict | None, put: Callable[[str, bytes], None]) -> str:
    """The runtime_env as its work carries it (JSON; "" for none): local directories and modules
    put in the cluster (put(object id, bytes), once per id) as objects named by their contents' hash."""
    if not runtime_env:
        return ""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict (got {type(runtime_env).__name__})")
    unknown = sorted(set(runtime_env) - set(KEYS))
    if unknown:
        raise ValueError(f"runtime_env: {', '.join(map(repr, unknown))} not supported (supported: "
                         f"{', '.join(KEYS)})")
    key = json.dumps(runtime_env, sort_keys=True, default=str)
    if key not in _packed:
        _packed[key] = _pack(runtime_env, put)
    return _packed[key]


def _pack(env: dict, put: Callable[[str, bytes], None]) -> str:
    out: dict = {}
    excludes = env.get("excludes") or []
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise TypeError("runtime_env['excludes'] must be a list of names or glob patterns")
    env_vars = env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise TypeError("runtime_env['env_vars'] must be a dict of strings to strings")
    if env_vars:
        out["env_vars"] = env_vars
    if env.get("working_dir"):
        out["working_dir"] = _upload(_local_dir(env["working_dir"], "working_dir"), excludes, True, put)
    modules = env.get("py_modules") or []
    if not isinstance(modules, list):
        raise TypeError("runtime_env['py_modules'] must be a list of local directories or .py files")
    out_modules = []
    for m in modules:
        if hasattr(m, "__file__"):  # an imported module: its package's directory, or its file
            f = Path(m.__file__)
            m = f.parent if f.name == "__init__.py" else f
        out_modules.append(_upload(_local_dir(m, "py_modules", files_too=True), excludes, False, put))
    if out_modules:
        out["py_modules"] = out_modules
    pip = _requirements(env.get("pip"))
    if pip:
        out["pip"] = pip
    return json.dumps(out, sort_keys=True) if out else ""


def _local_dir(value, key: str, files_too: bool = False) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"runtime_env['{key}'] must be a local path (got {type(value).__name__})")
    text = str(value)
    if "://" in text:
        raise ValueError(f"runtime_env['{key}']: {text!r}: remote URIs are not supported; give a local path")
    path = Path(text).expanduser().resolve()
    if not (path.is_dir() or (files_too and path.is_file() and path.suffix == ".py")):
        raise ValueError(f"runtime_env['{key}']: {text!r} is not a local directory"
                         f"{' or .py file' if files_too else ''}")
    return path


def _requirements(pip) -> list[str]:
    if not pip:
        return []
    if isinstance(pip, dict):
        pip = pip.get("packages") or []
    if isinstance(pip, (str, os.PathLike)):
        path = Path(pip).expanduser()
        if not path.is_file():
            raise ValueError(f"runtime_env['pip']: {str(pip)!r} is not a requirements file")
        pip = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not isinstance(pip, list) or not all(isinstance(p, str) and p.strip() for p in pip):
        raise TypeError("runtime_env['pip'] must be a list of requirements, {'packages': [...]}, or a file")
    return [p.strip() for p in pip]


def _excluded(rel: Path, excludes: list[str]) -> bool:
    return any(part in ALWAYS_EXCLUDED for part in rel.parts) or any(rel.match(e) or rel.name == e for e in excludes)


def _archive(path: Path, excludes: list[str], inside: bool) -> bytes:
    """A zip of the directory's contents (inside) or of the directory (or .py file) itself, the same
    bytes for the same contents: sorted, no timestamps."""
    buf = io.BytesIO()
    base = path if inside else path.parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            rel = f.relative_to(base)
            if path.is_dir() and _excluded(f.relative_to(path), excludes):
                continue
            info = zipfile.ZipInfo(str(rel), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (f.stat().st_mode & 0o777) << 16
            z.writestr(info, f.read_bytes(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _upload(path: Path, excludes: list[str], inside: bool, put: Callable[[str, bytes], None]) -> str:
    """The archive put in the cluster, named by its hash (the same contents: one object); its id."""
    data = _archive(path, excludes, inside)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ValueError(f"runtime_env: {path} is {len(data) >> 20} MiB zipped (the most is "
                         f"{MAX_ARCHIVE_BYTES >> 20} MiB): leave data out with 'excludes'")
    object_id = "o-env-" + hashlib.sha256(data).hexdigest()[:40]
    put(object_id, data)
    return object_id


# --- a node's side ------------------------------------------------------------------------------------


class RuntimeEnvSetupFailed(Exception):
    pass


@dataclass(frozen=True)
class Prepared:
    """What a process of the work is started with: environment (PYTHONPATH to prepend), directory."""

    key: str  # processes are kept for work of the same runtime_env only
    env: dict[str, str]
    cwd: str | None


def prepare(spec: str, fetch, root: Path) -> Prepared:
    """Make the runtime_env ready on this node (unpacked archives and pip installs under `root`, each
    once); fetch(object id) -> its bytes."""
    env = json.loads(spec)
    paths, cwd = [], None
    if env.get("working_dir"):
        cwd = str(_unpacked(env["working_dir"], fetch, root))
        paths.append(cwd)
    paths += [str(_unpacked(m, fetch, root)) for m in env.get("py_modules", [])]
    if env.get("pip"):
        paths.append(str(_installed(env["pip"], root)))
    out = dict(env.get("env_vars", {}))
    if paths:
        out["PYTHONPATH"] = ":".join(paths)
    return Prepared(hashlib.sha256(spec.encode()).hexdigest()[:16], out, cwd)


def _made_once(target: Path, make: Callable[[Path], None]) -> Path:
    """`target`, made by make(directory) once per node: a lock keeps two processes of the node from making it
    at once (the second waits, then uses it); one that failed leaves nothing behind."""
    ready = target / ".ready"
    if ready.exists():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if not ready.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            try:
                make(target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            ready.touch()
    return target


def _unpacked(object_id: str, fetch, root: Path) -> Path:
    def unpack(into: Path) -> None:
        try:
            with zipfile.ZipFile(io.BytesIO(fetch(object_id))) as z:
                for info in z.infolist():
                    z.extract(info, into)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(into / info.filename, mode)
        except Exception as e:
            raise RuntimeEnvSetupFailed(f"runtime_env: {object_id} could not be fetched or unpacked ({e})") from e

    return _made_once(root / object_id, unpack)


def _installed(requirements: list[str], root: Path) -> Path:
    def install(into: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-input", "--target", str(into), *requirements]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeEnvSetupFailed(f"runtime_env: pip install {' '.join(requirements)} took over "
                                        f"{PIP_TIMEOUT_S}s") from None
        if r.returncode != 0:
            said = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()]
            errors = [line for line in said if line.startswith("ERROR")] or said[-3:]
            raise RuntimeEnvSetupFailed(f"runtime_env: pip install {' '.join(requirements)} failed: "
                                        f"{' '.join(errors)[-1500:]}")

    return _made_once(root / ("pip-" + hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:24]), install)
