"""`launch submit` and `launch job ...`: jobs are shell commands the head schedules like any work."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import grpc

from core.errors import LaunchError
from runtime.client import HeadClient
from runtime.proto import head_pb2 as pb


def parse_resources(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(amount)
        except ValueError:
            raise LaunchError(f"--resource {pair!r}: expected NAME=AMOUNT, e.g. accelerator_type:T4=1") from None
    return out


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise LaunchError(f"--env {pair!r}: expected KEY=VALUE")
        out[name] = value
    return out


def script_command(script: Path, args: list[str]) -> str:
    """How the node runs the uploaded script: by its extension, with the runtime's Python for .py."""
    name = shlex.quote(script.name)
    rest = " ".join(shlex.quote(a) for a in args)
    if script.suffix == ".py":
        return f'"${{LAUNCH_PYTHON:-python3}}" {name} {rest}'.strip()
    if script.suffix == ".sh":
        return f"bash {name} {rest}".strip()
    return f"chmod +x {name} && ./{name} {rest}".strip()


def submit_job(client: HeadClient, script: Path, args: list[str], *, cpus: float, gpus: float,
               resources: dict[str, float], name: str | None, max_retries: int,
               env: dict[str, str] | None = None, working_dir: str = "") -> str:
    if not script.is_file():
        raise LaunchError(f"{script}: no such script")
    request = {"CPU": cpus, "GPU": gpus, **resources}
    command = script_command(script, args)
    if working_dir:  # the script stays in the job's directory; the job runs where the user asked
        command = command.replace(shlex.quote(script.name), '"$LAUNCH_JOB_DIR"/' + shlex.quote(script.name), 1)
    spec = pb.WorkSpec(
        kind="job", name=name or script.name, command=command,
        request=pb.Resources(amounts={k: float(v) for k, v in request.items() if v > 0}),
        files={script.name: script.read_bytes()}, max_retries=max_retries, env=env or {},
        working_dir=working_dir,
    )
    try:
        return client.submit(spec)
    except grpc.RpcError as e:
        raise LaunchError(f"the head refused the job: {e.details()}") from None


def follow_logs(client: HeadClient, job_id: str, follow: bool = True, out=sys.stdout) -> pb.ItemInfo:
    """Print the job's log (until it is done, when following); returns the job's final info."""
    offset = 0
    while True:
        try:
            reply = client.job_logs(job_id, offset)
        except grpc.RpcError as e:
            raise LaunchError(f"job {job_id}: {e.details()}") from None
        if reply.data:
            out.write(reply.data.decode(errors="replace"))
            out.flush()
        offset = reply.offset
        if reply.done or not follow:
            return job_info(client, job_id)
        if not reply.data:
            time.sleep(0.3)


def job_info(client: HeadClient, job_id: str) -> pb.ItemInfo:
    for item in client.list_items("job"):
        if item.id == job_id:
            return item
    raise LaunchError(f"no job {job_id!r} on this cluster")
