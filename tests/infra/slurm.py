"""A real Slurm for the tests (../shared/TESTING.md): munged, slurmctld and one slurmd per compute node,
started once per session from a private directory. Compute nodes are this machine (`localhost`) or VM
twins (one slurmd inside each twin's network namespace, NodeName = the twin's hostname); GPUs are
count-only GRES backed by private character devices, so `--gres=gpu:N` gives CUDA_VISIBLE_DEVICES
without hardware."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.infra import free_port, wait_for


_instances = itertools.count()  # several test Slurms in one session: a munged each


def slurm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a test Slurm needs root (munged and slurmd run as root here)"
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"Slurm is not installed ({tool} missing; ./dev test installs it when run as root)"
    return None


@dataclass
class SlurmNode:
    name: str
    addr: str
    cpus: int = 2
    memory_mb: int = 1000
    gpus: int = 0


class TestSlurm:
    def __init__(self, root: Path, nodes: list[SlurmNode], controller_addr: str = "127.0.0.1", netns: dict | None = None):
        self.root, self.nodes = root, nodes
        self.netns = netns or {}  # node name -> network namespace its slurmd runs in (twins)
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: list[int] = []
        host = socket.gethostname()
        # munged runs as its own user, which must reach its socket and logs through every parent folder:
        # the test's tmp folders are root's alone (0700), /run is not
        self.munge = Path(f"/run/launch-test-munge-{os.getpid()}-{next(_instances)}")
        self.munge.mkdir(parents=True, exist_ok=True)
        for d in ("state",):
            (root / d).mkdir(exist_ok=True)
        for n in nodes:
            (root / f"spool{n.name}").mkdir(exist_ok=True)
        lines = [
            "ClusterName=launchtest", f"SlurmctldHost={host}({controller_addr})", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge}/munge.sock",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool%n",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd-%n.pid",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill", "MpiDefault=none",
            "SwitchType=switch/none", "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none", "ReturnToService=2", "GresTypes=gpu",
            "SlurmctldParameters=enable_configless", "MinJobAge=2",
            # a job past its time limit (or cancelled) is killed 2 s after its SIGTERM, not 30 s
            "KillWait=2",
            # ports of its own: another Slurm on this machine (a developer's, a second test run) is left alone
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            # nodes may declare more CPUs than this machine has (several allocations on 2 cores)
            "SlurmdParameters=config_overrides",
        ]
        gres = []
        for n in nodes:
            extra = f" Gres=gpu:{n.gpus}" if n.gpus else ""
            lines.append(f"NodeName={n.name} NodeAddr={n.addr} CPUs={n.cpus} RealMemory={n.memory_mb}{extra} "
                         "State=UNKNOWN")
            if n.gpus:
                devdir = root / f"gpus-{n.name}"
                devdir.mkdir(exist_ok=True)
                for i in range(n.gpus):
                    dev = devdir / f"gpu{i}"
                    if not dev.exists():
                        os.mknod(dev, 0o600 | 0o020000, os.makedev(195, i))  # never under /dev
                gres.append(f"NodeName={n.name} Name=gpu File={devdir}/gpu[0-{n.gpus - 1}]")
        names = ",".join(n.name for n in nodes)
        lines.append(f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP")
        lines.append(f"PartitionName=gpu Nodes={names} MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        (root / "gres.conf").write_text("\n".join(gres) + "\n")
        (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")

    def start(self) -> TestSlurm:
        munge = self.munge
        shutil.chown(munge, "munge", "munge")
        os.chmod(munge, 0o755)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=False, capture_output=True)
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--socket={munge}/munge.sock",
                        f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                        f"--seed-file={munge}/munged.seed"], check=True, capture_output=True)
        self.pids.append(int(wait_for(lambda: (munge / "munged.pid").exists() and (munge / "munged.pid").read_text().strip(),
                                      timeout=10, every=0.05, what="munged")))
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True, capture_output=True)
        for n in self.nodes:
            cmd = ["slurmd", "-f", str(self.conf), "-N", n.name]
            if n.name in self.netns:
                ns = self.netns[n.name]
                script = f"hostname {n.name}; SLURM_CONF={self.conf} exec " + " ".join(cmd)
                cmd = ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "--mount", "--propagation", "private",
                       "sh", "-c", script]
            subprocess.run(cmd, env=self.env, check=True, capture_output=True)
        wait_for(lambda: self.idle() == len(self.nodes), timeout=30, every=0.1, what="every slurmd idle")
        return self

    def idle(self) -> int:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True).stdout
        # a node shows once per partition it is in
        return len({line.split()[0] for line in out.splitlines() if line.split()[-1] in ("idle", "mixed", "allocated")})

    def queue(self) -> list[str]:
        """The ids of every job in the queue (pending or running)."""
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True).stdout
        return out.split()

    def scancel_all(self) -> None:
        subprocess.run(["scancel", "--full", *self.queue()], env=self.env, capture_output=True)
        wait_for(lambda: not self.queue(), timeout=30, every=0.2, what="an empty queue")

    def stop(self) -> None:
        for pidfile in [self.root / "slurmctld.pid", *[self.root / f"slurmd-{n.name}.pid" for n in self.nodes],
                        self.munge / "munged.pid"]:
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.munge, ignore_errors=True)
