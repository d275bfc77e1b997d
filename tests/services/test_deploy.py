"""Compose, Dockerfiles and deploy/k8s checked against the code without Docker; each check also fails on a broken copy."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlparse

import pytest
import yaml

from services.editor.config import EditorConfig
from services.editor.probe import LIVENESS_SERVICE
from services.inference.server import TorchServeConfig, config_properties
from services.worker.config import WorkerConfig

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"

EDITOR, TORCHSERVE, WORKER = "services.editor.server", "services.inference.server", "services.worker.app"
GPU = "nvidia.com/gpu"
# Set in the Dockerfiles for the interpreter, pip or the OS, not for our code.
RUNTIME_ENV = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR",
               "PIP_DISABLE_PIP_VERSION_CHECK", "HOME"}
ENV_LITERAL = re.compile(r"(FACEEDIT|AWS)_[A-Z0-9_]*[A-Z0-9]")


# ---------------------------------------------------------------------------------------------------
# What the code reads


class _RecordingEnv(dict):
    """An empty environment that remembers every name a config class asks it for."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return default


def _asked_for(read: Callable[[Mapping[str, str]], object]) -> set[str]:
    env = _RecordingEnv()
    read(env)
    return env.names


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

    shared = ("services/common/*.py", "faceedit/zoo.py", "faceedit/proto/__init__.py")
    editor = _asked_for(lambda env: EditorConfig.from_env(env))
    torchserve = _asked_for(TorchServeConfig.from_env) | _asked_for(lambda env: InferenceConfig.load(None, env))
    worker = _asked_for(WorkerConfig.from_env)
    return {
        EDITOR: frozenset(editor | _literals(("services/editor/*.py", *shared))),
        TORCHSERVE: frozenset(torchserve | _literals(("services/inference/*.py", *shared))),
        WORKER: frozenset(worker | _literals(("services/worker/*.py", *shared))),
    }


def test_the_readers_are_what_the_config_classes_read():
    """Guards the recording trick itself: known names of each service are found, and not across services."""
    r = readers()
    assert {"FACEEDIT_PORT", "FACEEDIT_TORCHSERVE_TARGET", "FACEEDIT_API_KEYS_FILE", "FACEEDIT_LOG_LEVEL"} <= r[EDITOR]
    assert {"FACEEDIT_TS_GRPC_PORT", "FACEEDIT_TS_HOST", "FACEEDIT_REDIS_URL", "FACEEDIT_LRU_SIZE"} <= r[TORCHSERVE]
    assert {"FACEEDIT_REDIS_URL", "FACEEDIT_QUEUE", "FACEEDIT_VISIBILITY_TIMEOUT"} <= r[WORKER]
    assert "FACEEDIT_TS_HOST" not in r[EDITOR] and "FACEEDIT_PORT" not in r[WORKER]


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


def editor_worker_problems(e_env: Mapping[str, str], w_env: Mapping[str, str]) -> list[str]:
    """The editor sends the task the worker registers, to the queue the worker consumes."""
    from services.worker.app import TASK_ADAPT

    problems = []
    if e_env.get("FACEEDIT_QUEUE", EditorConfig().queue) != w_env.get("FACEEDIT_QUEUE", WorkerConfig().queue):
        problems.append("editor and worker use different queues")
    if e_env.get("FACEEDIT_TASK_NAME", EditorConfig().task_name) != TASK_ADAPT:
        problems.append(f"editor sends {e_env.get('FACEEDIT_TASK_NAME')!r}, the worker runs {TASK_ADAPT!r}")
    return problems


def port_of(target: str) -> int:
    return int(target.rsplit(":", 1)[1])


def torchserve_properties(env: Mapping[str, str]) -> dict[str, str]:
    text = config_properties(TorchServeConfig.from_env(env).with_ports())
    return dict(line.split("=", 1) for line in text.splitlines())


def private_torchserve_ports(env: Mapping[str, str]) -> set[int]:
    """Every TorchServe port but gRPC inference: management, metrics, gRPC management, REST."""
    ports = {int(v) for k, v in env.items() if k.startswith("FACEEDIT_TS_") and k.endswith("_PORT")}
    return ports - {int(env["FACEEDIT_TS_GRPC_PORT"])}


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


