"""Running commands and moving files on a node.

`CommandRunner` is what the node updater, `exec` and file sync talk to: one interface for a node on
this machine (transport.local) and a node over SSH (transport.ssh). `runner_for` (transport/__init__)
builds the right one from a NodeInfo and the cluster's auth settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.errors import LaunchError

OutputFn = Callable[[str], None]


@dataclass
class CommandResult:
    exit_code: int
    tail: list[str]  # the last lines of combined output, for error reports

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class CommandFailed(LaunchError):
    def __init__(self, cmd: str, result: CommandResult):
        self.cmd, self.result = cmd, result
        last = result.tail[-1] if result.tail else ""
        super().__init__(f"command exited {result.exit_code}: {cmd}" + (f" ({last})" if last else ""))


class ConnectionLost(LaunchError):
    """The connection broke while a command or transfer ran: it may or may not have finished."""


class CommandRunner(Protocol):
    #: The Python interpreter that runs this project's code on the node.
    python: str
    #: Whether the runtime must be shipped to the node before it can start (see runtime_bundle).
    ships_runtime: bool
    #: The node's hostname once learnt (node_name), which names its own files (core.paths.NODE_DIR).
    node_name: str | None

    def wait_ready(self, deadline_s: float) -> None:
        """Block until the node accepts commands, or raise LaunchError naming the node."""

    def run(
        self,
        cmd: str,
        *,
        env: dict[str, str] | None = None,
        on_output: OutputFn | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None: ...

    def read_file(self, remote_path: str) -> bytes | None:
        """The file's content, or None if it does not exist."""

    def download(self, remote_path: str, local: Path) -> int:
        """Copy a file or directory tree from the node; returns the number of files copied."""

    def interactive(self, command: str | None = None) -> int:
        """A shell (or `command`) on this terminal; returns its exit code."""

    def forward_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """An address on this machine that reaches remote_host:remote_port as seen from the node."""

    def close(self) -> None: ...


TAIL_LINES = 20




_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def node_name(runner: CommandRunner) -> str:
    """The node's hostname, asked once per runner: its own files live under it (core.paths.NODE_DIR),
    since nodes may share a home."""
    if runner.node_name is None:
        result = runner.run("uname -n", timeout=60, check=True)
        name = result.tail[-1].strip() if result.tail else ""  # a login may print lines before it
        set_node_name(runner, name)
    return runner.node_name


def set_node_name(runner: CommandRunner, name: str) -> None:
    if not _HOSTNAME.fullmatch(name):
        raise LaunchError(f"the node's hostname is not one ({name[:60]!r}): its runtime files are kept under it")
    runner.node_name = name
