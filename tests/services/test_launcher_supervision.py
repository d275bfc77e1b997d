"""The launcher's supervisor: back-off, restarts with the same command and port, `down` stopping it first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services import launcher, processes, supervisor
from services.editor.probe import check


def _events(run_dir: Path, event: str) -> list[dict]:
    log = run_dir / "supervisor.log"
    if not log.is_file():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


def _until(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within:.0f} s")
        time.sleep(0.2)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _reap(pid: int) -> None:
    """Collect a child of this test process that was killed, so its zombie does not keep its group."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # subprocess reaped it already
        pass


def _pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid") if p.read_text().strip()}


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run():
    backoff = supervisor.Backoff()
    assert [backoff.next(uptime_s=0.5) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.attempt == 9
    assert backoff.next(uptime_s=60.0) == 1 and backoff.attempt == 1  # up a minute: a fresh crash
    assert backoff.next(uptime_s=59.0) == 2
    assert supervisor.Backoff(attempt=10_000).next(uptime_s=0) == 60  # no overflow however long it loops


@pytest.mark.slow
def test_supervisor_restarts_a_process_with_its_env_and_down_stops_it_first(tmp_path):
    """A plain process stands in for the worker: restarted with the launcher's added env, pidfile updated."""
    run_dir = tmp_path
    script = "import os, time; print('FLAG=' + os.environ['FACEEDIT_TEST_FLAG'], flush=True); time.sleep(600)"
    argv = [sys.executable, "-c", script]
    env = {**os.environ, "FACEEDIT_TEST_FLAG": "on"}
    first = processes.spawn("worker", argv, run_dir, env)
    try:
        supervisor.start_supervisor(run_dir, {"worker": launcher._spec(argv, env)})
        specs = json.loads((run_dir / processes.PROCESSES).read_text())
        assert specs["worker"]["env"] == {"FACEEDIT_TEST_FLAG": "on"}  # only what was added
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()  # reaped here: the supervisor then sees it gone, with no exit code to read
        _until(lambda: _events(run_dir, "started"), 15, "a restarted worker")
        (restart,) = _events(run_dir, "restart")
        assert restart["process"] == "worker" and restart["attempt"] == 1 and restart["delay_s"] == 1
        second = int((run_dir / "worker.pid").read_text())
        assert second != first.pid and second == _events(run_dir, "started")[0]["pid"]
        _until(lambda: (run_dir / "worker.log").read_text().count("FLAG=on") == 2, 15, "the restarted worker's output")
    finally:
        groups = {"first worker": first.pid, **_pids(run_dir)}
        launcher.down(run_dir.parent, run_dir)
    assert not list(run_dir.glob("*.pid"))
    assert _events(run_dir, "stopped") and len(_events(run_dir, "started")) == 1  # nothing restarted by down
    for name, pgid in groups.items():
        _until(lambda pgid=pgid: _group_gone(pgid), 10, f"{name} (group {pgid}) gone")


@pytest.mark.slow
def test_a_crash_loop_backs_off_with_each_exit_code(tmp_path):
    argv = [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
    first = processes.spawn("redis", argv, tmp_path, dict(os.environ))
    try:
        supervisor.start_supervisor(tmp_path, {"redis": launcher._spec(argv, dict(os.environ))})
        _until(lambda: len(_events(tmp_path, "restart")) >= 2, 20, "two restarts")
    finally:
        launcher.down(tmp_path.parent, tmp_path)
        _reap(first.pid)
    restarts = _events(tmp_path, "restart")[:2]
    # The first status is read from the zombie of a process this test started, the second from the supervisor's child.
    assert [(r["exit_code"], r["attempt"], r["delay_s"]) for r in restarts] == [(3, 1, 1), (3, 2, 2)]


@pytest.mark.integration
@pytest.mark.slow
def test_killed_editor_comes_back_on_its_port_and_down_stops_everything(tiny_models):
    from services.inference.archive import build_archive

    # Short: TorchServe's unix sockets live under the run dir, and a socket path has ~107 bytes.
    run_root = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))
    try:
        store = run_root / "store"
        build_archive("generator", store)
        build_archive("encoder", store)
        stack = launcher.up(run_root / "run", store, worker=False, timeout=240, models=tiny_models["models"])
        try:
            pids = _pids(stack.run_dir)
            assert set(pids) == {"redis", "torchserve", "editor", "supervisor"}
            port = stack.editor_target.rsplit(":", 1)[1]
            os.killpg(pids["editor"], signal.SIGKILL)
            # Reaped only after the supervisor read the exit status of the zombie (this test is its parent).
            _until(lambda: _events(stack.run_dir, "restart"), 15, "the restart line")
            _reap(pids["editor"])
            _until(lambda: check(stack.editor_target, timeout_s=2), 30, "a SERVING editor on the same port")
            (restart,) = _events(stack.run_dir, "restart")
            assert restart == {**restart, "process": "editor", "exit_code": -9, "attempt": 1, "delay_s": 1}
            new_pid = int((stack.run_dir / "editor.pid").read_text())
            assert new_pid != pids["editor"] and (stack.run_dir / "editor.port").read_text().strip() == port
        finally:
            groups = {**{f"first {name}": pgid for name, pgid in pids.items()}, **_pids(stack.run_dir)}
            launcher.down(run_root / "run")
        assert _events(stack.run_dir, "stopped")
        for name, pgid in groups.items():
            _until(lambda pgid=pgid: _group_gone(pgid), 10, f"{name} (group {pgid}) gone")
    finally:
        shutil.rmtree(run_root, ignore_errors=True)

