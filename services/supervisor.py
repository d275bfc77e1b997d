"""The demo stack's supervisor: restarts any process of a run that exits, with back-off, one JSON line per event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.processes import PROCESSES, announce, spawn, wait_for

POLL_S = 0.5  # how often the supervisor looks for exited processes



class SupervisorError(RuntimeError):
    """The supervisor cannot watch a run: a pidfile or processes.json is missing or unreadable."""


@dataclass
class Backoff:
    """Restart delays as Kubernetes' CrashLoopBackOff spaces them, scaled to a demo: 1 s doubling to
    60 s, back to 1 s once a process stayed up 60 s (a crash loop must not spin, a rare crash must
    not wait a minute)."""

    base_s: float = 1.0
    cap_s: float = 60.0
    reset_after_s: float = 60.0
    attempt: int = 0

    def next(self, uptime_s: float) -> float:
        """The delay before restarting a process that exited after `uptime_s` seconds up."""
        self.attempt = 1 if uptime_s >= self.reset_after_s else self.attempt + 1
        return min(self.cap_s, self.base_s * 2 ** min(self.attempt - 1, 32))  # the cap on the exponent: no overflow


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state on (field 3), or None: gone, or no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class _Watched:
    """One running process: a child of the supervisor (a restart: its exit status is known), or one
    `up` started, watched from outside, whose status can be read only while it is a zombie."""

    def __init__(self, pid: int, process: subprocess.Popen | None = None):
        self.pid, self.process = pid, process
        self.since = time.monotonic()
        stat = _proc_stat(pid)
        self._start_ticks = stat[19] if stat else None  # field 22: tells a reused pid from ours

    def exited(self) -> tuple[bool, int | None]:
        """(whether it exited, its exit code as Popen reports it when known: -9 for SIGKILL)."""
        if self.process is not None:
            code = self.process.poll()
            return code is not None, code
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):  # reaped (by init), or the pid went to someone else
            return True, None
        stat = _proc_stat(self.pid)
        if stat is None or self._start_ticks is None:
            return False, None  # no /proc (not Linux): alive as far as kill() can tell
        if stat[19] != self._start_ticks:
            return True, None
        if stat[0] in "ZX":  # exited, not yet reaped by its parent (the launcher's process, in tests)
            return True, os.waitstatus_to_exitcode(int(stat[49])) if len(stat) > 49 else None
        return False, None


_output = threading.Lock()


def _event(event: str, **fields: object) -> None:
    """One JSON line to the supervisor's log (its stdout), whole even when threads log at once."""
    line = json.dumps({"event": event, **fields, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with _output:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _clear(name: str, run_dir: Path, pgid: int) -> None:
    """End what is left of an exited process's group: a surviving child would hold its port."""
    if name == "torchserve":
        from services.inference.server import TorchServe

        stale = TorchServe.attach(run_dir / "torchserve")
        if stale is not None:
            stale.stop()  # Java and its model workers may outlive the `torchserve` script
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _restart(name: str, spec: dict, run_dir: Path, stopping: threading.Event,
             spawning: threading.Lock) -> _Watched | None:
    """Start `name` again as `up` first did; None when the supervisor is stopping. The pidfile is
    written under `spawning`, so a stopping supervisor never leaves a process `down` cannot find."""
    if name == "torchserve":
        from services.inference.server import TorchServe, TorchServeConfig

        # Same config.properties, so the same ports: the editor's FACEEDIT_TORCHSERVE_TARGET holds.
        ts = TorchServe(TorchServeConfig(**spec["config"]), env=spec["env"])
        ts.start(spec["timeout_s"])  # `down` finds it through torchserve/server.json even before the pidfile
        with spawning:
            (run_dir / "torchserve.pid").write_text(str(ts.pgid))
        return _Watched(ts.pgid, ts.process)
    with spawning:
        if stopping.is_set():
            return None
        process = spawn(name, spec["argv"], run_dir, {**os.environ, **spec["env"]}, Path(spec["cwd"]))
    return _Watched(process.pid, process)


def _watch(name: str, spec: dict, run_dir: Path, pid: int, stopping: threading.Event,
           spawning: threading.Lock) -> None:
    """One thread per process, so a TorchServe that takes a minute to start delays no other restart."""
    watched: _Watched | None = _Watched(pid)
    backoff = Backoff()
    while not stopping.wait(POLL_S):
        exited, code = watched.exited() if watched is not None else (True, None)
        if not exited:
            continue
        delay = backoff.next(time.monotonic() - watched.since if watched is not None else 0.0)
        _event("restart", process=name, exit_code=code, attempt=backoff.attempt, delay_s=delay)
        try:
            if watched is not None:
                _clear(name, run_dir, watched.pid)
            if stopping.wait(delay):
                return
            watched = _restart(name, spec, run_dir, stopping, spawning)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # TimeoutError is an OSError
            _event("restart_failed", process=name, attempt=backoff.attempt, error=str(exc)[:500])
            watched = None
            continue
        if watched is None:
            return
        _event("started", process=name, pid=watched.pid, attempt=backoff.attempt)


def _read_pid(pidfile: Path) -> int:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise SupervisorError(f"{pidfile}: no pid to watch ({exc})") from exc


def supervise(run_dir: Path) -> int:
    """Watch every process of processes.json and restart any that exits (same argv, environment and
    ports, see Backoff for when), until SIGTERM or SIGINT; the children it started keep running."""
    try:
        specs = json.loads((run_dir / PROCESSES).read_text())
    except (OSError, ValueError) as exc:
        raise SupervisorError(f"{run_dir / PROCESSES}: {exc}") from exc
    pids = {name: _read_pid(run_dir / f"{name}.pid") for name in specs}
    stopping, spawning = threading.Event(), threading.Lock()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for name, spec in specs.items():
        threading.Thread(target=_watch, args=(name, spec, run_dir, pids[name], stopping, spawning),
                         name=f"watch-{name}", daemon=True).start()
    _event("watching", processes=pids)
    stopping.wait()
    # Held to the end: a restart under way writes its pidfile first, and none starts after, so `down`
    # (which sent the signal) stops exactly what the pidfiles name next.
    spawning.acquire()
    _event("stopped")
    return 0


def start_supervisor(run_dir: Path, specs: dict[str, dict]) -> None:
    """Write processes.json and start the detached supervisor; return once it watches the stack."""
    (run_dir / PROCESSES).write_text(json.dumps(specs, indent=2) + "\n")
    log = run_dir / "supervisor.log"
    # The launcher's own environment: processes.json holds only what the launcher added to it.
    process = spawn("supervisor", [sys.executable, "-m", "services.launcher", "supervise", "--run-dir", str(run_dir)],
                     run_dir, dict(os.environ))
    wait_for(lambda: log.is_file() and '"event": "watching"' in log.read_text(errors="replace"), "supervisor",
          process, log, 60)
    announce(f"supervisor pid {process.pid}: restarts whatever exits (log {log})")