def test_the_checks_of_commands_and_env_fail_on_bad_input():
    assert command_problems(["python", "-m", "services.editor.servr"], "x")
    assert command_problems(["python", "-m", TORCHSERVE, "healthz"], "x")
    assert command_problems(["python", "-m", "celery", "-A", WORKER, "worker", "-Q", "cpu", "--pool", "solo"], "x")
    assert command_problems(["python", "-m", "celery", "-A", WORKER, "worker", "-Q", "gpu", "--pool", "prefork"], "x")
    assert env_problems(EDITOR, {"FACEEDIT_TS_HOST": "0.0.0.0"}, "x")
    assert env_problems(WORKER, {"FACEEDIT_REDIS_URLS": "redis://r"}, "x")
    assert redis_args_problems(["--appendonly", "yes", "--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru"], "x")


# ---------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile(path):
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def dockerfile_cmd(path: Path) -> list[str]:
    return [json.loads(args) for instruction, args in dockerfile(path) if instruction == "CMD"][-1]


def dockerignored(relative: str) -> bool:
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pattern.removeprefix("**/")) or fnmatch.fnmatch(p, pattern)
               for p in prefixes for pattern in patterns)


def dockerfile_problems(path: Path) -> list[str]:
    problems = []
    for instruction, args in dockerfile(path):
        if instruction == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                if not list(REPO.glob(source)):
                    problems.append(f"{path.name}: COPY {source}: not in the repository")
                elif dockerignored(source):
                    problems.append(f"{path.name}: COPY {source}: excluded by .dockerignore")
    cmd = dockerfile_cmd(path)
    problems += command_problems(cmd, f"{path.name} CMD")
    env = {k: v for k, v in dockerfile_env(path).items() if k not in RUNTIME_ENV}
    problems += env_problems(module_of(cmd), env, f"{path.name} ENV")
    return problems


DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*.Dockerfile"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_run_modules_with_env_they_read(path):
    assert dockerfile_problems(path) == []


def test_there_is_one_dockerfile_per_service():
    assert {p.name for p in DOCKERFILES} == {"editor.Dockerfile", "inference.Dockerfile", "worker.Dockerfile"}
    assert {module_of(dockerfile_cmd(p)) for p in DOCKERFILES} == {EDITOR, TORCHSERVE, WORKER}


@pytest.mark.parametrize("old, new", [
    ("COPY services ./services", "COPY servicez ./services"),
    ("COPY services ./services", "COPY deploy/secrets ./secrets"),
    ("ENV PYTHONDONTWRITEBYTECODE=1", "ENV FACEEDIT_HOTS=0.0.0.0 PYTHONDONTWRITEBYTECODE=1"),
    ('"services.editor.server"]', '"services.editor.serve"]'),
])
def test_the_dockerfile_check_fails_on_a_broken_copy(tmp_path, old, new):
    text = (REPO / "deploy" / "docker" / "editor.Dockerfile").read_text()
    assert old in text
    broken = tmp_path / "editor.Dockerfile"
    broken.write_text(text.replace(old, new))
    assert dockerfile_problems(broken)


