"""The node updater: brings one node from created to up-to-date, tagging its status at each step.

waiting-for-ssh -> syncing-files -> setting-up -> up-to-date, or update-failed with the step and the
last lines of output. Every command and its output go to the node's setup log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.config import Container
from core.entry_points import NODE_CONTROL
from core.errors import LaunchError
from core.files import open_private
from core.node import NodeInfo
from core.paths import NODE_CONFIG, for_node
from core.spec import ClusterSpec
from core.status import NodeStatus, can_transition, status_tags
from core.tags import TAG_LAUNCH_HASH, TAG_RESTART_GEN, TAG_RUNTIME_HASH
from lifecycle.runtime_bundle import ensure_runtime
from providers.base import ProviderBase
from runtime.node_config import NodeRuntimeConfig
from transport.base import CommandResult, CommandRunner, ConnectionLost, node_name
from transport.docker import ContainerRunner, ensure_container
from transport.file_sync import sync_up

STEP_ATTEMPTS = 3
RAY_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # a step whose connection drops is retried on a new connection


class NodeUpdateFailed(LaunchError):
    def __init__(self, node_id: str, step: str, tail: list[str], detail: str = ""):
        self.node_id, self.step, self.tail, self.detail = node_id, step, tail, detail
        said = [line.strip() for line in tail if line.strip()]  # the last thing it said, never an empty line
        last = f": {said[-1]}" if said else ""
        super().__init__(f"node {node_id} failed at {step}{(' (' + detail + ')') if detail else ''}{last}")

    def as_dict(self) -> dict:
        """As the head's monitor reports it to `up` on the laptop; `NodeUpdateFailed(**d)` rebuilds it."""
        return {"node_id": self.node_id, "step": self.step, "tail": self.tail, "detail": self.detail}


@dataclass
class UpdatePlan:
    """What to do to a node. `full`: sync, setup and start; otherwise only (re)start the runtime."""

    full: bool
    restart_runtime: bool


