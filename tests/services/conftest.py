"""Fixtures for the service tests: a real Redis per session, isolated key namespaces, tiny seeded models."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
import torch

from services.common.artifacts import LocalArtifactStore
from services.common.redis_server import RedisServer
from services.common.registry import GeneratorIndex

from factories import write_tiny_models

# DIFA settings a worker uses in tests: a small source sample for the CLIP mean, a short code window.
TINY_DIFA_SETTINGS = {"clip_mean_samples": 4, "clip_mean_batch": 4, "sliding_window": 2}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One thread: OpenMP spin-waits make 2 threads far slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    """Each test writes under its own key prefix, so tests share one server without seeing each other."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A seeded 32 px generator (rosinality .pt), a matching e4e encoder and a tiny CLIP (safetensors + card),
    written once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    models = write_tiny_models(root)
    from editor_fakes import write_models_file

    models["models"] = write_models_file(root / "models.yaml", models, generator_id="tiny")
    return models


@pytest.fixture
def store(tmp_path):
    """An empty local artifact store."""
    return LocalArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def index(redis_client, store, namespace):
    """The adapted-generator index over `store`, in this test's namespace."""
    return GeneratorIndex(redis_client, store, namespace)
