"""A node that runs in a container (Ray's `docker:` section): one long-lived container per node, on the
host's network, in which setup and start commands, the runtime, `exec` and `attach` run and into which
file mounts are copied, as Ray's launcher does.

`ensure_container` makes the host's container what the config says (pulling the image, and replacing a
container of another image); `ContainerRunner` is the node's CommandRunner from then on, reaching the
container through the host's runner (`docker exec`, with files staged on the host). The host's facts
(docker there, its GPUs, the NVIDIA container toolkit, its memory) are read in one round trip, and the
`docker run` words are a pure function of them and the config.
"""

from __future__ import annotations

import base64
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.config import Container
from core.errors import LaunchError
from core.paths import NODE_PYTHON, in_shell
from transport.base import CommandFailed, CommandResult, CommandRunner, OutputFn

# Ray's: the object store's share of memory, which its containers get as /dev/shm (10% over), capped
SHM_SHARE = 0.3 * 1.1
SHM_MAX_BYTES = 200 * 1024**3
# Ray's: a container's shell sees a UTF-8 locale
CONTAINER_ENV = ("LC_ALL=C.UTF-8", "LANG=C.UTF-8")
_NONE = "__launch_no_such_file__"


@dataclass(frozen=True)
class HostFacts:
    """What the host says before its container is made."""

    has_cli: bool  # docker (or podman) is installed and answers
    cli_error: str  # what it said when it did not answer (a daemon down, no permission)
    image: str  # the image of the container of this name, "" when there is none
    running: bool
    gpus: int  # NVIDIA GPUs on the host (nvidia-smi -L)
    nvidia_toolkit: bool  # the NVIDIA container toolkit: `--gpus` works
    mem_available_bytes: int


def _probe(c: Container) -> str:
    cli, name = c.cli, shlex.quote(c.name)
    return (f"if ! command -v {cli} >/dev/null 2>&1; then echo 'cli: missing'; "
            f"elif ! err=$({cli} version --format '{{{{.Server.Version}}}}' 2>&1); then "
            f"echo \"cli: broken $(echo \"$err\" | tail -n 1)\"; else echo 'cli: ok'; fi; "
            f"echo \"container: $({cli} inspect -f '{{{{.Config.Image}}}} {{{{.State.Running}}}}' {name} 2>/dev/null)\"; "
            "echo \"gpus: $(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')\"; "
            f"if command -v nvidia-container-runtime-hook >/dev/null 2>&1 || "
            f"{cli} info -f '{{{{json .Runtimes}}}}' 2>/dev/null | grep -q nvidia; "
            "then echo 'toolkit: yes'; else echo 'toolkit: no'; fi; "
            "echo \"mem: $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)\"")


def parse_facts(lines: list[str]) -> HostFacts:
    said: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.strip().partition(":")
        if sep and key in ("cli", "container", "gpus", "toolkit", "mem"):
            said[key] = value.strip()
    cli = said.get("cli", "missing")
    image, _, running = said.get("container", "").rpartition(" ")
    return HostFacts(
        has_cli=cli == "ok", cli_error=cli.partition(" ")[2] if cli.startswith("broken") else "",
        image=image, running=running == "true",
        gpus=int(said["gpus"]) if said.get("gpus", "").isdigit() else 0,
        nvidia_toolkit=said.get("toolkit") == "yes",
        mem_available_bytes=int(said["mem"]) * 1024 if said.get("mem", "").isdigit() else 0)


