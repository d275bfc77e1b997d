"""Start and stop TorchServe: config.properties, its own process group, ready once a real inference works."""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from services.common.redis_server import free_port
from services.common.settings import read_settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOG_CONFIG = HERE / "config" / "log4j2.xml"
ENV_PREFIX = "FACEEDIT_TS_"
# Big enough for a batch of 1024 px PNGs in base64; TorchServe's default is 6.5 MB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TorchServeConfig:
    """Where TorchServe listens and what it serves; `from_env` reads FACEEDIT_TS_<FIELD> once.
    A port of 0 means a free port chosen at start."""

    model_store: str = str(REPO / "model_store")
    workdir: str = str(REPO / "run" / "torchserve")
    models: str = "generator,encoder"
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    management_port: int = 0
    grpc_management_port: int = 0
    metrics_port: int = 0
    # None: on only when TorchServe listens beyond loopback (see _token_auth).
    token_auth: bool | None = None
    # The Java frontend's JVM flags (config.properties `vmargs`). It only forwards bytes, so C1 code is
    # enough: with C2 on, its compiler thread spent ~6 ms of CPU per Edit long after a 3,000-call warm-up,
    # taking the cores from the model worker (measured 2026-12-02: the handler 4.4 → 1.2-1.7 ms slower than
    # in process; the frontend's CPU per call 3-4.4 → 1.6-2.4 ms). FACEEDIT_TS_JVM_ARGS replaces them.
    jvm_args: str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> TorchServeConfig:
        return read_settings(cls, env, prefix=ENV_PREFIX, **overrides)

    def with_ports(self) -> TorchServeConfig:
        """Same config, every 0 port replaced by a free one."""
        ports = {f.name: free_port() for f in fields(self) if f.name.endswith("_port") and getattr(self, f.name) == 0}
        return replace(self, **ports)

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def _token_auth(config: TorchServeConfig) -> bool:
    # Off on loopback: only processes of this machine can connect, and the editor would otherwise
    # have to read a key file TorchServe rewrites on every start. Listening beyond loopback (a
    # container network) keeps TorchServe's token auth on; the editor then sends the inference key.
    # The container deployments set FACEEDIT_TS_TOKEN_AUTH=false and let the network policy decide
    # who reaches the port instead: TorchServe's keys are random per process and expire after an
    # hour, renewable only through the private management API (deploy/README.md).
    return (not config.loopback) if config.token_auth is None else config.token_auth


def config_properties(config: TorchServeConfig) -> str:
    """The config.properties text for `config` (ports must be resolved)."""
    host = config.host
    lines = [
        f"inference_address=http://{host}:{config.http_port}",
        # Management and metrics stay on loopback whatever `host` is: never exposed.
        f"management_address=http://127.0.0.1:{config.management_port}",
        f"metrics_address=http://127.0.0.1:{config.metrics_port}",
        f"grpc_inference_address={host}",
        f"grpc_inference_port={config.grpc_port}",
        "grpc_management_address=127.0.0.1",
        f"grpc_management_port={config.grpc_management_port}",
        f"model_store={config.model_store}",
        # Nothing is ever fetched from a URL: only the model store may be read (a regex, with its
        # backslashes doubled for the properties format).
        f"allowed_urls=file://{re.escape(str(Path(config.model_store).resolve())).replace(chr(92), chr(92) * 2)}/.*",
        f"load_models={config.models}",
        "default_workers_per_model=1",
        # Registering models through the management API (and fetching them from URLs) stays off.
        "enable_model_api=false",
        f"disable_token_authorization={'false' if _token_auth(config) else 'true'}",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        f"max_request_size={MAX_MESSAGE_BYTES}",
        f"max_response_size={MAX_MESSAGE_BYTES}",
    ]
    if config.jvm_args.strip():
        lines.append(f"vmargs={config.jvm_args.strip()}")
    return "\n".join(lines) + "\n"


