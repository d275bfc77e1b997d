"""Prometheus metrics of the editor: per-RPC and per-stage latency, cache hits, queue depth."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# Edits of a 64 px demo face take milliseconds; a 1024 px generator on CPU takes seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EditorMetrics:
    """One registry per server instance, so tests can run several servers in one process."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rpc_seconds = Histogram("faceedit_editor_rpc_seconds", "RPC latency by method and status code",
                                     ["method", "code"], buckets=_BUCKETS, registry=r)
        self.stage_seconds = Histogram("faceedit_editor_stage_seconds", "Latency of one stage inside an RPC",
                                       ["stage"], buckets=_BUCKETS, registry=r)
        self.cache = Counter("faceedit_editor_latent_cache_total", "Latent cache lookups", ["result"], registry=r)
        self.in_flight = Gauge("faceedit_editor_rpcs_in_flight", "RPCs being served", registry=r)
        self.queue_depth = Gauge("faceedit_editor_adaptation_queue_depth",
                                 "Adaptation tasks waiting in the broker queue", registry=r)
        self.serving = Gauge("faceedit_editor_serving", "1 when TorchServe and Redis answer", registry=r)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)

    def count_cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def observe_stage(self, name: str, seconds: float) -> None:
        """A stage timed elsewhere: `inference.handler` is the model handler's own time as it reports it,
        within inference.synthesize (the difference is TorchServe's queue, batching delay and transport)."""
        self.stage_seconds.labels(name).observe(seconds)

    def set_queue_depth_source(self, read: Callable[[], float]) -> None:
        """Read the depth at scrape time (a Redis LLEN), so it is never stale."""
        self.queue_depth.set_function(read)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