def run_words(c: Container, facts: HostFacts, extra: tuple[str, ...] = ()) -> list[str]:
    """The `docker run` of the node's container, as Ray makes it: detached, kept alive by an idle shell,
    on the host's network, a /dev/shm sized from the host's memory, the host's GPUs where the NVIDIA
    toolkit can pass them in; `extra` (what the provider needs); the user's run options last, as given
    (shell words)."""
    options = " ".join(c.run_options)
    words = [c.cli, "run", "--rm", "--name", shlex.quote(c.name), "-d", "-it", "--net=host"]
    if c.detect_shm_size and "--shm-size" not in options and facts.mem_available_bytes:
        words.append(f"--shm-size={int(min(facts.mem_available_bytes * SHM_SHARE, SHM_MAX_BYTES))}b")
    if c.detect_gpus and facts.gpus and facts.nvidia_toolkit and not any(
            o in options for o in ("--gpus", "--runtime", "--device")):
        words += ["--gpus", "all"]
    for env in CONTAINER_ENV:
        words += ["-e", env]
    words += [*extra, *c.run_options, shlex.quote(c.image), "bash"]
    return words


def ensure_container(host: CommandRunner, c: Container, log: TextIO, extra: tuple[str, ...] = ()) -> str:
    """The host runs the node's container, of the configured image; returns what was done. A container
    of another image (the config changed) is replaced; one that stopped is started anew."""
    result = host.run(_probe(c), timeout=120)
    facts = parse_facts(result.tail)
    if not facts.has_cli:
        if facts.cli_error:
            raise LaunchError(f"{c.cli} on the node does not answer: {facts.cli_error[:200]}")
        raise LaunchError(f"{c.cli} is not installed on the node (the config's docker section runs the node in a "
                          f"container): install it there, e.g. in initialization_commands")
    if facts.running and facts.image == c.image:
        log.write(f"container {c.name} runs {c.image} already\n")
        return "kept"
    if facts.gpus and c.detect_gpus and not facts.nvidia_toolkit:
        log.write(f"the host has {facts.gpus} GPU(s) but no NVIDIA container toolkit: the container sees none\n")

    def step(cmd: str, what: str) -> None:
        log.write(f"$ {cmd}\n")
        log.flush()
        done = host.run(cmd, on_output=lambda line: (log.write(line), log.flush()), timeout=1800)
        if not done.ok:
            lines = [ln.strip() for ln in done.tail if ln.strip() and not ln.startswith("Run '")]
            said = [ln for ln in lines if ln.startswith((f"{cli}:", "Error"))] or lines or [""]
            raise LaunchError(f"{what} failed: {said[-1][:300]}")

    cli, name, image = c.cli, shlex.quote(c.name), shlex.quote(c.image)
    if facts.image:  # another image, or stopped: Ray's launcher would ask for a restart; we replace it
        step(f"{cli} rm -f {name} >/dev/null", f"removing the old container {c.name}")
    if c.pull_before_run:
        step(f"{cli} pull {image}", f"pulling {c.image}")
    else:
        step(f"{cli} image inspect {image} >/dev/null 2>&1 || {cli} pull {image}", f"pulling {c.image}")
    step(" ".join(run_words(c, facts, extra)) + " >/dev/null", f"starting the container {c.name}")
    return "replaced" if facts.image else "started"


def remove_container_cmd(c: Container) -> str:
    """A command for the host that removes the node's container (and so everything in it)."""
    return f"{c.cli} rm -f {shlex.quote(c.name)} >/dev/null 2>&1 || true"


