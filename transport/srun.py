"""Commands on a node that is a Slurm allocation: `srun --jobid=ID --overlap` from a login host.

The srun commands run on a *login runner*: this machine (where `launch up` or the head's autoscaler
runs) or, from a laptop that reaches the head over SSH, the head's runner. A command runs on the
compute node in the node's HOME (made by the holder job, providers/slurm.py). Files travel through the
login host: written there first (0600), then fed to the step's stdin, so no file content is ever on a
command line.
"""

from __future__ import annotations

import base64
import secrets
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from core.errors import LaunchError
from core.node import SlurmJob
from core.paths import HOLDER_FIFO, NODE_CONFIG, NODE_PYTHON, in_shell
from transport.base import CommandFailed, CommandResult, CommandRunner, OutputFn

WAIT_POLL_S = 0.5  # squeue on the login host: cheap, and a node that starts sooner is set up sooner
_GONE = "__launch_gone__"
_NONE = "__launch_no_file__"
_RUNNING = "__launch_running__"


def _login_runner() -> CommandRunner:
    from transport.local import LocalCommandRunner

    return LocalCommandRunner(Path.home(), {}, sys.executable)


class SrunCommandRunner:
    ships_runtime = True  # a compute node gets the runtime bundle in its HOME, as a cloud VM does

    def __init__(self, job: SlurmJob, address: str | None, via: CommandRunner | None = None):
        self.job = job
        self.address = address
        self.python = in_shell(NODE_PYTHON)  # the shipped runtime's interpreter (in the node's HOME)
        self.node_name: str | None = None
        self._owns_login = via is None
        self.login = via if via is not None else _login_runner()
        self.label = f"node {job.job_id} (Slurm job)"

    # --- the command lines ------------------------------------------------------------------------------

    def _slurm_cmd(self, argv: str) -> str:
        """A Slurm command line for the login runner's bash. That shell may itself run inside an
        allocation (the autoscaler's): its SLURM_* variables are dropped so they steer nothing here."""
        conf = f"export SLURM_CONF={shlex.quote(self.job.slurm_conf)}; " if self.job.slurm_conf else ""
        return f"(unset ${{!SLURM_@}}; {conf}exec {argv})"

    def _srun(self, inner: str, pty: bool = False) -> str:
        home = shlex.quote(self.job.home)
        body = (f"export HOME={home}; cd \"$HOME\" 2>/dev/null || {{ echo \"{self.label}: its home "
                f"{self.job.home} is not there (the holder job has not made it)\" >&2; exit 255; }}; {inner}")
        flags = "--pty" if pty else "--unbuffered"
        return self._slurm_cmd(f"srun --jobid={self.job.job_id} --overlap --nodes=1 --ntasks=1 --quiet "
                               f"{flags} bash -c {shlex.quote(body)}")

    def _squeue_state(self) -> str:
        out: list[str] = []
        squeue = self._slurm_cmd(f"squeue -h -j {self.job.job_id} -o '%T|%r'")
        self.login.run(f"{squeue} 2>/dev/null || echo {_GONE}", on_output=out.append, timeout=60)
        lines = [ln.strip() for ln in out if ln.strip()]
        return lines[-1] if lines else _GONE

    # --- CommandRunner ------------------------------------------------------------------------------

    def wait_ready(self, deadline_s: float) -> None:
        """Until the holder job runs and has made the node's HOME: a job pending in the queue is capacity
        on the way, for up to deadline_s."""
        deadline = time.monotonic() + deadline_s
        state = ""
        while True:
            state = self._squeue_state()
            if state == _GONE or state.split("|")[0] in ("COMPLETING", "COMPLETED", "CANCELLED", "FAILED",
                                                          "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"):
                raise LaunchError(f"{self.label}: its holder job ended before the node came up "
                                  f"({state.replace(_GONE, 'no longer in the queue')})")
            if state.startswith("RUNNING"):
                out: list[str] = []
                self.login.run(self._srun(f"test -p {in_shell(HOLDER_FIFO)} -o -e {in_shell(NODE_CONFIG)} "
                                          f"&& echo {_RUNNING}"), on_output=out.append, timeout=120)
                if any(_RUNNING in line for line in out):
                    return
            if time.monotonic() + WAIT_POLL_S > deadline:
                raise LaunchError(f"{self.label}: not running after {deadline_s:.0f}s in the queue "
                                  f"(Slurm says {state or 'nothing'}); given up")
            time.sleep(WAIT_POLL_S)

    def run(self, cmd: str, *, env: dict[str, str] | None = None, on_output: OutputFn | None = None,
            timeout: float | None = None, check: bool = False) -> CommandResult:
        if env:  # not for secrets: they would show in `ps`
            cmd = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + cmd
        result = self.login.run(self._srun(cmd), on_output=on_output, timeout=timeout)
        if check and not result.ok:
            raise CommandFailed(cmd, result)
        return result

    def _staged(self, data: bytes) -> str:
        """`data` in a 0600 file on the login host; its path there."""
        path = f".launch-srun-{secrets.token_hex(8)}"
        self.login.put_file(data, path, mode=0o600)
        return path

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        staged = self._staged(data)
        dst = shlex.quote(remote_path) if not remote_path.startswith("~/") else f"\"$HOME\"/{shlex.quote(remote_path[2:])}"
        inner = (f"dst={dst}; tmp=\"$dst.tmp-$$\"; mkdir -p \"$(dirname \"$dst\")\" && "
                 f"(umask 077; cat >\"$tmp\") && chmod {mode:o} \"$tmp\" && mv -f \"$tmp\" \"$dst\"")
        try:
            result = self.login.run(f"{self._srun(inner)} <{staged}", timeout=600)
        finally:
            self.login.run(f"rm -f {staged}", timeout=60)
        if not result.ok:
            raise LaunchError(f"{self.label}: writing {remote_path} failed: {result.tail[-1] if result.tail else ''}")

    def read_file(self, remote_path: str) -> bytes | None:
        src = shlex.quote(remote_path) if not remote_path.startswith("~/") else f"\"$HOME\"/{shlex.quote(remote_path[2:])}"
        out: list[str] = []
        result = self.login.run(self._srun(f"f={src}; if test -f \"$f\"; then base64 -w0 \"$f\"; echo; "
                                           f"else echo {_NONE}; fi"), on_output=out.append, timeout=120)
        lines = [ln.strip() for ln in out if ln.strip()]
        if not result.ok or not lines:
            raise LaunchError(f"{self.label}: reading {remote_path} failed: {result.tail[-1] if result.tail else ''}")
        return None if lines[-1] == _NONE else base64.b64decode(lines[-1])

    def download(self, remote_path: str, local: Path) -> int:
        src = shlex.quote(remote_path) if not remote_path.startswith("~/") else f"\"$HOME\"/{shlex.quote(remote_path[2:])}"
        staged = f".launch-srun-{secrets.token_hex(8)}.tar"
        inner = f"f={src}; test -e \"$f\" || exit 3; tar -C \"$(dirname \"$f\")\" -cf - \"$(basename \"$f\")\""
        try:
            result = self.login.run(f"(umask 077; {self._srun(inner)} >{staged})", timeout=3600)
            if result.exit_code == 3:
                raise LaunchError(f"{remote_path}: no such file or directory on the node")
            if not result.ok:
                raise LaunchError(f"{self.label}: copying {remote_path} failed: {result.tail[-1] if result.tail else ''}")
            with tempfile.TemporaryDirectory() as tmp:
                tar_path = Path(tmp) / "files.tar"
                self.login.download(staged, tar_path)
                with tarfile.open(tar_path) as tar:
                    members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
                    tar.extractall(Path(tmp) / "x", members=members, filter="data")
                top = next((Path(tmp) / "x").iterdir())
                if top.is_file():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    top.replace(local)
                    return 1
                import shutil

                shutil.copytree(top, local, dirs_exist_ok=True)
                return sum(1 for m in members if m.isfile())
        finally:
            self.login.run(f"rm -f {staged}", timeout=60)

    def interactive(self, command: str | None = None) -> int:
        return self.login.interactive(self._srun(command or "exec bash -i", pty=True))

    def forward_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        # the node's services bind its address too; the login host reaches compute nodes directly
        host = self.address if remote_host in ("127.0.0.1", "localhost") and self.address else remote_host
        return self.login.forward_port(host, remote_port)

    def close(self) -> None:
        if self._owns_login:
            self.login.close()
