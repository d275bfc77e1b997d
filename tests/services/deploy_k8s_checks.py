"""The k8s half of tests/services/test_deploy.py's checks: deploy/k8s workloads, wiring, exposure, kustomization."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from services.editor.config import EditorConfig
from services.editor.probe import LIVENESS_SERVICE

from deploy_checks import (
    EDITOR,
    GPU,
    K8S,
    TORCHSERVE,
    WORKER,
    by_module,
    command_problems,
    compose,
    env_problems,
    find,
    module_of,
    private_torchserve_ports,
    redis_args_problems,
    shared_env_problems,
)

# ---------------------------------------------------------------------------------------------------
# deploy/k8s


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


def mounted(doc: Mapping, container: Mapping, path: str, source: str) -> dict:
    """The `source` (persistentVolumeClaim, secret) of the pod volume mounted at path, {} if none."""
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == path), None)
    return (volumes.get(mount["name"], {}).get(source) or {}) if mount else {}


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
    ours = workloads(docs)
    if set(ours) != {EDITOR, TORCHSERVE, WORKER}:
        return [f"deploy/k8s runs {sorted(ours)}, expected the editor, TorchServe and a worker"]
    problems = []
    images = {module: compose()["services"][name]["image"] for module, name in by_module(compose()["services"]).items()}
    for module, (doc, container) in ours.items():
        if container["image"] != images[module]:
            problems.append(f"{doc['metadata']['name']}: image {container['image']}, compose builds {images[module]}")
    (e_doc, editor), (t_doc, ts) = ours[EDITOR], ours[TORCHSERVE]
    envs = {m: plain_env(ours[m][1]) for m in (EDITOR, TORCHSERVE, WORKER)}
    e_env, t_env = envs[EDITOR], envs[TORCHSERVE]
    problems += shared_env_problems(envs)
    port = int(e_env.get("FACEEDIT_PORT", EditorConfig().port))
    if container_port(editor, "grpc") != port:
        problems.append(f"editor's grpc containerPort is not FACEEDIT_PORT {port}")
    probes = {kind: (editor.get(kind) or {}).get("grpc") or {} for kind in ("readinessProbe", "livenessProbe",
                                                                           "startupProbe")}
    if probes["readinessProbe"].get("port") != port or probes["readinessProbe"].get("service", ""):
        problems.append("editor readiness is not grpc health ('') on its port")
    for kind in ("livenessProbe", "startupProbe"):
        if probes[kind].get("port") != port or probes[kind].get("service") != LIVENESS_SERVICE:
            problems.append(f"editor {kind} is not grpc health {LIVENESS_SERVICE!r} on its port")
    # Services route to the ports the processes listen on.
    for service in find(docs, "Service"):
        for _module, (doc, container) in ours.items():
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
    for _module, (doc, container) in ours.items():
        claim = mounted(doc, container, store.path, "persistentVolumeClaim").get("claimName")
        if store.scheme != "file" or claim not in pvcs or "ReadWriteMany" not in pvcs[claim]["spec"]["accessModes"]:
            problems.append(f"{doc['metadata']['name']}: artifact store {store.geturl()} is on no ReadWriteMany claim")
    # API keys come from a Secret mounted as the file the editor reads.
    keys = Path(e_env.get("FACEEDIT_API_KEYS_FILE", "/missing"))
    secret = mounted(e_doc, editor, str(keys.parent), "secret")
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in find(docs, "Secret")}
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    if items.get(keys.name) not in secrets.get(secret.get("secretName"), {}):
        problems.append(f"editor's FACEEDIT_API_KEYS_FILE {keys} is not a key of a Secret mounted there")
    for _module, (doc, container) in ours.items():
        for item in container.get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], {}):
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
    editor_labels = ours[EDITOR][0]["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in find(docs, "NetworkPolicy")
                if selects(p["spec"]["podSelector"].get("matchLabels", {}), t_doc)]
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