class ContainerRunner:
    """The node's CommandRunner inside its container, through the host's runner. Commands run in the
    container user's home, as they do over SSH; files pass through a staging file on the host."""

    ships_runtime = True  # the image's own Python gets the runtime made for it

    def __init__(self, host: CommandRunner, container: Container):
        self.host = host
        self.container = container
        self.python = in_shell(NODE_PYTHON)
        self.node_name: str | None = None
        self._home: str | None = None

    @property
    def label(self) -> str:
        return f"{getattr(self.host, 'label', 'node')} (container {self.container.name})"

    def _exec(self, inner: str, *, stdin: str | None = None, tty: bool = False) -> str:
        flags = ["-it"] if tty else (["-i"] if stdin else [])
        words = [self.container.cli, "exec", *flags, shlex.quote(self.container.name), "bash", "-c", shlex.quote(inner)]
        return " ".join(words) + (f" <{stdin}" if stdin else "")

    def wait_ready(self, deadline_s: float) -> None:
        self.host.wait_ready(deadline_s)

    def run(self, cmd: str, *, env: dict[str, str] | None = None, on_output: OutputFn | None = None,
            timeout: float | None = None, check: bool = False) -> CommandResult:
        inner = cmd
        if env:  # not for secrets: they would show in `ps` on the host
            inner = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + inner
        result = self.host.run(self._exec(f"cd ~ 2>/dev/null; {inner}"), on_output=on_output, timeout=timeout)
        if check and not result.ok:
            raise CommandFailed(cmd, result)
        return result

    @staticmethod
    def _path(remote: str) -> str:
        return f"\"$HOME\"/{shlex.quote(remote[2:])}" if remote.startswith("~/") else (
            "\"$HOME\"" if remote == "~" else shlex.quote(remote))

    def _staged(self) -> str:
        return f"/tmp/.launch-stage-{secrets.token_hex(8)}"

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        staged = self._staged()
        self.host.put_file(data, staged, mode=0o600)
        inner = (f"dst={self._path(remote_path)}; tmp=\"$dst.tmp-$$\"; mkdir -p \"$(dirname \"$dst\")\" && "
                 f"(umask 077; cat >\"$tmp\") && chmod {mode:o} \"$tmp\" && mv -f \"$tmp\" \"$dst\"")
        result = self.host.run(f"{self._exec(inner, stdin=staged)}; rc=$?; rm -f {staged}; exit $rc", timeout=600)
        if not result.ok:
            raise LaunchError(f"{self.label}: writing {remote_path} failed: {result.tail[-1] if result.tail else ''}")

    def read_file(self, remote_path: str) -> bytes | None:
        out: list[str] = []
        inner = f"f={self._path(remote_path)}; if test -f \"$f\"; then base64 -w0 \"$f\"; echo; else echo {_NONE}; fi"
        result = self.host.run(self._exec(inner), on_output=out.append, timeout=120)
        lines = [ln.strip() for ln in out if ln.strip()]
        if not result.ok or not lines:
            raise LaunchError(f"{self.label}: reading {remote_path} failed: {result.tail[-1] if result.tail else ''}")
        return None if lines[-1] == _NONE else base64.b64decode(lines[-1])

    def _container_home(self) -> str:
        if self._home is None:
            result = self.host.run(self._exec("echo \"home: $HOME\""), timeout=60)
            homes = [ln.split(": ", 1)[1].strip() for ln in result.tail if ln.startswith("home: ")]
            if not result.ok or not homes:
                raise LaunchError(f"{self.label}: the container does not answer")
            self._home = homes[-1]
        return self._home

    def download(self, remote_path: str, local: Path) -> int:
        src = remote_path if not remote_path.startswith("~") else self._container_home() + remote_path[1:]
        staged = self._staged()
        cp = (f"mkdir -m 700 {staged} && {self.container.cli} cp {shlex.quote(self.container.name)}:"
              f"{shlex.quote(src)} {staged}/x")
        result = self.host.run(cp, timeout=600)
        try:
            if not result.ok:
                last = result.tail[-1] if result.tail else ""
                raise LaunchError(f"{self.label}: {remote_path}: {'no such file or directory' if 'No such' in last else last}")
            return self.host.download(f"{staged}/x", local)
        finally:
            self.host.run(f"rm -rf {staged}", timeout=60)

    def interactive(self, command: str | None = None) -> int:
        return self.host.interactive(self._exec(f"cd ~ 2>/dev/null; {command or 'exec bash -l'}", tty=True))

    def forward_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        return self.host.forward_port(remote_host, remote_port)  # the container is on the host's network

    def close(self) -> None:
        self.host.close()
