"""`make demo`'s Redis (durable_redis_command, AOF everysec) SIGKILLed and restarted loses no job, index entry,
cached latent or idempotency key."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import redis

from services.common.artifacts import LocalArtifactStore
from services.common.jobs import JobStore
from services.common.latent_cache import LatentCache
from services.common.redis_server import durable_redis_command, free_port
from services.common.registry import GeneratorIndex, GeneratorRecord

pytestmark = pytest.mark.integration


def start(port: int, data_dir) -> subprocess.Popen:
    process = subprocess.Popen(durable_redis_command(port, data_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                return process
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)


def test_a_crash_and_restart_of_the_demo_redis_loses_nothing(tmp_path):
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    process = start(port, data)
    try:
        client = redis.Redis(port=port)
        jobs = JobStore(client, "fe")
        store = LocalArtifactStore(tmp_path / "artifacts")
        index = GeneratorIndex(client, store, "fe")
        cache = LatentCache(client, 3600, "fe")
        job, _ = jobs.create("acme", "demo", "targets/a.png", {}, idempotency_key="retry-me")
        jobs.start(job.id)
        record = GeneratorRecord(id="gen-1", tenant="acme", base_generator="demo", sha256="0" * 64, size_bytes=1,
                                 created=1.0, state="READY", artifact_key="generators/gen-1")
        index.add(record)
        latent = cache.put("acme", "demo", np.ones((1, 8, 64), np.float32))
        time.sleep(1.5)  # appendfsync everysec: what is a second old is on disk
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process = start(port, data)
        client = redis.Redis(port=port)
        jobs, cache = JobStore(client, "fe"), LatentCache(client, 3600, "fe")
        assert jobs.get(job.id, "acme").state == "RUNNING"
        again, created = jobs.create("acme", "demo", "targets/a.png", {}, idempotency_key="retry-me")
        assert not created and again.id == job.id  # a retry after the restart does not start a second job
        assert jobs.list("acme", limit=10)[0].id == job.id
        np.testing.assert_array_equal(cache.get("acme", latent.id, "latent_id")[1], np.ones((1, 8, 64)))
        assert GeneratorIndex(client, store, "fe").get("gen-1", "acme") == record
    finally:
        os.killpg(process.pid, signal.SIGKILL)
