"""Jobs, as a node's executor (runtime/executor.py) runs them."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from runtime.node_config import runtime_dir
from runtime.processes import JOB_RUN_ENV, JobProcess
from runtime.proto import head_pb2 as pb

LOG_SHIP_INTERVAL_S = 0.2


class JobRunning:
    """The executor's jobs: `bash -c` in their own directory and session, their log shipped as it grows, their
    whole tree ended with them. Its state is the Executor's (set in Executor.__init__): a part of Executor, not
    used alone."""

    def _run_job(self, a: pb.Assignment) -> None:
        spec = a.spec
        job_dir = runtime_dir() / "jobs" / a.item_id
        job_dir.mkdir(parents=True, exist_ok=True)
        for d in (job_dir.parent, job_dir):  # a job's files and output are its user's only
            os.chmod(d, 0o700)
        for name, data in spec.files.items():
            dst = (job_dir / name).resolve()
            if job_dir.resolve() not in dst.parents:
                continue  # a file name may not escape the job's directory
            dst.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
        cwd = Path(os.path.expanduser(spec.working_dir)) if spec.working_dir else job_dir
        if not cwd.is_absolute():
            cwd = job_dir / cwd
        log_path = job_dir / "output.log"
        env = self._env(list(a.gpu_ids), dict(spec.env))
        env["LAUNCH_JOB_ID"] = env["LAUNCH_ITEM_ID"] = a.item_id
        # what marks this run's whole tree (unique: another cluster on this machine may have a job of this id)
        env[JOB_RUN_ENV] = f"{a.item_id}.{a.attempt}.{secrets.token_hex(6)}"
        env["LAUNCH_JOB_DIR"] = str(job_dir)
        if not cwd.is_dir():
            self._done(a, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                        message=f"working directory {cwd} does not exist on the node"))
            return
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            try:
                proc = JobProcess(env[JOB_RUN_ENV], ["bash", "-c", spec.command], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            except OSError as e:
                self._done(a, pb.ItemResult(id=a.item_id, state="failed", exit_code=127,
                                            message=f"cannot start the job: {e}"))
                return
        self._started(a, proc)
        with open(log_path, "rb") as f:
            while True:
                exited = proc.poll() is not None
                chunk = f.read()
                if chunk:
                    self.ship_log(a.item_id, chunk)
                if exited:
                    break
                time.sleep(LOG_SHIP_INTERVAL_S)
        code = proc.returncode
        if code != 0 and self.preempting:  # ended by the notice's SIGTERM, or it would have ended unfinished
            self._done(a, pb.ItemResult(id=a.item_id, state="lost", exit_code=code,
                                        message=f"its node is being preempted (exit code {code})"))
            return
        state = "finished" if code == 0 else "failed"
        self._done(a, pb.ItemResult(id=a.item_id, state=state, exit_code=code,
                                    message="" if code == 0 else f"exit code {code}"))
