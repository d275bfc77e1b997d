"""Editor server: builds the core from EditorConfig, serves Editor + Adaptation + health + reflection on gRPC."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faceedit.errors import FaceEditError
from faceedit_client.v1 import (
    adaptation_pb2,
    adaptation_pb2_grpc,
    editor_pb2,
    editor_pb2_grpc,
)
from services.common.latent_cache import LatentCache
from services.common.models import ModelConfig, load_model_config
from services.common.photos import PhotoStore
from services.common.recovery import RecoveryWatch
from services.editor.adaptation import AdaptationCore
from services.editor.adapters import TaskQueue
from services.editor.auth import ApiKeys
from services.editor.boundaries import BoundaryRegistry
from services.editor.catalog import BaseGenerator, GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.inference import Inference, TorchServeInference
from services.editor.metrics import EditorMetrics
from services.editor.probe import LIVENESS_SERVICE
from services.editor.servicer import AdaptationServicer, EditorServicer
from services.editor.text_edits import TextEdits

log = logging.getLogger("faceedit.editor")

SERVICE_NAMES = (editor_pb2.DESCRIPTOR.services_by_name["Editor"].full_name,
                 adaptation_pb2.DESCRIPTOR.services_by_name["Adaptation"].full_name)


def load_bases(models: ModelConfig) -> dict[str, BaseGenerator]:
    return {gid: BaseGenerator.load(gid, spec.checkpoint, spec.family) for gid, spec in models.generators.items()}


def load_boundaries(models: ModelConfig, bases: dict[str, BaseGenerator]) -> BoundaryRegistry:
    """Every family's boundary sets, checked against its latent space; any unusable file stops the start."""
    registry = BoundaryRegistry()
    for family, spec in models.families.items():
        base = next(b for b in bases.values() if b.family == family)
        boundaries = BoundaryRegistry.read_sets(models.boundary_specs(family), base)
        if spec.sefa:  # closed-form directions of the family's (first) generator's weights
            from faceedit.editing import BoundarySet
            from faceedit.editing.unsupervised import sefa_entries
            from faceedit.models import load_generator

            checkpoint = models.generators[base.id].checkpoint
            boundaries = BoundarySet([*boundaries.entries, *sefa_entries(load_generator(checkpoint), spec.sefa,
                                                                          source=checkpoint.name)])
        registry.add_family(family, boundaries)
        log.info(json.dumps({"event": "boundaries", "family": family,
                             "attributes": registry.attributes(family).names()}))
    return registry


class HealthMonitor:
    """NOT_SERVING until TorchServe and Redis answer; then re-checked every interval."""

    def __init__(self, servicer: health.HealthServicer, inference: Inference, redis_client: object,
                 metrics: EditorMetrics, interval_s: float, warmup: Callable[[], object] | None = None):
        self.servicer = servicer
        self.inference = inference
        self.redis = redis_client
        self.metrics = metrics
        self.interval_s = interval_s
        self.warmup = warmup  # one real inference: TorchServe pings Healthy before its workers load
        self._warm = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self.serving = False
        self._set(False)

    def _set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            self.servicer.set(name, status)
        self.metrics.serving.set(1 if serving else 0)
        if serving != self.serving:
            log.info(json.dumps({"event": "health", "serving": serving}))
        self.serving = serving

    def check(self) -> bool:
        try:
            redis_ok = bool(self.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            redis_ok = False
        ts_ok = redis_ok and self.inference.ping()
        if ts_ok and not self._warm and self.warmup is not None:
            try:
                self.warmup()
                self._warm = True
            except Exception as exc:  # noqa: BLE001
                log.info(json.dumps({"event": "warmup", "error": type(exc).__name__}))
                ts_ok = False
        self._set(redis_ok and ts_ok)
        return self.serving

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.interval_s if self.serving else min(self.interval_s, 0.5))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._set(False)


