"""Compose, Dockerfiles and deploy/k8s, checked without Docker or a cluster; every check also fails on a broken copy.

Schema and Dockerfile hygiene are the kept tools' job: kubernetes-validate --strict (bundled schemas, offline) on
the manifests, hadolint (.hadolint.yaml) on the Dockerfiles. By hand only what no tool can know: that the files
agree with the code (env names each process reads, commands, ports, probes, images, GPUs, what is exposed, and
the Redis, artifact store and model configuration the services share).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from deploy_checks import (
    DOCKERFILES,
    EDITOR,
    K8S,
    REPO,
    TORCHSERVE,
    WORKER,
    C,
    broken,
    by_module,
    compose,
    compose_exposure_problems,
    compose_problems,
    compose_wiring_problems,
    dockerfile_cmd,
    dockerfile_problems,
    find,
    hadolint,
    k8s,
    k8s_schema_problems,
    module_of,
    readers,
)
from deploy_k8s_checks import (
    k8s_env_problems,
    k8s_exposure_problems,
    k8s_wiring_problems,
    kustomization_problems,
)

CHECKS = [compose_problems, compose_wiring_problems, compose_exposure_problems,  # docker-compose.yml
          k8s_schema_problems, k8s_env_problems, k8s_wiring_problems, k8s_exposure_problems]  # deploy/k8s


def test_dockerfiles_pass_hadolint():
    assert hadolint(*DOCKERFILES) == []


def test_every_rule_hadolint_yaml_accepts_still_fires(tmp_path):
    """An accepted rule with nothing left to accept goes, instead of hiding the next finding."""
    (tmp_path / "empty.yaml").write_text("{}\n")
    fired = {finding.split()[1] for finding in hadolint(*DOCKERFILES, config=tmp_path / "empty.yaml")}
    assert set(yaml.safe_load((REPO / ".hadolint.yaml").read_text())["ignored"]) <= fired


def test_the_readers_are_what_the_config_classes_read():
    """Guards the recording trick itself: known names of each service are found, and not across services."""
    r = readers()
    assert {"FACEEDIT_PORT", "FACEEDIT_TORCHSERVE_TARGET", "FACEEDIT_API_KEYS_FILE", "FACEEDIT_LOG_LEVEL"} <= r[EDITOR]
    assert {"FACEEDIT_TS_GRPC_PORT", "FACEEDIT_TS_HOST", "FACEEDIT_REDIS_URL", "FACEEDIT_LRU_SIZE"} <= r[TORCHSERVE]
    assert {"FACEEDIT_REDIS_URL", "FACEEDIT_QUEUE", "FACEEDIT_VISIBILITY_TIMEOUT"} <= r[WORKER]
    assert "FACEEDIT_TS_HOST" not in r[EDITOR] and "FACEEDIT_PORT" not in r[WORKER]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_run_modules_with_env_they_read(path):
    assert dockerfile_problems(path) == []


def test_there_is_one_dockerfile_per_service():
    assert {p.name for p in DOCKERFILES} == {"editor.Dockerfile", "inference.Dockerfile", "worker.Dockerfile"}
    assert {module_of(dockerfile_cmd(p)) for p in DOCKERFILES} == {EDITOR, TORCHSERVE, WORKER}


@pytest.mark.parametrize("check, name, old, new", [
    (dockerfile_problems, "editor", "COPY services ./services", "COPY servicez ./services"),
    (dockerfile_problems, "editor", "COPY services ./services", "COPY deploy/secrets ./secrets"),
    (dockerfile_problems, "editor", "ENV PYTHONDONTWRITEBYTECODE=1",
     "ENV FACEEDIT_HOTS=0.0.0.0 PYTHONDONTWRITEBYTECODE=1"),
    (dockerfile_problems, "editor", '"services.editor.server"]', '"services.editor.serve"]'),
    (hadolint, "inference", "FROM python:3.11-slim-bookworm", "FROM python"),  # DL3006
    (hadolint, "inference", "--no-install-recommends ", ""),  # DL3015
    (hadolint, "inference", "&& rm -rf /var/lib/apt/lists/*", "&& true"),  # DL3009
    (hadolint, "worker", "USER 10001", "USER root"),  # DL3002
], ids=lambda v: v.__name__ if callable(v) else None)
def test_the_dockerfile_checks_fail_on_a_broken_copy(tmp_path, check, name, old, new):
    text = (REPO / "deploy" / "docker" / f"{name}.Dockerfile").read_text()
    assert old in text
    broken = tmp_path / f"{name}.Dockerfile"
    broken.write_text(text.replace(old, new))
    assert check(broken)


def test_kustomization_lists_every_manifest_and_all_share_one_namespace():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert kustomization_problems(listed) == []
    assert kustomization_problems([n for n in listed if n != "networkpolicy.yaml"])
    assert kustomization_problems([*listed, "missing.yaml"])
    docs = k8s()
    assert {d["kind"] for d in docs} >= {"Namespace", "Secret", "PersistentVolumeClaim", "Service", "StatefulSet",
                                         "Deployment", "NetworkPolicy"}
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {find(docs, "Namespace")[0]["metadata"]["name"]}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_deploy_files_pass_each_check(check):
    assert check(k8s() if check.__name__.startswith("k8s") else compose()) == []


@pytest.mark.parametrize("check, path, value", [
    (compose_problems, "services/worker/build", None),
    (compose_problems, "services/editor/environment/FACEEDIT_TS_HOST", "0.0.0.0"),
    (compose_problems, "services/worker/environment/FACEEDIT_REDIS_URLS", "redis://redis"),
    (compose_problems, "services/torchserve/command/3", "start-ish"),
    (compose_problems, "services/torchserve/healthcheck/test/4", "healthz"),
    (compose_problems, "services/worker/command/7", "cpu"),  # a queue the editor never sends to
    (compose_wiring_problems, "services/editor/healthcheck/test/4", "127.0.0.1:50052"),
    (compose_wiring_problems, "services/editor/environment/FACEEDIT_TORCHSERVE_TARGET", "torchserve:7071"),
    (compose_wiring_problems, "services/worker/environment/FACEEDIT_QUEUE", "cpu"),
    (compose_wiring_problems, "services/editor/environment/FACEEDIT_TASK_NAME", "faceedit.adopt"),
    (compose_wiring_problems, "services/redis/command/2", "no"),
    (compose_wiring_problems, "services/redis/volumes", []),
    (compose_wiring_problems, "services/worker/volumes", []),
    (compose_wiring_problems, "services/editor/environment/FACEEDIT_API_KEYS_FILE", "/etc/keys.json"),
    (compose_exposure_problems, "services/worker/deploy", None),
    (compose_exposure_problems, "services/torchserve/ports", ["8081:8081"]),
    (compose_exposure_problems, "services/torchserve/expose", ["7070", "8081"]),
    (compose_exposure_problems, "networks/backend/internal", False),
    (k8s_schema_problems, "Deployment:faceedit-editor/spec/replica", 2),  # strict: no unknown fields
    (k8s_schema_problems, f"Deployment:faceedit-torchserve/{C}/ports/0/containerPort", "7070"),
    (k8s_schema_problems, "Service:faceedit-editor/spec/ports/0/port", None),  # required
    (k8s_schema_problems, "StatefulSet:faceedit-redis/apiVersion", "apps/v1beta9"),
    (k8s_env_problems, f"Deployment:faceedit-editor/{C}/env/3/name", "FACEEDIT_ARTIFACTS"),
    (k8s_env_problems, f"Deployment:faceedit-worker/{C}/env/0/name", "PASS"),
    (k8s_env_problems, f"Deployment:faceedit-torchserve/{C}/args/3", "start-ish"),
    (k8s_env_problems, f"Deployment:faceedit-worker/{C}/command/9", "prefork"),
    (k8s_wiring_problems, f"Deployment:faceedit-editor/{C}/readinessProbe/grpc/port", 50052),
    (k8s_wiring_problems, f"Deployment:faceedit-editor/{C}/livenessProbe/grpc/service", ""),
    (k8s_wiring_problems, f"Deployment:faceedit-editor/{C}/image", "faceedit/editor:0"),
    (k8s_wiring_problems, "Service:faceedit-torchserve/spec/ports/0/targetPort", "grpc"),
    (k8s_wiring_problems, f"StatefulSet:faceedit-redis/{C}/args/7", "allkeys-lru"),
    (k8s_wiring_problems, "StatefulSet:faceedit-redis/spec/volumeClaimTemplates", []),
    (k8s_wiring_problems, "PersistentVolumeClaim:faceedit-artifacts/spec/accessModes", ["ReadWriteOnce"]),
    (k8s_wiring_problems, "Secret:faceedit-secrets/stringData/api_keys.json", None),
    (k8s_exposure_problems, f"Deployment:faceedit-worker/{C}/resources/limits", {"memory": "16Gi"}),
    (k8s_exposure_problems, f"Deployment:faceedit-torchserve/{C}/ports/0/containerPort", 8081),
    (k8s_exposure_problems, "Service:faceedit-torchserve/spec/ports/0/port", 8081),
    (k8s_exposure_problems, "NetworkPolicy:faceedit-torchserve/spec/ingress/0/ports", []),
    (k8s_exposure_problems, "NetworkPolicy:faceedit-torchserve/spec/ingress/0/from", []),
    (k8s_exposure_problems, "NetworkPolicy:faceedit-torchserve/spec/ingress/0/ports/0/port", 8081),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_each_check_fails_on_a_broken_copy(check, path, value):
    assert check(broken(k8s() if path[0].isupper() else compose(), path, value))


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
