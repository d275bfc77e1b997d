"""Fixtures for the service tests: a real Redis per session, isolated key namespaces, tiny seeded models."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
import torch
from safetensors.torch import save_file

from faceedit.models import Encoder, EncoderConfig, Generator, GeneratorConfig
from faceedit.training.encoder import export_e4e
from faceedit.training.generator import export_rosinality
from services.common.redis_server import RedisServer

TINY_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16}
# A 4-block ViT, so DIFA's default token block (3) exists; the text tower is never used by DIFA.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
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


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=2, channels=TINY_CHANNELS)).eval()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A seeded 32 px generator (rosinality .pt), a matching e4e encoder and a tiny CLIP (safetensors + card),
    written once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    generator = tiny_generator()
    export_rosinality(generator, root / "generator.pt", n_w_avg=2000)
    torch.manual_seed(1)
    encoder = Encoder(EncoderConfig(kind="e4e", n_styles=generator.n_latent, style_dim=64, input_size=32,
                                    stage_units=(1, 1, 1, 1), stage_channels=(8, 16, 24, 32),
                                    se_reduction=4)).eval()
    encoder.set_latent_avg(generator.w_avg.clone())
    export_e4e(encoder, generator, root / "encoder.pt")
    from faceedit.adaptation.clip import build_clip_module

    torch.manual_seed(2)
    clip = build_clip_module(TINY_CLIP)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip.safetensors"))
    (root / "clip.json").write_text(json.dumps({"model": "tiny test CLIP", "model_cfg": TINY_CLIP}))
    models = {"generator": root / "generator.pt", "encoder": root / "encoder.pt", "clip": root / "clip.safetensors"}
    from editor_fakes import write_models_file

    models["models"] = write_models_file(root / "models.yaml", models, generator_id="tiny")
    return models