class TorchServe:
    """One TorchServe in its own process group, with its own pid file (TMPDIR) and working directory,
    so several can run side by side and `stop` ends exactly the processes this one started."""

    def __init__(self, config: TorchServeConfig, env: Mapping[str, str] | None = None, log_to_stdout: bool = False):
        self.config = config.with_ports()
        self.workdir = Path(self.config.workdir).resolve()
        self.extra_env = dict(env or {})
        # In a container the runtime collects stdout; on a workstation the log goes to the workdir.
        self.log_to_stdout = log_to_stdout
        self.process: subprocess.Popen | None = None
        self.pgid: int | None = None

    @classmethod
    def attach(cls, workdir: str | Path) -> TorchServe | None:
        """The server a `start` in another process left running in `workdir` (for `stop`), if any."""
        state = Path(workdir) / "server.json"
        if not state.exists():
            return None
        saved = json.loads(state.read_text())
        server = cls(TorchServeConfig(**{k: v for k, v in saved.items() if k != "pgid"}))
        server.pgid = saved["pgid"]
        return server

    @property
    def grpc_target(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def tmp_dir(self) -> Path:
        """TorchServe's TMPDIR: its pid file and the unix sockets of its model workers live there. A
        socket path longer than ~107 bytes cannot be bound, and then every model worker dies at start
        and TorchServe never turns ready; a deep work dir therefore gets a short one derived from it
        (the same on every call, so `stop` finds the pid file)."""
        tmp = self.workdir.resolve() / "tmp"
        if len(str(tmp)) + len("/.ts.sock.65535") <= 100:
            return tmp
        digest = hashlib.sha256(str(tmp).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"faceedit-ts-{digest}"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        # The handlers import `services.*` from the checkout; TorchServe's workers inherit this env.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        tmp = self.tmp_dir
        env.update(TMPDIR=str(tmp), TEMP=str(tmp),  # a private pid file (torchserve keeps it in TMPDIR)
                   LOG_LOCATION=str(self.workdir / "logs"), METRICS_LOCATION=str(self.workdir / "logs"))
        return env

    def _torchserve(self) -> str:
        return str(Path(sys.executable).parent / "torchserve")

    def start(self, timeout: float = 180.0) -> TorchServe:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        properties = self.workdir / "config.properties"
        properties.write_text(config_properties(self.config))
        log = None if self.log_to_stdout else open(self.workdir / "torchserve.log", "ab")
        # --foreground keeps the launcher as the parent of Java: the whole tree shares our new
        # session, which `stop` can sweep. --ncs: no config snapshots.
        self.process = subprocess.Popen(
            [self._torchserve(), "--start", "--foreground", "--ncs", "--ts-config", str(properties),
             "--model-store", self.config.model_store, "--log-config", str(LOG_CONFIG)],
            cwd=self.workdir, env=self._env(), stdout=log, stderr=subprocess.STDOUT if log else None,
            start_new_session=True)
        if log is not None:
            log.close()
        self.pgid = self.process.pid
        (self.workdir / "server.json").write_text(json.dumps({"pgid": self.process.pid, **asdict(self.config)}))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def inference_key(self) -> str | None:
        """The key to send as `authorization: Bearer <key>` when token auth is on, else None."""
        if not _token_auth(self.config):
            return None
        return json.loads((self.workdir / "key_file.json").read_text())["inference"]["key"]

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every model answered a real request. /ping turns Healthy before the workers have
        loaded their models, so each model gets a probe body the handler must reject itself: a
        typed INVALID_ARGUMENT error from the handler proves the worker runs our code."""
        deadline = time.monotonic() + timeout
        pending = [m for m in self.config.models.split(",") if m]
        while pending:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited; see {self.workdir / 'torchserve.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {pending} not ready after {timeout} s; "
                                   f"see {self.workdir / 'torchserve.log'}")
            if self._probe(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.25)

    def healthy(self) -> bool:
        """Every model answers a probe now (the container health check and readiness probe)."""
        return all(self._probe(m) for m in self.config.models.split(",") if m)

    def _probe(self, model: str) -> bool:
        request = urllib.request.Request(f"{self.http_url}/predictions/{model}", data=b'{"v": 1, "probe": true}',
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            key = self.inference_key()
        except (OSError, ValueError, KeyError):  # TorchServe has not written the key file (fully) yet
            return False
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return body.get("error", {}).get("code") == "INVALID_ARGUMENT"

    def stop(self, timeout: float = 30.0) -> None:
        if self.pgid is None:
            return
        # `torchserve --stop` (with our TMPDIR, so our pid file) asks Java to shut its workers down.
        subprocess.run([self._torchserve(), "--stop", "--foreground"], cwd=self.workdir, env=self._env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 40)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _sweep(self.pgid)
        (self.workdir / "server.json").unlink(missing_ok=True)
        if self.tmp_dir.parent != self.workdir.resolve():  # the short one outside the work dir: ours alone
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.process, self.pgid = None, None

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sweep(pgid: int) -> None:
    """Kill whatever is left of the process group we created (workers outliving Java)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def serve(config: TorchServeConfig, timeout: float = 300.0) -> int:
    """Run TorchServe in the foreground until SIGTERM/SIGINT (a container's main process): stop it
    cleanly on a signal, and exit non-zero when it dies by itself so the orchestrator restarts us."""
    server = TorchServe(config, log_to_stdout=True)
    stopping = threading.Event()
    ready = False

    def on_signal(signum: int, frame: object) -> None:
        if ready:
            stopping.set()
        else:  # still in start(): unwind through its cleanup, which stops what it started
            raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = 0
    try:
        server.start(timeout)
        ready = True
        print(json.dumps({"grpc": server.grpc_target, "http": server.http_url, "pgid": server.pgid}), flush=True)
        while not stopping.wait(1.0):
            if server.process is not None and server.process.poll() is not None:
                code = server.process.returncode or 1
                print(json.dumps({"event": "torchserve exited", "code": server.process.returncode}), flush=True)
                break
    except KeyboardInterrupt:
        pass  # a signal before TorchServe was ready: a normal stop
    finally:
        server.stop()  # a no-op when start() already cleaned up after itself
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start in the background, return once every model answers")
    start.add_argument("--timeout", type=float, default=300.0)
    run = sub.add_parser("serve", help="start and stay in the foreground until SIGTERM (a container's command)")
    run.add_argument("--timeout", type=float, default=300.0)
    sub.add_parser("health", help="exit 0 when the TorchServe of FACEEDIT_TS_WORKDIR answers for every model")
    sub.add_parser("stop", help="stop the TorchServe started from FACEEDIT_TS_WORKDIR")
    sub.add_parser("config", help="print the config.properties the current env would produce")
    args = parser.parse_args(argv)
    config = TorchServeConfig.from_env()
    if args.command == "config":
        print(config_properties(config.with_ports()), end="")
    elif args.command == "start":
        server = TorchServe(config).start(args.timeout)
        print(json.dumps({"grpc": server.grpc_target, "http": server.http_url, "pgid": server.pgid}))
    elif args.command == "serve":
        return serve(config, args.timeout)
    elif args.command == "health":
        running = TorchServe.attach(config.workdir)
        return 0 if running is not None and running.healthy() else 1
    else:
        server = TorchServe.attach(config.workdir)
        if server is None:
            print("not running")
        else:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