class EditorServer:
    """Everything one editor process runs; `start()` binds, `stop()` drains and closes."""

    def __init__(self, config: EditorConfig, inference: Inference | None = None,
                 bases: dict[str, BaseGenerator] | None = None,
                 boundaries: BoundaryRegistry | None = None, models: ModelConfig | None = None):
        import redis

        from services.common.artifacts import open_artifact_store
        from services.common.jobs import JobStore
        from services.common.registry import GeneratorIndex

        self.config = config
        self.metrics = EditorMetrics()
        self.keys = ApiKeys.load(config.api_keys_file, config.api_keys)
        if not len(self.keys):
            log.warning(json.dumps({"event": "auth", "warning": "no API keys configured: every call is refused"}))
        self.redis = redis.Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.store = open_artifact_store(config.artifact_store_url)
        self.index = GeneratorIndex(self.redis, self.store, config.redis_namespace)
        self.jobs = JobStore(self.redis, config.redis_namespace)
        self.inference = inference or TorchServeInference(
            config.torchserve_target, config.generator_model, config.encoder_model, config.inference_timeout_s,
            token=config.torchserve_token, key_file=config.torchserve_key_file,
            max_message_bytes=config.max_message_bytes)
        self.models = models or load_model_config(config.models or None)
        if bases is None:
            bases = load_bases(self.models)
        self.catalog = GeneratorCatalog(bases, self.models.default_generator, self.index)
        self.boundaries = boundaries if boundaries is not None else load_boundaries(self.models, bases)
        self.cache = LatentCache(self.redis, config.latent_ttl_s, config.redis_namespace,
                                 self.metrics.count_cache_lookup)
        self.photos = PhotoStore(self.store)
        self.queue = TaskQueue(config.broker, config.queue, config.task_name)
        self.editor = EditorCore(self.catalog, self.boundaries, self.cache, self.inference, config, self.metrics,
                                 encoder_family=self.models.encoder_family, photos=self.photos,
                                 text_edits=TextEdits(self.store, self.models.text_clip))
        self.adaptation = AdaptationCore(self.catalog, self.jobs, self.index, self.store, self.queue, config,
                                         cache=self.cache, photos=self.photos)
        self.metrics.set_queue_depth_source(self._queue_depth)
        self.recovery = RecoveryWatch(self.jobs, self.queue.submit, config.job_check_interval_s, self.index,
                                      photos=self.photos)

        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                             thread_name_prefix="rpc"), options=options)
        editor_pb2_grpc.add_EditorServicer_to_server(EditorServicer(self.editor, self.keys, self.metrics),
                                                     self.server)
        adaptation_pb2_grpc.add_AdaptationServicer_to_server(
            AdaptationServicer(self.adaptation, self.keys, self.metrics), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self.monitor = HealthMonitor(self.health, self.inference, self.redis, self.metrics,
                                     config.health_interval_s, warmup=self.editor.warm_up)
        self.port = 0

    def _queue_depth(self) -> float:
        try:
            return float(self.redis.llen(self.config.queue))
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            return float("nan")

    def start(self) -> int:
        self.port = self.server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if not self.port:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        self.server.start()
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.monitor.start()
        self.recovery.start()
        if self.config.metrics_port:
            self.metrics.serve(self.config.host, self.config.metrics_port)
        if self.config.port_file:
            tmp = Path(self.config.port_file + ".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.config.port_file)  # readers never see a half-written file
        log.info(json.dumps({"event": "listening", "address": f"{self.config.host}:{self.port}"}))
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.monitor.stop()
        self.recovery.stop()
        self.server.stop(grace).wait()
        self.inference.close()
        self.redis.close()


class _JsonFormatter(logging.Formatter):
    """Structured logs: one JSON object per line; messages that are JSON already are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        message = record.getMessage()
        try:
            parsed = json.loads(message)
            out.update(parsed if isinstance(parsed, dict) else {"message": message})
        except ValueError:
            out["message"] = message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


# glibc's mallopt(M_MMAP_THRESHOLD): allocations of at least this size get their own mapping.
_M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION_BYTES = 1 << 20


def return_large_blocks_to_os(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Every block of `threshold` bytes or more is mmapped, and unmapped when freed.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB): after one
    oversize upload, the next ones (each request is copied ~3 times: gRPC's buffer, the parsed message, the
    bytes field) are carved from the RPC threads' arenas, whose pages stay with the process. A burst of
    17 MiB uploads, all refused, left the editor ~300 MB larger for good, which a container's memory
    limit counts. False where the C library has no mallopt (musl, macOS): nothing changes there."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)  # every setting comes from FACEEDIT_* environment variables
    setup_logging(os.environ.get("FACEEDIT_LOG_LEVEL", "INFO"))
    return_large_blocks_to_os()  # before the server allocates anything
    import torch

    torch.set_num_threads(1)  # the mapping MLP is tiny; never compete with TorchServe for cores
    try:
        server = EditorServer(EditorConfig.from_env())
        server.start()
    except (FaceEditError, OSError) as exc:  # misconfiguration: say what, without a traceback
        log.error(json.dumps({"event": "startup failed", "error": str(exc)}))
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info(json.dumps({"event": "stopping"}))
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
