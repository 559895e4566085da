"""Commands on a node that is a directory of this machine (the `local` provider).

Commands run in the node's directory, which is the node's HOME, with the node's marker in the
environment so every process the node starts can be found (and stopped) again.
"""

from __future__ import annotations

import os
import subprocess
from collections import deque
from pathlib import Path

from core.errors import LaunchError
from transport.base import TAIL_LINES, CommandFailed, CommandResult


class LocalCommandRunner:
    ships_runtime = False  # a local node runs the launcher's own interpreter and code

    def __init__(self, home: Path, env: dict[str, str], python: str):
        self.home = home
        self.env = env
        self.python = python
        self.node_name = os.uname().nodename  # a local node is this machine (its HOME is its own)

    def resolve(self, remote_path: str) -> Path:
        if remote_path == "~":
            return self.home
        if remote_path.startswith("~/"):
            return self.home / remote_path[2:]
        # Local nodes share this machine's filesystem; only HOME (~) is the node's own. A relative
        # path is relative to HOME, as it is for a command run over SSH.
        p = Path(remote_path)
        return p if p.is_absolute() else self.home / p

    def wait_ready(self, deadline_s: float) -> None:
        if not self.home.is_dir():
            raise LaunchError(f"local node directory {self.home} is gone")

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
        env.update(self.env)
        env["HOME"] = str(self.home)
        # `python3` on a local node is the runtime's interpreter, as on a node the runtime was shipped to
        env["PATH"] = os.path.dirname(self.python) + os.pathsep + env.get("PATH", "")
        if extra:
            env.update(extra)
        return env

    def run(self, cmd, *, env=None, on_output=None, timeout=None, check=False) -> CommandResult:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=self.home,
            env=self._env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if on_output:
                    on_output(line)
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = 124
            tail.append(f"timed out after {timeout}s")
        result = CommandResult(code, list(tail))
        if check and not result.ok:
            raise CommandFailed(cmd, result)
        return result

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        dst = self.resolve(remote_path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        # Create with the final mode so a secret is never readable by others, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, dst)

    def read_file(self, remote_path: str) -> bytes | None:
        try:
            return self.resolve(remote_path).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, remote_path: str, local: Path) -> int:
        import shutil

        src = self.resolve(remote_path)
        if not src.exists():
            raise LaunchError(f"{remote_path}: no such file or directory on the node")
        if src.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, local)
            return 1
        shutil.copytree(src, local, dirs_exist_ok=True)
        return sum(1 for p in local.rglob("*") if p.is_file())

    def forward_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        return remote_host, remote_port  # the node is this machine: nothing to forward

    def close(self) -> None:
        pass

    def interactive(self, command: str | None = None) -> int:
        """A shell (or `command`) in the node's directory and environment, on this terminal."""
        argv = ["bash", "-c", command] if command else ["bash", "-i"]
        return subprocess.call(argv, cwd=self.home, env=self._env(None))