# ---------------------------------------------------------------------------------------------------
# docker-compose.yml


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


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
    editor, ts, worker = (services[ours[m]] for m in (EDITOR, TORCHSERVE, WORKER))
    e_env, t_env, w_env = (s.get("environment") or {} for s in (editor, ts, worker))
    problems = []
    port = int(e_env.get("FACEEDIT_PORT", EditorConfig().port))
    probe = editor.get("healthcheck", {}).get("test", [])
    if "services.editor.probe" not in probe or port_of(probe[probe.index("services.editor.probe") + 1]) != port:
        problems.append(f"editor healthcheck {probe} does not ask grpc health on port {port}")
    if port not in [int(str(p).rsplit(":", 1)[-1]) for p in editor.get("ports", [])]:
        problems.append(f"editor does not publish its port {port}")
    target = e_env.get("FACEEDIT_TORCHSERVE_TARGET", EditorConfig().torchserve_target)
    host, ts_port = target.rsplit(":", 1)
    if host != ours[TORCHSERVE] or int(ts_port) != int(t_env.get("FACEEDIT_TS_GRPC_PORT", -1)):
        problems.append(f"editor calls {target}, TorchServe is {ours[TORCHSERVE]}:{t_env.get('FACEEDIT_TS_GRPC_PORT')}")
    problems += editor_worker_problems(e_env, w_env)
    for key in ("FACEEDIT_REDIS_URL", "FACEEDIT_REDIS_NAMESPACE", "FACEEDIT_ARTIFACT_STORE_URL", "FACEEDIT_MODELS"):
        if len({e_env.get(key), t_env.get(key), w_env.get(key)}) != 1:
            problems.append(f"{key} differs between editor, TorchServe and worker")
    # ${VAR...} is compose's interpolation (the password from .env): any value will do for the host and port.
    redis_url = urlparse(re.sub(r"\$\{[^}]*\}", "password", e_env.get("FACEEDIT_REDIS_URL", "")))
    redis_host = redis_url.hostname
    redis = services.get(redis_host or "", {})
    if not str(redis.get("image", "")).startswith("redis:") or redis_url.port != 6379:
        problems.append(f"FACEEDIT_REDIS_URL points at {redis_host!r}, which is no Redis service on 6379")
    else:
        problems += redis_args_problems(redis.get("command", []), "compose redis")
        if not any(str(v).endswith(":/data") for v in redis.get("volumes", [])):
            problems.append("compose redis keeps /data (its AOF) on no volume")
    store = urlparse(e_env.get("FACEEDIT_ARTIFACT_STORE_URL", ""))
    for name in ours.values():
        mounts = dict(str(v).split(":", 1)[::-1] for v in services[name].get("volumes", []))
        if store.scheme != "file" or mounts.get(store.path) not in (doc.get("volumes") or {}):
            problems.append(f"{name}: the artifact store {store.geturl()} is on no named volume")
    keys = e_env.get("FACEEDIT_API_KEYS_FILE", "")
    if keys.removeprefix("/run/secrets/") not in editor.get("secrets", []) or keys.removeprefix(
            "/run/secrets/") not in (doc.get("secrets") or {}):
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
    private = private_torchserve_ports(env)
    if ts.get("ports"):
        problems.append(f"torchserve publishes ports {ts['ports']}: nothing of it may leave the compose network")
    if {int(p) for p in ts.get("expose", [])} & private:
        problems.append("torchserve exposes a management/metrics port")
    props = torchserve_properties(env)
    if not (props["management_address"].startswith("http://127.0.0.1:") and props["grpc_management_address"] ==
            "127.0.0.1" and props["enable_model_api"] == "false"):
        problems.append("TorchServe management is not loopback-only with registration off")
    if props["disable_token_authorization"] == "true":
        networks = doc.get("networks") or {}
        if not all((networks.get(n) or {}).get("internal") for n in ts.get("networks", ["default"])):
            problems.append("torchserve without token auth sits on a network that is not internal")
    return problems


def test_compose_services_build_run_real_modules_and_set_only_env_the_code_reads():
    assert compose_problems(compose()) == []


def test_compose_wiring_matches_the_code():
    assert compose_wiring_problems(compose()) == []


def test_compose_gpus_and_what_torchserve_exposes():
    assert compose_exposure_problems(compose()) == []


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation: set (or, with value None, delete) the item at a slash-separated path."""
    def mutate(doc: dict) -> None:
        *parents, last = path.split("/")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is None:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


@pytest.mark.parametrize("check, mutate", [
    (compose_problems, _set("services/worker/build", None)),
    (compose_problems, _set("services/editor/environment/FACEEDIT_TS_HOST", "0.0.0.0")),
    (compose_problems, _set("services/worker/environment/FACEEDIT_REDIS_URLS", "redis://redis")),
    (compose_problems, _set("services/torchserve/command/3", "start-ish")),
    (compose_problems, _set("services/torchserve/healthcheck/test/4", "healthz")),
    (compose_wiring_problems, _set("services/editor/healthcheck/test/4", "127.0.0.1:50052")),
    (compose_wiring_problems, _set("services/editor/environment/FACEEDIT_TORCHSERVE_TARGET", "torchserve:7071")),
    (compose_wiring_problems, _set("services/worker/environment/FACEEDIT_QUEUE", "cpu")),
    (compose_wiring_problems, _set("services/editor/environment/FACEEDIT_TASK_NAME", "faceedit.adopt")),
    (compose_wiring_problems, _set("services/redis/command/2", "no")),
    (compose_wiring_problems, _set("services/redis/volumes", [])),
    (compose_wiring_problems, _set("services/worker/volumes", [])),
    (compose_wiring_problems, _set("services/editor/environment/FACEEDIT_API_KEYS_FILE", "/etc/keys.json")),
    (compose_exposure_problems, _set("services/worker/deploy", None)),
    (compose_exposure_problems, _set("services/torchserve/ports", ["8081:8081"])),
    (compose_exposure_problems, _set("services/torchserve/expose", ["7070", "8081"])),
    (compose_exposure_problems, _set("networks/backend/internal", False)),
])
def test_the_compose_checks_fail_on_a_broken_copy(check, mutate):
    doc = compose()
    mutate(doc)
    assert check(doc)


# ---------------------------------------------------------------------------------------------------
# deploy/k8s


def k8s() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def workloads(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """(workload, container) of our processes, keyed by the module the container runs."""
    out = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                module = module_of(list(container.get("command", [])) + list(container.get("args", [])))
                if module:
                    out[module] = (doc, container)
    return out


def selects(selector: Mapping[str, str], workload: Mapping) -> bool:
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: Mapping, port: int | str) -> int | None:
    """A numeric port, or the number behind a named container port."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def plain_env(container: Mapping) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def k8s_env_problems(docs: list[dict]) -> list[str]:
    """Each container's env names are read by its process, or referenced as $(NAME) by a later value."""
    problems = []
    for module, (doc, container) in workloads(docs).items():
        where = f"{doc['metadata']['name']}/{container['name']}"
        env = container.get("env", [])
        defined: list[str] = []
        referenced = set()
        for item in env:
            for ref in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                if ref not in defined:
                    problems.append(f"{where}: {item['name']} refers to $({ref}) before it is defined")
                referenced.add(ref)
            defined.append(item["name"])
        problems += env_problems(module, {e["name"]: "" for e in env}, where, extra=referenced)
        problems += command_problems(list(container.get("command", [])) + list(container.get("args", [])), where)
    return problems


