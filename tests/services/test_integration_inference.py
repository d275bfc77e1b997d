"""Real TorchServe, tiny archives, random loopback ports: gRPC round trips, a bad request in a batch, adapted ids."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.images import to_pil
from faceedit.models import load_generator
from services.common import protocol
from services.common.artifacts import LocalArtifactStore
from services.common.registry import GeneratorIndex, save_adapted_generator
from services.inference.archive import build_archive
from services.inference.server import TorchServe, TorchServeConfig

pytestmark = [pytest.mark.integration, pytest.mark.inference]


@pytest.fixture(scope="module")
def ts_pb():
    """TorchServe's inference stubs as the editor uses them (`make protos` builds them): one copy per
    process, since protobuf refuses a second registration of the same messages."""
    from services.common.ts_grpc import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="module")
def served(tiny_models, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve")
    # A long batch delay so that concurrent requests land in one handle() call.
    build_archive("generator", root / "store", settings={"models": str(tiny_models["models"])},
                  torchserve={"maxBatchDelay": 300})
    build_archive("encoder", root / "store", settings={"models": str(tiny_models["models"])})
    env = {"FACEEDIT_REDIS_URL": redis_server.url, "FACEEDIT_ARTIFACT_STORE_URL": f"file://{root / 'artifacts'}",
           "FACEEDIT_REDIS_NAMESPACE": f"ts-{uuid.uuid4().hex[:8]}"}
    # Token auth on although it is loopback: the default beyond loopback, so that path is the one tested
    # here (the editor's stack test runs the loopback default, auth off).
    server = TorchServe(TorchServeConfig(model_store=str(root / "store"), workdir=str(root / "ts"), token_auth=True),
                        env=env)
    server.start()
    pgid = server.pgid
    try:
        yield server, env
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):  # nothing of the process group survives stop()
        os.killpg(pgid, 0)
    if server.tmp_dir.parent != server.workdir.resolve():  # a deep work dir's short TMPDIR is removed too
        assert not server.tmp_dir.exists()


@pytest.fixture(scope="module")
def stub(served, ts_pb):
    server, _ = served
    channel = grpc.insecure_channel(server.grpc_target)
    yield ts_pb[0], ts_pb[1].InferenceAPIsServiceStub(channel), [("authorization", f"Bearer {server.inference_key()}")]
    channel.close()


def predict(stub, model: str, body: bytes) -> bytes:
    pb, client, metadata = stub
    request = pb.PredictionsRequest(model_name=model, input={"data": body})
    return client.Predictions(request, timeout=60, metadata=metadata).prediction


def test_calls_without_the_inference_key_are_refused(stub, base):
    pb, client, _ = stub
    request = pb.PredictionsRequest(model_name="generator",
                                    input={"data": protocol.encode_generate_request("tiny", latents(base, 1, 0))})
    with pytest.raises(grpc.RpcError) as info:
        client.Predictions(request, timeout=60, metadata=[("authorization", "Bearer wrong")])
    assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def latents(base, batch: int, seed: int) -> np.ndarray:
    z = torch.randn(batch, base.style_dim, generator=torch.Generator().manual_seed(seed))
    return base.broadcast(base.mapping(z)).detach().numpy().copy()


@pytest.fixture(scope="module")
def base(tiny_models):
    return load_generator(tiny_models["generator"])


def test_generate_then_invert_round_trip_over_grpc(stub, base):
    ws = latents(base, 2, 0)
    body = predict(stub, "generator", protocol.encode_generate_request("tiny", ws))
    response = protocol.decode_generate_response(body)
    assert response.size == 32 and len(response.images) == 2
    served_pixels = np.asarray(Image.open(io.BytesIO(response.images[0])).convert("RGB"), dtype=np.int16)
    local_pixels = np.asarray(to_pil(base.synthesis(torch.from_numpy(ws[:1])))[0], dtype=np.int16)
    assert np.abs(served_pixels - local_pixels).max() <= 1

    inverted = protocol.decode_invert_response(
        predict(stub, "encoder", protocol.encode_invert_request(response.images[0], return_aligned=True)))
    assert inverted.ws.shape == (1, base.n_latent, base.style_dim) and np.isfinite(inverted.ws).all()
    assert Image.open(io.BytesIO(inverted.aligned)).size == (32, 32)
    again = protocol.decode_generate_response(
        predict(stub, "generator", protocol.encode_generate_request("tiny", inverted.ws, image_format="jpeg")))
    assert Image.open(io.BytesIO(again.images[0])).format == "JPEG"


def test_a_bad_request_in_a_batch_fails_alone(stub, base):
    good = [protocol.encode_generate_request("tiny", latents(base, 1, seed)) for seed in range(3)]
    bad = protocol.encode_generate_request("tiny", np.zeros((1, 3, base.style_dim), np.float32))
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda body: predict(stub, "generator", body), [good[0], bad, good[1], good[2]]))
    with pytest.raises(InvalidInputError) as info:
        protocol.decode_generate_response(bodies[1])
    assert info.value.field == "ws"
    for body in (bodies[0], bodies[2], bodies[3]):
        assert len(protocol.decode_generate_response(body).images) == 1


def test_adapted_generator_is_served_by_id_to_its_tenant(served, stub, base, redis_client):
    _, env = served
    store = LocalArtifactStore(env["FACEEDIT_ARTIFACT_STORE_URL"].removeprefix("file://"))
    index = GeneratorIndex(redis_client, store, env["FACEEDIT_REDIS_NAMESPACE"])
    weight = base.state_dict()["convs.0.conv.weight"]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    record = save_adapted_generator(store, index, "acme", "tiny", {"convs.0.conv.weight": weight + noise},
                                    base=base)
    ws = latents(base, 1, 0)
    adapted = protocol.decode_generate_response(
        predict(stub, "generator", protocol.encode_generate_request(record.id, ws, tenant="acme")))
    plain = protocol.decode_generate_response(predict(stub, "generator", protocol.encode_generate_request("tiny", ws)))
    assert adapted.images[0] != plain.images[0]
    with pytest.raises(NotFoundError):
        protocol.decode_generate_response(
            predict(stub, "generator", protocol.encode_generate_request(record.id, ws, tenant="intruder")))


def test_only_inference_is_reachable_and_registration_is_off(served):
    server, _ = served
    properties = (Path(server.config.workdir) / "config.properties").read_text()
    assert "management_address=http://127.0.0.1:" in properties and "enable_model_api=false" in properties
    keys = json.loads((Path(server.config.workdir) / "key_file.json").read_text())
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.config.management_port}/models?url=http://example.invalid/x.mar", method="POST",
        headers={"Authorization": f"Bearer {keys['management']['key']}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405  # authenticated, and still refused: registration is off
