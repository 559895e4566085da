"""The `sim` provider: a simulated cloud, to try launch with no account and to run it at a scale this
machine could never hold in real nodes.

    provider: {type: sim, boot_time_s: 60, capacity: {gpu: 8}, spot_interruptions_per_hour: 0.5,
               spot_notice_s: 120, create_failure_rate: 0.0}

The head is real: a node of the `local` provider (a process tree on this machine) running the real head
service and autoscaler. Workers are simulated: an instance is a record in the same state file, which
appears at once (pending) and boots after `boot_time_s`; then a *light node agent* (runtime/sim_agents.py,
many per process, asyncio) registers it with the head over the real protocol (register, heartbeat, work
stream, reports) with its node type's declared `resources`, and "runs" each item it is given for the
duration the item declares (the environment variable LAUNCH_SIM_DURATION_S: a task's or actor's
runtime_env env_vars, a job's env; 0 by default; an actor holds its resources until killed). Nothing of
the user's code runs: a task's value is None.

Models, each in the section: `capacity` (at most this many instances of a node type at once: beyond it,
a create is out of capacity, as a cloud's stockout), `create_failure_rate` (a share of creates that fail
for capacity), spot interruptions (a spot instance is taken back after an exponentially distributed time
of mean 1/`spot_interruptions_per_hour`, with a notice `spot_notice_s` ahead, which its agent says in its
heartbeats as a cloud's agent would), `seed` (the models' random numbers). Workers need no setup: the
autoscaler marks them up to date (Capabilities.self_starting) and they register once booted.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from core.config import ClusterConfig
from core.entry_points import SIM_AGENTS
from core.errors import CapacityError
from core.files import locked_json
from core.spec import ClusterSpec
from core.tags import KIND_HEAD, TAG_KIND
from providers import local
from providers.base import Bootstrapped, Capabilities, NodeInfo, ProviderFacts

FACTS = ProviderFacts(offline_bootstrap=True)


class Section(local.Section):
    boot_time_s: float = Field(default=0.0, ge=0.0, le=86400.0)  # from create until the node registers
    capacity: dict[str, int] = Field(default_factory=dict)  # node type -> at most this many at once
    spot_interruptions_per_hour: float = Field(default=0.0, ge=0.0, le=3600.0)  # per spot instance
    spot_notice_s: float = Field(default=120.0, ge=0.0, le=3600.0)  # a spot notice comes this long ahead
    seed: int | None = None


def config_problems(config: ClusterConfig) -> list[str]:
    """A simulated worker is nothing but its declared resources: every worker type states them."""
    return [f"available_node_types.{name}.resources: required on the sim provider (a simulated node has "
            "what its type declares)" for name, nt in config.available_node_types.items()
            if name != config.head_node_type and not nt.resources]


def bootstrap(config: ClusterConfig, state_dir: Path) -> Bootstrapped:
    return local.bootstrap(config, state_dir)


@dataclass(frozen=True)
class SimLaunch:
    """When one simulated instance boots and, a spot one, when its cloud takes it back (None: never)."""

    boot_at: float
    interrupt_at: float | None = None
    notice_at: float | None = None


class SimCloud:
    """The section's models, on the caller's clock: the sim provider's in real time, `launch simulate`'s
    in virtual time (the same capacity, failure and interruption rules, the same random numbers for a seed)."""

    def __init__(self, section: Section):
        self.section = section
        self.random = random.Random(section.seed)

    def launch(self, node_type: str, count: int, spot: bool, have: int, now: float) -> list[SimLaunch]:
        """`count` instances of a type of which `have` exist, asked at `now`: fewer where its capacity ends
        (a cloud's stockout); CapacityError for none at all, or a create the failure model fails."""
        s = self.section
        if s.create_failure_rate and self.random.random() < s.create_failure_rate:
            raise CapacityError(node_type, "sim", "the simulated cloud's failure model")
        room = count if node_type not in s.capacity else min(count, s.capacity[node_type] - have)
        if room <= 0:
            raise CapacityError(node_type, "sim", f"provider.capacity allows {s.capacity[node_type]}")
        out = []
        for _ in range(room):
            boot_at = now + s.boot_time_s
            if spot and s.spot_interruptions_per_hour > 0:
                interrupt_at = boot_at + self.random.expovariate(s.spot_interruptions_per_hour / 3600.0)
                out.append(SimLaunch(boot_at, interrupt_at, interrupt_at - s.spot_notice_s))
            else:
                out.append(SimLaunch(boot_at))
        return out


class Provider(local.Provider):
    capabilities = Capabilities(spot=True, self_starting=True)
    section_model = Section

    def __init__(self, spec: ClusterSpec):
        super().__init__(spec)
        self.cloud = SimCloud(self.section)
        self.host_path = self.root / "sim-host.json"

    def node_types(self) -> dict[str, dict[str, float]]:
        machine = super().node_types()  # (the head: this machine's, unless its type declares otherwise)
        return {name: dict(nt.resources) or machine[name]
                for name, nt in self.spec.config.available_node_types.items()}

    def create(self, node_type: str, count: int, tags: dict[str, str]) -> list[NodeInfo]:
        if tags.get(TAG_KIND) == KIND_HEAD:
            return super().create(node_type, count, tags)  # the real head, a local node
        if node_type in self.capacity_errors:
            raise CapacityError(node_type, "sim", "the simulated cloud's failure model")
        spot = self.spec.config.available_node_types[node_type].spot
        now = time.time()
        made = []
        with locked_json(self.state_path) as state:
            have = sum(1 for r in state.values() if r["node_type"] == node_type)
            for times in self.cloud.launch(node_type, count, spot, have, now):
                node_id = f"sim-{secrets.token_hex(5)}"
                record = {"node_type": node_type, "tags": dict(tags), "pid": None, "start_time": None, "sim": True,
                          "launched_at": now, "boot_at": times.boot_at, "interrupt_at": times.interrupt_at,
                          "notice_at": times.notice_at}  # (its agent says the notice then)
                state[node_id] = record
                made.append(self._info(node_id, record))
        self._ensure_host()
        return made

    def _alive(self, record: dict) -> bool:
        if not record.get("sim"):
            return super()._alive(record)
        return record["interrupt_at"] is None or time.time() < record["interrupt_at"]  # the cloud took it back

    def _info(self, node_id: str, record: dict) -> NodeInfo:
        info = super()._info(node_id, record)
        if record.get("sim"):
            left = record["boot_at"] - time.time()
            info.state = "running" if left <= 0 else "pending"
            info.detail = f"booting (simulated: {left:.0f} s left)" if left > 0 else ""
            info.local_home = None  # nothing of it is on this machine
        return info

    def wait_booted(self, node: NodeInfo) -> None:
        record = self.read_state().get(node.id)
        if record is not None:
            time.sleep(max(0.0, record["boot_at"] - time.time()))

    def _destroy(self, node_id: str) -> None:
        if not node_id.startswith("sim-"):  # a simulated node's agent goes when its record does
            super()._destroy(node_id)

    def _ensure_host(self) -> None:
        """The process that runs the light agents (runtime/sim_agents.py), started once: on the head,
        where the autoscaler creates workers and the head's address and credential are."""
        with locked_json(self.host_path) as host:
            pid, started = host.get("pid"), host.get("start_time")
            if pid and local.process_start_time(pid) == started:
                return
            env = {k: v for k, v in os.environ.items() if k != local.NODE_MARKER_ENV}
            log = open(self.root / "sim-host.log", "ab")  # noqa: SIM115  the child holds it
            proc = subprocess.Popen([sys.executable, "-m", SIM_AGENTS, str(self.state_path)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            host.update(pid=proc.pid, start_time=local.process_start_time(proc.pid))

    def terminate(self, node_ids: list[str]) -> None:
        super().terminate(node_ids)
        with locked_json(self.state_path) as state:
            left = any(r.get("sim") for r in state.values())
        if not left:  # the last simulated node went: its agents' process too
            with locked_json(self.host_path) as host:
                pid = host.pop("pid", None)
                if pid and local.process_start_time(pid) == host.pop("start_time", None):
                    local._signal(pid, signal.SIGTERM)