def k8s_wiring_problems(docs: list[dict]) -> list[str]:
    problems = []
    ours = workloads(docs)
    if set(ours) != {EDITOR, TORCHSERVE, WORKER}:
        return [f"deploy/k8s runs {sorted(ours)}, expected the editor, TorchServe and a worker"]
    images = {module: compose()["services"][name]["image"] for module, name in by_module(compose()["services"]).items()}
    for module, (doc, container) in ours.items():
        if container["image"] != images[module]:
            problems.append(f"{doc['metadata']['name']}: image {container['image']}, compose builds {images[module]}")
    (e_doc, editor), (t_doc, ts) = ours[EDITOR], ours[TORCHSERVE]
    e_env, t_env, w_env = (plain_env(ours[m][1]) for m in (EDITOR, TORCHSERVE, WORKER))
    port = int(e_env.get("FACEEDIT_PORT", EditorConfig().port))
    if container_port(editor, "grpc") != port:
        problems.append(f"editor's grpc containerPort is not FACEEDIT_PORT {port}")
    probes = {kind: editor.get(kind) or {} for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    if (probes["readinessProbe"].get("grpc") or {}).get("port") != port or probes["readinessProbe"]["grpc"].get(
            "service", ""):
        problems.append("editor readiness is not grpc health ('') on its port")
    for kind in ("livenessProbe", "startupProbe"):
        grpc_probe = probes[kind].get("grpc") or {}
        if grpc_probe.get("port") != port or grpc_probe.get("service") != LIVENESS_SERVICE:
            problems.append(f"editor {kind} is not grpc health {LIVENESS_SERVICE!r} on its port")
    # Services route to the ports the processes listen on.
    for service in find(docs, "Service"):
        for module, (doc, container) in ours.items():
            if selects(service["spec"]["selector"], doc):
                for p in service["spec"]["ports"]:
                    if container_port(container, p.get("targetPort", p["port"])) is None:
                        problems.append(f"Service {service['metadata']['name']} targets {p} that no container has")
    target = e_env.get("FACEEDIT_TORCHSERVE_TARGET", EditorConfig().torchserve_target)
    host, ts_port = target.removeprefix("dns:///").rsplit(":", 1)
    ts_service = find(docs, "Service", host)
    # Per-call balancing needs every replica's address: a headless Service resolved by gRPC's DNS.
    if ts_service and (not target.startswith("dns:///") or ts_service[0]["spec"].get("clusterIP") != "None"):
        problems.append(f"editor calls {target}: balance per call over a headless Service with dns:///")
    grpc_port = int(t_env.get("FACEEDIT_TS_GRPC_PORT", -1))
    if not ts_service or not selects(ts_service[0]["spec"]["selector"], t_doc) or not any(
            p["port"] == int(ts_port) and container_port(ts, p.get("targetPort", p["port"])) == grpc_port
            for p in ts_service[0]["spec"]["ports"]):
        problems.append(f"editor calls {target}, which is not TorchServe's gRPC inference port {grpc_port}")
    problems += editor_worker_problems(e_env, w_env)
    for key in ("FACEEDIT_REDIS_URL", "FACEEDIT_REDIS_NAMESPACE", "FACEEDIT_ARTIFACT_STORE_URL", "FACEEDIT_MODELS"):
        if len({e_env.get(key), t_env.get(key), w_env.get(key)}) != 1:
            problems.append(f"{key} differs between editor, TorchServe and worker")
    # Redis: a StatefulSet with a claim, AOF and noeviction, behind the Service the URL names.
    url = urlparse(e_env.get("FACEEDIT_REDIS_URL", "").replace("$(REDIS_PASSWORD)", "x"))
    redis_service = find(docs, "Service", url.hostname)
    sets = [s for s in find(docs, "StatefulSet") if redis_service and selects(redis_service[0]["spec"]["selector"], s)]
    if not sets or not any(p["port"] == url.port == 6379 for p in redis_service[0]["spec"]["ports"]):
        problems.append(f"FACEEDIT_REDIS_URL host {url.hostname!r} is no Service of a Redis StatefulSet on 6379")
    else:
        redis = sets[0]["spec"]["template"]["spec"]["containers"][0]
        problems += redis_args_problems(redis.get("args", []), "k8s redis")
        claims = {c["metadata"]["name"] for c in sets[0]["spec"].get("volumeClaimTemplates", [])}
        data_dir = redis["args"][redis["args"].index("--dir") + 1] if "--dir" in redis.get("args", []) else "/data"
        if not any(m["mountPath"] == data_dir and m["name"] in claims for m in redis.get("volumeMounts", [])):
            problems.append(f"k8s redis keeps {data_dir} on no PersistentVolumeClaim")
    # The artifact store: one ReadWriteMany claim mounted where FACEEDIT_ARTIFACT_STORE_URL points.
    store = urlparse(e_env.get("FACEEDIT_ARTIFACT_STORE_URL", ""))
    pvcs = {p["metadata"]["name"]: p for p in find(docs, "PersistentVolumeClaim")}
    for module, (doc, container) in ours.items():
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == store.path), None)
        claim = (volumes.get(mount["name"], {}).get("persistentVolumeClaim") or {}).get("claimName") if mount else None
        if store.scheme != "file" or claim not in pvcs or "ReadWriteMany" not in pvcs[claim]["spec"]["accessModes"]:
            problems.append(f"{doc['metadata']['name']}: artifact store {store.geturl()} is on no ReadWriteMany claim")
    # API keys come from a Secret mounted as the file the editor reads.
    keys = Path(e_env.get("FACEEDIT_API_KEYS_FILE", "/missing"))
    volumes = {v["name"]: v for v in e_doc["spec"]["template"]["spec"].get("volumes", [])}
    mount = next((m for m in editor.get("volumeMounts", []) if m["mountPath"] == str(keys.parent)), None)
    secret = (volumes.get(mount["name"], {}).get("secret") or {}) if mount else {}
    secrets = {s["metadata"]["name"]: s for s in find(docs, "Secret")}
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    if secret.get("secretName") not in secrets or items.get(keys.name) not in secrets[secret["secretName"]].get(
            "stringData", {}):
        problems.append(f"editor's FACEEDIT_API_KEYS_FILE {keys} is not a key of a Secret mounted there")
    for module, (doc, container) in ours.items():
        for item in container.get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], {}).get("stringData", {}):
                problems.append(f"{doc['metadata']['name']}: {item['name']} reads a missing secret key {ref}")
    return problems


