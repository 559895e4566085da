"""The SSH command runner (paramiko): commands, files and interactive shells on a remote node.

- One connection per node, reused for every command and SFTP transfer, with keepalives.
- Host keys are pinned per cluster on first contact in the cluster's known_hosts file; a host that
  later shows another key is refused with an error naming it. Nothing is blanket-accepted.
- `wait_ready` retries connecting with backoff until a deadline (nodes take minutes to boot); an
  authentication failure or a changed host key fails at once: waiting would not fix either.
"""

from __future__ import annotations

import logging
import os
import posixpath
import select
import shlex
import socket
import stat
import sys
import threading
import time
from collections import deque
from pathlib import Path

import paramiko

from core.paths import NODE_PYTHON, in_shell
from transport.base import TAIL_LINES, CommandFailed, CommandResult, ConnectionLost, OutputFn
from core.errors import LaunchError, first_line

KEEPALIVE_S = 15
_known_hosts_lock = threading.Lock()
# paramiko logs tracebacks of failures we report ourselves, in one line naming the host
logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)


class SSHUnreachable(LaunchError):
    pass


class HostKeyChanged(LaunchError):
    pass


def host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class PinOnFirstContact(paramiko.MissingHostKeyPolicy):
    """Record a host's key the first time; refuse a host whose recorded key differs."""

    def __init__(self, known_hosts: Path):
        self.path = known_hosts

    def missing_host_key(self, client, hostname, key):
        with _known_hosts_lock:
            keys = paramiko.HostKeys()
            if self.path.exists():
                keys.load(str(self.path))
            recorded = keys.lookup(hostname)
            if recorded:  # known under another key type: a key change all the same
                raise HostKeyChanged(_changed_message(hostname, self.path))
            keys.add(hostname, key.get_name(), key)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            keys.save(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _changed_message(hostname: str, path: Path) -> str:
    return (f"host key of {hostname} changed since first contact: refusing to connect (possible "
            f"man-in-the-middle). If the host was rebuilt, remove its line from {path}")


class SSHCommandRunner:
    #: the node gets the runtime shipped to it (runtime_bundle), unlike a local node
    ships_runtime = True

    def __init__(self, host: str, port: int, user: str, key_path: str | None, known_hosts: Path, *,
                 proxy_command: str | None = None, connect_timeout: float = 10.0,
                 python: str = in_shell(NODE_PYTHON), jump: SSHCommandRunner | None = None,
                 proxy_host: str | None = None, host_key_alias: str | None = None):
        self.host, self.port, self.user = host, port, user
        # the name its host key is pinned under: the address, or the instance's id where addresses are reused
        self.key_name = host_key_alias or host
        self.key_path = os.path.expanduser(key_path) if key_path else None
        self.known_hosts = known_hosts
        self.proxy_command = proxy_command
        self.jump = jump  # reach this node through another one's SSH connection (a worker via the head)
        self.proxy_host = proxy_host or host  # what the proxy command's %h becomes
        self.connect_timeout = connect_timeout
        self.python = python
        self.node_name: str | None = None
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._forwards: dict[tuple[str, int], socket.socket] = {}

    @property
    def label(self) -> str:
        via = f" (via {self.jump.host})" if self.jump is not None else ""
        return f"{self.user}@{self.host}:{self.port}{via}"

    # --- connection ---------------------------------------------------------------------------------

    def _connect_once(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(PinOnFirstContact(self.known_hosts))
        sock = None
        if self.jump is not None:
            sock = self.jump._conn().get_transport().open_channel(
                "direct-tcpip", (self.host, self.port), ("127.0.0.1", 0), timeout=self.connect_timeout)
        elif self.proxy_command:
            cmd = self.proxy_command.replace("%h", self.proxy_host).replace("%p", str(self.port)).replace("%r", self.user)
            sock = paramiko.ProxyCommand(cmd)
        elif self.key_name != self.host:  # paramiko checks the key under the name it connects to: our socket
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            client.connect(self.key_name, port=self.port, username=self.user, key_filename=self.key_path,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, sock=sock, allow_agent=False,
                           look_for_keys=self.key_path is None)
        except paramiko.BadHostKeyException:
            client.close()
            raise HostKeyChanged(_changed_message(host_key_name(self.key_name, self.port), self.known_hosts)) from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise LaunchError(f"{self.label}: SSH authentication failed ({e}); check auth.ssh_user and "
                              f"auth.ssh_private_key") from None
        except HostKeyChanged:
            client.close()
            raise
        client.get_transport().set_keepalive(KEEPALIVE_S)
        return client

    def _conn(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
                return self._client
            self._drop()
            try:
                self._client = self._connect_once()
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise SSHUnreachable(f"{self.label}: cannot connect ({_reason(e)})") from None
            return self._client

    def _drop(self) -> None:
        for obj in (self._sftp, self._client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._sftp = self._client = None

    def close(self) -> None:
        with self._lock:
            for listener in self._forwards.values():
                listener.close()
            self._forwards.clear()
            self._drop()

    def wait_ready(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        delay, last = 0.2, ""
        while True:
            try:
                self._conn()
                return
            except SSHUnreachable as e:
                last = str(e)
            if time.monotonic() + delay > deadline:
                raise SSHUnreachable(f"{self.label}: SSH did not answer within {deadline_s:.0f}s ({last})")
            time.sleep(delay)
            delay = min(delay * 1.6, 5.0)

    # --- commands -----------------------------------------------------------------------------------

    def run(self, cmd: str, *, env: dict[str, str] | None = None, on_output: OutputFn | None = None,
            timeout: float | None = None, check: bool = False) -> CommandResult:
        if env:  # not for secrets: they would show in `ps` on the node
            # exported, so every command of a compound one sees them and `$VAR` in it expands
            cmd = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + cmd
        client = self._conn()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            chan = client.get_transport().open_session()
            chan.set_combine_stderr(True)
            chan.exec_command(f"bash -c {shlex.quote(cmd)}")
            deadline = None if timeout is None else time.monotonic() + timeout
            buf = b""
            while True:
                if chan.recv_ready():
                    data = chan.recv(32768)
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace")
                        tail.append(line)
                        if on_output:
                            on_output(line + "\n")
                    continue
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
                if not client.get_transport().is_active():
                    raise ConnectionLost(f"{self.label}: connection lost while running `{cmd[:80]}`")
                if deadline is not None and time.monotonic() > deadline:
                    chan.close()
                    tail.append(f"timed out after {timeout}s")
                    return CommandResult(124, list(tail))
                select.select([chan], [], [], 0.2)
            if buf:
                tail.append(buf.decode(errors="replace"))
                if on_output:
                    on_output(buf.decode(errors="replace"))
            code = chan.recv_exit_status()
            chan.close()
        except (OSError, EOFError, paramiko.SSHException) as e:
            self.close()
            raise ConnectionLost(f"{self.label}: connection lost ({_reason(e)})") from None
        if code == -1:  # the server never sent a status: the session was cut
            self.close()
            raise ConnectionLost(f"{self.label}: connection lost while running `{cmd[:80]}`")
        result = CommandResult(code, list(tail))
        if check and not result.ok:
            raise CommandFailed(cmd, result)
        return result

    # --- files --------------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._conn()
        with self._lock:
            if self._sftp is None:
                self._sftp = client.open_sftp()
            return self._sftp

    @staticmethod
    def _remote(path: str) -> str:
        # SFTP starts in the user's home: "~/x" is "x" there
        if path == "~":
            return "."
        return path[2:] if path.startswith("~/") else path

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        if directory in ("", ".", "/"):
            return
        try:
            sftp.stat(directory)
        except FileNotFoundError:
            self._makedirs(sftp, posixpath.dirname(directory))
            try:
                sftp.mkdir(directory)
            except OSError:
                sftp.stat(directory)  # made meanwhile by another transfer

    def put_file(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        try:
            sftp = self._sftp_client()
            dst = self._remote(remote_path)
            self._makedirs(sftp, posixpath.dirname(dst))
            tmp = f"{dst}.tmp-{os.getpid()}-{threading.get_ident()}"
            with sftp.open(tmp, "wb") as f:
                f.chmod(mode)  # before any byte is written: a secret is never readable by others
                f.set_pipelined(True)
                f.write(data)
            sftp.posix_rename(tmp, dst)
        except (OSError, EOFError, paramiko.SSHException) as e:
            if isinstance(e, PermissionError):
                raise LaunchError(f"{self.label}: cannot write {remote_path}: permission denied") from None
            self.close()
            raise ConnectionLost(f"{self.label}: transfer of {remote_path} failed ({_reason(e)})") from None

    def read_file(self, remote_path: str) -> bytes | None:
        try:
            with self._sftp_client().open(self._remote(remote_path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except (EOFError, paramiko.SSHException) as e:
            self.close()
            raise ConnectionLost(f"{self.label}: reading {remote_path} failed ({_reason(e)})") from None

    def download(self, remote_path: str, local: Path) -> int:
        """Copy a remote file or directory tree to `local`; returns the number of files copied."""
        sftp = self._sftp_client()
        src = self._remote(remote_path)
        try:
            st = sftp.stat(src)
        except FileNotFoundError:
            raise LaunchError(f"{self.label}: {remote_path}: no such file or directory") from None
        if not stat.S_ISDIR(st.st_mode):
            local.parent.mkdir(parents=True, exist_ok=True)
            sftp.get(src, str(local))
            os.chmod(local, st.st_mode & 0o777)
            return 1
        count = 0
        local.mkdir(parents=True, exist_ok=True)
        for entry in sftp.listdir_attr(src):
            count += self.download(posixpath.join(remote_path, entry.filename), local / entry.filename)
        return count

    # --- port forwarding ------------------------------------------------------------------------------

    def forward_port(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """A listener on 127.0.0.1 whose connections are carried over this SSH connection to
        remote_host:remote_port as the node sees it (a service bound to the node's loopback included)."""
        key = (remote_host, remote_port)
        with self._lock:
            if key in self._forwards:
                return "127.0.0.1", self._forwards[key].getsockname()[1]
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        with self._lock:
            self._forwards[key] = listener
        threading.Thread(target=self._accept_forwarded, args=(listener, key), daemon=True,
                         name=f"forward-{remote_port}").start()
        return "127.0.0.1", listener.getsockname()[1]

    def _accept_forwarded(self, listener: socket.socket, key: tuple[str, int]) -> None:
        while True:
            try:
                sock, peer = listener.accept()
            except OSError:
                return  # closed
            try:
                chan = self._conn().get_transport().open_channel("direct-tcpip", key, peer)
            except (OSError, EOFError, paramiko.SSHException, LaunchError):
                sock.close()
                continue
            threading.Thread(target=_pump, args=(sock, chan), daemon=True).start()

    # --- interactive --------------------------------------------------------------------------------

    def interactive(self, command: str | None = None) -> int:
        """A shell (or `command`) on a PTY, wired to this terminal. Returns the exit code."""
        chan = self._conn().get_transport().open_session()
        cols, rows = os.get_terminal_size() if sys.stdin.isatty() else (120, 40)
        chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
        if command:
            chan.exec_command(command)
        else:
            chan.invoke_shell()
        return _bridge(chan)


def _bridge(chan: paramiko.Channel) -> int:
    """Copy between this terminal (in raw mode when it is one) and the channel until it closes."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd) if os.isatty(fd) else None
    stdin_open = True
    try:
        if old is not None:
            tty.setraw(fd, termios.TCSANOW)  # TCSAFLUSH would drop what was typed ahead
        while True:
            r, _, _ = select.select([chan, fd] if stdin_open else [chan], [], [], 0.5)
            if chan in r:
                data = chan.recv(32768)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in r:
                data = os.read(fd, 1024)
                if not data:
                    chan.shutdown_write()
                    stdin_open = False
                else:
                    chan.sendall(data)
            if chan.exit_status_ready() and not chan.recv_ready():
                break
    finally:
        if old is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
    return chan.recv_exit_status()


def _pump(sock: socket.socket, chan: paramiko.Channel) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until both sides are done.

    One thread per direction, blocking reads: no select() on the channel, because its event pipe
    (made by fileno()) is closed by close() while paramiko's transport thread may still write to it,
    which kills the whole SSH connection (EBADF in the transport thread)."""

    def upstream() -> None:
        _copy(sock.recv, chan.sendall)
        try:
            chan.shutdown_write()  # the remote end sees EOF and closes its side
        except (OSError, EOFError, paramiko.SSHException):
            pass

    up = threading.Thread(target=upstream, daemon=True, name="forward-up")
    up.start()
    _copy(chan.recv, sock.sendall)
    try:
        sock.shutdown(socket.SHUT_RDWR)  # ends the upstream reader too
    except OSError:
        pass
    up.join(timeout=10)
    chan.close()
    sock.close()


def _copy(read, write) -> None:
    """Copy from `read` to `write` until end of file or an error on either side."""
    try:
        while data := read(65536):
            write(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    return first_line(str(e) or type(e).__name__, 200)
