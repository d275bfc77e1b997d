"""Start and stop a Celery worker process on the "gpu" queue (tests and `make demo`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`celery -A services.worker.app worker` in its own session; config via FACEEDIT_* in `env`."""

    def __init__(self, env: Mapping[str, str], log_file: str | Path, name: str = "faceedit-worker",
                 queue: str = "gpu", nice: int = 0):
        self.env = {**os.environ, **dict(env)}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        self.log_file = Path(log_file)
        self.name, self.queue, self.nice = name, queue, nice
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "celery", "-A", "services.worker.app", "worker", "-Q", self.queue,
               "-P", "solo", "-c", "1", "-n", f"{self.name}@%h", "--loglevel", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup, no acknowledgement."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM: finish the current task), then SIGKILL if it takes too long."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            self.process.wait()
        self.process = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