def k8s_exposure_problems(docs: list[dict]) -> list[str]:
    """GPUs requested where the models run; TorchServe's management never in a Service, a container
    port or a NetworkPolicy, and its inference port reachable only from the editor."""
    problems = []
    ours = workloads(docs)
    for module in (TORCHSERVE, WORKER):
        doc, container = ours[module]
        resources = container.get("resources", {})
        limit, request = resources.get("limits", {}).get(GPU), resources.get("requests", {}).get(GPU)
        if not limit or int(limit) < 1 or (request is not None and request != limit):
            problems.append(f"{doc['metadata']['name']}: no {GPU} request/limit")
    if GPU in str(ours[EDITOR][1].get("resources")):
        problems.append("editor requests a GPU it never uses")
    t_doc, ts = ours[TORCHSERVE]
    env = plain_env(ts)
    private = private_torchserve_ports(env)
    grpc_port = int(env["FACEEDIT_TS_GRPC_PORT"])
    if {p["containerPort"] for p in ts.get("ports", [])} != {grpc_port}:
        problems.append(f"torchserve declares container ports {ts.get('ports')}, expected only {grpc_port}")
    for service in find(docs, "Service"):
        for p in service["spec"]["ports"]:
            if selects(service["spec"]["selector"], t_doc) and (
                    p["port"] in private or container_port(ts, p.get("targetPort", p["port"])) in private):
                problems.append(f"Service {service['metadata']['name']} exposes a private TorchServe port {p}")
    props = torchserve_properties(env)
    if not (props["management_address"].startswith("http://127.0.0.1:") and props["grpc_management_address"] ==
            "127.0.0.1" and props["enable_model_api"] == "false"):
        problems.append("TorchServe management is not loopback-only with registration off")
    editor_labels = ours[EDITOR][0]["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in find(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"].get("matchLabels", {}), t_doc)]
    if not policies:
        problems.append("no NetworkPolicy selects TorchServe's pods")
    for policy in policies:
        if "Ingress" not in policy["spec"].get("policyTypes", []):
            problems.append(f"NetworkPolicy {policy['metadata']['name']} does not restrict ingress")
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not ports or ports - {grpc_port, "grpc-inference"}:
                problems.append(f"NetworkPolicy {policy['metadata']['name']} lets in more than port {grpc_port}")
            sources = rule.get("from", [])
            if not sources or not all(set(s) == {"podSelector"} and all(
                    editor_labels.get(k) == v for k, v in s["podSelector"].get("matchLabels", {}).items())
                    and s["podSelector"].get("matchLabels") for s in sources):
                problems.append(f"NetworkPolicy {policy['metadata']['name']} admits more than the editor's pods")
    return problems


