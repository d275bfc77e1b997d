"""Processes of a demo run: each spawned in its own session with a pid file and a log in the run dir, waited for."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROCESSES = "processes.json"  # how the supervisor restarts each process (written by `up`)


def announce(message: str) -> None:
    print(f"[launcher] {message}", flush=True)


def spawn(name: str, args: list[str], run_dir: Path, env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    """A child in its own session (its own process group): Ctrl-C in the terminal reaches only us,
    and we end each group deliberately. The pid goes to <name>.pid before anything else can fail."""
    log = open(run_dir / f"{name}.log", "ab")
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    (run_dir / f"{name}.pid").write_text(str(process.pid))
    return process


def wait_for(check, what: str, process: subprocess.Popen | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log}"
                               + (f"; its last line: {last[0][:500]}" if last else ""))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.2)