class NodeUpdater:
    def __init__(self, provider: ProviderBase, host: CommandRunner, container: Container | None, node: NodeInfo,
                 spec: ClusterSpec, runtime_cfg: NodeRuntimeConfig, *, launch_hash: str, runtime_hash: str,
                 log_path: Path, wait_ready_s: float):
        """`host`: the node's host; `container`: the container the node runs in, where the config says
        so (Ray's docker section): everything after its start then runs inside it."""
        self.provider = provider
        self.host = host
        self.container = container
        self.runner = host if container is None else ContainerRunner(host, container)
        self.node = node
        self.spec = spec
        self.cfg = spec.config
        self.runtime_cfg = runtime_cfg
        self.launch_hash = launch_hash
        self.runtime_hash = runtime_hash
        self.log_path = log_path
        self.status = node.status
        self.head_address: str | None = None
        self.wait_ready_s = wait_ready_s

    @property
    def command_env(self) -> dict[str, str]:
        """What Ray's setup and start commands expect on every node: the head's internal IP
        (`$RAY_HEAD_IP`, and ours, `$LAUNCH_HEAD_IP`)."""
        cfg = self.runtime_cfg
        ip = cfg.address if cfg.is_head else cfg.head_address.rsplit(":", 1)[0]
        return {"RAY_HEAD_IP": ip, "LAUNCH_HEAD_IP": ip}

    def _set_status(self, new: NodeStatus, **extra_tags: str) -> None:
        tags = status_tags(self.status, new, time.time())
        self.provider.set_tags(self.node.id, {**tags, **extra_tags})
        self.status = new

    def _retrying(self, log: TextIO, step: str, fn):
        for attempt in range(1, STEP_ATTEMPTS + 1):
            try:
                return fn()
            except ConnectionLost as e:
                log.write(f"{e}; reconnecting to retry ({attempt}/{STEP_ATTEMPTS})\n")
                log.flush()
                if attempt == STEP_ATTEMPTS:
                    raise NodeUpdateFailed(self.node.id, step, [str(e)], "connection kept dropping") from None
                self.runner.wait_ready(self.wait_ready_s)

    def _run(self, log: TextIO, step: str, cmd: str, env: dict[str, str] | None = None,
             runner: CommandRunner | None = None) -> CommandResult:
        def attempt():
            log.write(f"$ {cmd}\n")
            log.flush()
            return (runner or self.runner).run(cmd, env=env, on_output=lambda line: (log.write(line), log.flush()))

        result = self._retrying(log, step, attempt)
        log.write(f"[exit {result.exit_code}]\n")
        if not result.ok:
            raise NodeUpdateFailed(self.node.id, step, result.tail, f"`{cmd}` exited {result.exit_code}")
        return result

    def update(self, plan: UpdatePlan) -> None:
        step = "waiting-for-ssh"
        # a node that just came (created, or started again after a stop) runs no runtime of ours that may
        # stay: one still running outlived its node's removal (the head no longer takes it back)
        fresh = self.status == NodeStatus.PENDING
        with open_private(self.log_path, "a") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} update of {self.node.id} (full={plan.full})\n")
            try:
                if plan.full:
                    self._set_status(NodeStatus.WAITING_FOR_SSH)
                    self.runner.wait_ready(self.wait_ready_s)
                    step = "syncing-files"
                    self._set_status(NodeStatus.SYNCING_FILES)
                    if self.container is not None:
                        # as in Ray: initialization commands on the host (a registry login), then the
                        # container; the files go into it
                        for cmd in self.cfg.initialization_commands_for(self.node.node_type):
                            self._run(log, step, cmd, env=self.command_env, runner=self.host)
                        step = "starting the container"
                        options = self.provider.container_options(self.runtime_cfg.is_head)
                        done = self._retrying(log, step, lambda: ensure_container(self.host, self.container, log,
                                                                                   tuple(options)))
                        log.write(f"container {self.container.name} ({self.container.image}): {done}\n")
                        step = "syncing-files"
                    for remote, local in self.spec.file_mounts.items():
                        n = self._retrying(log, step, lambda: sync_up(
                            self.runner, Path(local), remote, self.cfg.rsync_exclude, self.cfg.rsync_filter))
                        log.write(f"synced {local} -> {remote}: {n} file(s) sent\n")
                    step = "setting-up"
                    self._set_status(NodeStatus.SETTING_UP)
                    if self.runtime_cfg.is_head:  # where Ray's start commands expect the cluster's config
                        self._retrying(log, step, lambda: self.runner.put_file(
                            self.spec.config.ray_bootstrap_yaml().encode(), RAY_BOOTSTRAP_CONFIG, mode=0o600))
                    init = [] if self.container is not None else self.cfg.initialization_commands_for(self.node.node_type)
                    for cmd in [*init, *self.cfg.setup_commands_for(self.node.node_type, self.runtime_cfg.is_head)]:
                        self._run(log, step, cmd, env=self.command_env)
                step = "starting the runtime"
                self.start_runtime(log, plan.restart_runtime or fresh)
                started = {TAG_RESTART_GEN: str(self.spec.restart_generation)}
                if plan.full:
                    for cmd in self.cfg.start_commands_for(self.runtime_cfg.is_head):
                        self._run(log, step, cmd, env=self.command_env)
                    self._set_status(NodeStatus.UP_TO_DATE, **started,
                                     **{TAG_RUNTIME_HASH: self.runtime_hash, TAG_LAUNCH_HASH: self.launch_hash})
                elif plan.restart_runtime:
                    self.provider.set_tags(self.node.id, started)
            except NodeUpdateFailed as e:
                log.write(f"FAILED at {e.step}: {e}\n")
                self._mark_failed()
                raise
            except LaunchError as e:
                log.write(f"FAILED at {step}: {e}\n")
                self._mark_failed()
                raise NodeUpdateFailed(self.node.id, step, [str(e)]) from e

    def _mark_failed(self) -> None:
        if can_transition(self.status, NodeStatus.UPDATE_FAILED):
            try:
                self._set_status(NodeStatus.UPDATE_FAILED)
            except LaunchError:
                pass  # the node is gone (terminated meanwhile): nothing to mark

    def start_runtime(self, log: TextIO, restart: bool) -> None:
        if self.runner.ships_runtime:
            self.runner.python = self._retrying(log, "installing the runtime", lambda: ensure_runtime(
                self.runner, log, self.spec.provider_kind if self.runtime_cfg.is_head else None))
        self._retrying(log, "starting the runtime",
                       lambda: self.runner.put_file(self.runtime_cfg.to_json(),
                                                    for_node(NODE_CONFIG, node_name(self.runner)), mode=0o600))
        cmd = f"{self.runner.python} -m {NODE_CONTROL} start" + (" --restart" if restart else "")
        result = self._run(log, "starting the runtime", cmd)
        for line in result.tail:
            if line.startswith("head-address: "):
                self.head_address = line.split(": ", 1)[1].strip()

    def runtime_running(self) -> bool:
        """False also when the node cannot be asked: the update that follows reports why, per node."""
        try:
            result = self.runner.run(f"{self.runner.python} -m {NODE_CONTROL} status", timeout=60)
            pids = json.loads(result.tail[-1]) if result.ok and result.tail else {}
        except (LaunchError, ValueError):
            return False
        return bool(pids.get("agent")) and (not self.runtime_cfg.is_head or bool(pids.get("head")))