def kustomization_problems(listed: list[str]) -> list[str]:
    files = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    return [f"{name}: in deploy/k8s but not in kustomization.yaml" for name in sorted(files - set(listed))] + \
           [f"{name}: listed but missing" for name in sorted(set(listed) - files)]


def test_k8s_manifests_parse_and_kustomization_lists_them_all():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization_problems(kustomization["resources"]) == []
    docs = k8s()
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    assert {d["kind"] for d in docs} >= {"Namespace", "Secret", "PersistentVolumeClaim", "Service", "StatefulSet",
                                         "Deployment", "NetworkPolicy"}
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {find(docs, "Namespace")[0]["metadata"]["name"]}


def test_k8s_containers_run_real_modules_with_env_the_code_reads():
    assert k8s_env_problems(k8s()) == []


def test_k8s_wiring_matches_the_code():
    assert k8s_wiring_problems(k8s()) == []


def test_k8s_gpus_probes_and_what_torchserve_exposes():
    assert k8s_exposure_problems(k8s()) == []


def _k8s_set(kind: str, name: str, path: str, value: Any) -> Callable[[list], None]:
    def mutate(docs: list) -> None:
        _set(path, value)(find(docs, kind, name)[0])
    return mutate


TS_CONTAINER = "spec/template/spec/containers/0"
EDITOR_CONTAINER = "spec/template/spec/containers/0"


@pytest.mark.parametrize("check, mutate", [
    (k8s_env_problems, _k8s_set("Deployment", "faceedit-editor", f"{EDITOR_CONTAINER}/env/3/name", "FACEEDIT_ARTIFACTS")),
    (k8s_env_problems, _k8s_set("Deployment", "faceedit-worker", "spec/template/spec/containers/0/env/0/name", "PASS")),
    (k8s_env_problems, _k8s_set("Deployment", "faceedit-torchserve", f"{TS_CONTAINER}/args/3", "start-ish")),
    (k8s_wiring_problems, _k8s_set("Deployment", "faceedit-editor", f"{EDITOR_CONTAINER}/readinessProbe/grpc/port",
                                   50052)),
    (k8s_wiring_problems, _k8s_set("Deployment", "faceedit-editor", f"{EDITOR_CONTAINER}/livenessProbe/grpc/service",
                                   "")),
    (k8s_wiring_problems, _k8s_set("Deployment", "faceedit-editor", f"{EDITOR_CONTAINER}/image", "faceedit/editor:0")),
    (k8s_wiring_problems, _k8s_set("Service", "faceedit-torchserve", "spec/ports/0/targetPort", "grpc")),
    (k8s_wiring_problems, _k8s_set("StatefulSet", "faceedit-redis", "spec/template/spec/containers/0/args/7",
                                   "allkeys-lru")),
    (k8s_wiring_problems, _k8s_set("StatefulSet", "faceedit-redis", "spec/volumeClaimTemplates", [])),
    (k8s_wiring_problems, _k8s_set("PersistentVolumeClaim", "faceedit-artifacts", "spec/accessModes",
                                   ["ReadWriteOnce"])),
    (k8s_wiring_problems, _k8s_set("Secret", "faceedit-secrets", "stringData/api_keys.json", None)),
    (k8s_exposure_problems, _k8s_set("Deployment", "faceedit-worker",
                                     "spec/template/spec/containers/0/resources/limits", {"memory": "16Gi"})),
    (k8s_exposure_problems, _k8s_set("Deployment", "faceedit-torchserve", f"{TS_CONTAINER}/ports/0/containerPort",
                                     8081)),
    (k8s_exposure_problems, _k8s_set("Service", "faceedit-torchserve", "spec/ports/0/port", 8081)),
    (k8s_exposure_problems, _k8s_set("NetworkPolicy", "faceedit-torchserve", "spec/ingress/0/ports", [])),
    (k8s_exposure_problems, _k8s_set("NetworkPolicy", "faceedit-torchserve", "spec/ingress/0/from", [])),
    (k8s_exposure_problems, _k8s_set("NetworkPolicy", "faceedit-torchserve", "spec/ingress/0/ports/0/port", 8081)),
])
def test_the_k8s_checks_fail_on_a_broken_copy(check, mutate):
    docs = k8s()
    mutate(docs)
    assert check(docs)


def test_the_kustomization_check_fails_when_a_file_is_left_out():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert kustomization_problems([n for n in listed if n != "networkpolicy.yaml"])
    assert kustomization_problems([*listed, "missing.yaml"])


# ---------------------------------------------------------------------------------------------------
# The TorchServe container's command, run for real


@pytest.mark.integration
@pytest.mark.slow
def test_the_torchserve_container_command_serves_until_sigterm(tiny_models, redis_server, tmp_path):
    """Compose's own command and env (ports moved to free ones, paths to tmp, loopback) start TorchServe in
    the foreground; its healthcheck command turns healthy; SIGTERM stops the whole process group, exit 0."""
    from services.common.redis_server import free_port
    from services.inference.archive import build_archive

    service = compose()["services"][by_module(compose()["services"])[TORCHSERVE]]
    env = {k: str(v) for k, v in service["environment"].items()}
    store = tmp_path / "store"
    build_archive("generator", store, settings={"models": str(tiny_models["models"])})
    build_archive("encoder", store, settings={"models": str(tiny_models["models"])})
    env.update({k: str(free_port()) for k in env if k.startswith("FACEEDIT_TS_") and k.endswith("_PORT")})
    env.update(FACEEDIT_TS_HOST="127.0.0.1", FACEEDIT_TS_MODEL_STORE=str(store),
               FACEEDIT_TS_WORKDIR=str(tmp_path / "ts"), FACEEDIT_REDIS_URL=redis_server.url,
               FACEEDIT_ARTIFACT_STORE_URL=f"file://{tmp_path / 'artifacts'}",
               FACEEDIT_MODELS=str(tiny_models["models"]))  # the image's /app path, here
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    argv = [sys.executable if a == "python" else a for a in service["command"]]
    health = [sys.executable if a == "python" else a for a in service["healthcheck"]["test"][1:]]
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        assert subprocess.run(health, cwd=REPO, env=full_env, timeout=60).returncode != 0  # not up yet
        deadline = time.monotonic() + 400
        while subprocess.run(health, cwd=REPO, env=full_env, timeout=60).returncode != 0:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "TorchServe never turned healthy"
            time.sleep(2)
        state = json.loads((tmp_path / "ts" / "server.json").read_text())
        assert state["grpc_port"] == int(env["FACEEDIT_TS_GRPC_PORT"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        with pytest.raises(ProcessLookupError):  # TorchServe's Java and Python workers are gone too
            os.killpg(state["pgid"], 0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
