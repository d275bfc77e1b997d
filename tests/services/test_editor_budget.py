"""Work sized to the caller's deadline (services/editor/budget.py) and Z-space boundaries in the editor core."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import torch

from faceedit.editing import BoundarySet, DirectionEntry
from faceedit.errors import InvalidInputError
from faceedit.models import load_generator
from faceedit.sampling import z_from_seeds
from services.common.errors import DeadlineError, TooLargeError
from services.common.latent_cache import LatentCache
from services.editor.boundaries import BoundaryRegistry
from services.editor.budget import RenderBudget
from services.editor.catalog import BaseGenerator, GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.inference import (
    CALLER_ACTIVE,
    CALLER_DEADLINE,
    TorchServeInference,
)
from services.editor.metrics import EditorMetrics
from services.editor.values import LatentSource, Step

from editor_fakes import FakeInference, boundary_set


@pytest.fixture
def deadline():
    """Set the current caller's remaining seconds, as the servicer does for each RPC."""
    tokens = []

    def set_remaining(seconds: float | None) -> None:
        tokens.append(CALLER_DEADLINE.set(None if seconds is None else time.monotonic() + seconds))

    yield set_remaining
    for token in reversed(tokens):
        CALLER_DEADLINE.reset(token)


def make_editor(tiny_models, redis_client, namespace, inference=None, budget=None, boundaries=None):
    base = BaseGenerator.load("demo", tiny_models["generator"])
    catalog = GeneratorCatalog({"demo": base}, "demo", None)
    rng = torch.Generator().manual_seed(3)
    normals = {name: torch.randn(64, generator=rng) for name in ("age", "smile")}
    registry = BoundaryRegistry({"demo": boundaries or boundary_set(normals)})
    cache = LatentCache(redis_client, 60, namespace, EditorMetrics().count_cache_lookup)
    inference = inference or FakeInference(tiny_models["generator"], tiny_models["encoder"])
    return EditorCore(catalog, registry, cache, inference, EditorConfig(max_seeds=64, max_frames=40, frame_batch=8),
                      budget=budget or RenderBudget(4.0, 8, 32 << 20))


def test_chunks_follow_the_measured_cost_and_the_reply_limit():
    budget = RenderBudget(chunk_seconds=4.0, max_chunk=8, max_message_bytes=10_000_000)
    assert budget.chunk_size("g", "png") == 8  # nothing measured: the configured maximum
    budget.observe("g", 2, 5.4, [1_500_000, 1_200_000], "png")  # 2.7 s and up to 1.5 MB per image
    assert budget.chunk_size("g", "png") == 1  # 4 s per call
    budget.observe("g", 4, 0.4, [100_000] * 4, "png")  # the machine got faster: the estimate follows
    assert budget.seconds_per_image("g") == pytest.approx(0.7 * 2.7 + 0.3 * 0.1)
    assert budget.chunk_size("g", "png") == 2 and budget.bytes_per_image("g", "png") == 1_500_000
    budget.observe("h", 1, 0.01, [4_000_000], "png")
    assert budget.chunk_size("h", "png") == 1  # 2 x 4 MB would pass 60 % of the 10 MB limit


def test_requests_that_cannot_fit_are_refused_up_front_with_the_numbers(deadline):
    budget = RenderBudget(4.0, 8, 10_000_000)
    budget.observe("g", 1, 2.5, [1_000_000], "png")
    deadline(30)
    budget.check_fits("g", 6, "png", "seeds", one_reply=True)  # 15 s, 6 MB: fits
    with pytest.raises(TooLargeError) as info:
        budget.check_fits("g", 20, "png", "frames", one_reply=False)  # 50 s of work in 30 s
    assert info.value.field == "frames" and "at most 11" in info.value.problem
    with pytest.raises(TooLargeError) as info:
        budget.check_fits("g", 7, "png", "seeds", one_reply=True)  # 7 MB over 60 % of the reply limit
    assert "reply limit" in info.value.problem and "at most 6" in info.value.problem
    deadline(None)
    budget.check_fits("g", 11, "jpeg", "seeds", one_reply=True)  # no deadline, no JPEG size known yet


def test_generate_is_sent_in_chunks_and_refused_when_the_deadline_is_too_short(tiny_models, redis_client, namespace,
                                                                               deadline):
    editor = make_editor(tiny_models, redis_client, namespace, budget=RenderBudget(4.0, 3, 32 << 20))
    editor.warm_up()
    assert editor.budget.seconds_per_image("demo") is not None  # the warm-up measured the generator
    editor.inference.calls.clear()
    faces = editor.generate("t", "", list(range(7)))
    assert len(faces) == 7
    assert [shape[0] for _, _, shape in editor.inference.calls] == [3, 3, 1]
    editor.budget.observe("demo", 1, 50.0, [], "png")  # as if a 1024 px image took 15 s here
    deadline(30)
    with pytest.raises(TooLargeError, match="seeds"):
        editor.generate("t", "", [1, 2, 3, 4, 5, 6])
    with pytest.raises(TooLargeError, match="frames"):
        editor.animate("t", "", LatentSource(seed=1), [Step("age", 1.0)], frames=10)


def test_no_chunk_is_sent_once_the_caller_has_gone(tiny_models, redis_client, namespace):
    editor = make_editor(tiny_models, redis_client, namespace, budget=RenderBudget(4.0, 2, 32 << 20))
    active = {"value": True}
    token = CALLER_ACTIVE.set(lambda: active["value"])
    try:
        frames = editor.animate("t", "", LatentSource(seed=1), [Step("age", 1.0)], frames=8)
        first = [next(frames), next(frames)]  # one chunk of two frames
        active["value"] = False  # the client cancelled
        with pytest.raises(DeadlineError, match="cancelled after 2 of 8"):
            next(frames)
    finally:
        CALLER_ACTIVE.reset(token)
    assert [f.index for f in first] == [0, 1] and len(editor.inference.calls) == 1


def _slow_torchserve(seconds: float):
    """TorchServe's Predictions taking `seconds` per call (a CPU at 1024 px), answering with fake PNGs."""
    from services.common.ts_grpc import inference_pb2, inference_pb2_grpc

    class SlowTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
        calls = 0

        def Predictions(self, request, context):
            from services.common import protocol

            type(self).calls += 1
            time.sleep(seconds)
            body = protocol.decode_generate_request(request.input["data"])
            images = [b"\x89PNG\r\n\x1a\nfake"] * body.ws.shape[0]
            return inference_pb2.PredictionResponse(prediction=protocol.encode_generate_response(images, "png", 32))

    return SlowTorchServe()


@pytest.mark.slow
def test_a_long_deadline_animation_completes_although_each_call_outlasts_the_default_timeout(
        tiny_models, redis_client, namespace, deadline):
    """The fixed 30 s per TorchServe call used to end a 1024 px Animate on a CPU whatever the caller allowed."""
    from services.common.ts_grpc import inference_pb2_grpc

    servicer = _slow_torchserve(0.6)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    inference = TorchServeInference(f"127.0.0.1:{port}", timeout_s=0.3)  # shorter than one call
    try:
        editor = make_editor(tiny_models, redis_client, namespace, inference=inference,
                             budget=RenderBudget(4.0, 2, 32 << 20))
        deadline(30)
        frames = list(editor.animate("t", "", LatentSource(seed=1), [Step("age", 1.0)], frames=6))
        assert [f.index for f in frames] == list(range(6)) and servicer.calls == 3
    finally:
        inference.close()
        server.stop(0)


def z_boundaries() -> BoundarySet:
    rng = torch.Generator().manual_seed(5)
    age_w, age_z, glasses_z, age_c = (torch.randn(64, generator=rng) for _ in range(4))
    entry = lambda name, d, space, cond=(): DirectionEntry(name, d / d.norm(), space, f"{name}.npy",  # noqa: E731
                                                           "interfacegan", None, (-3.0, 3.0), None, cond)
    return BoundarySet([entry("age", age_w, "w"), entry("age", age_z, "z"), entry("eyeglasses", glasses_z, "z"),
                        entry("age", age_c, "z", ("eyeglasses",))])


def test_z_space_boundaries_move_a_seeds_z_before_the_mapping(tiny_models, redis_client, namespace):
    boundaries = z_boundaries()
    editor = make_editor(tiny_models, redis_client, namespace, boundaries=boundaries)
    generator = load_generator(tiny_models["generator"])
    z = z_from_seeds([7], 64)
    source = LatentSource(seed=7, truncation=0.5)

    def expected(direction: torch.Tensor, strength: float) -> np.ndarray:
        with torch.no_grad():
            return generator.truncate(generator.mapping(z + strength * direction), 0.5)[0].numpy()

    got = editor.edit("t", "", source, [Step("age", 2.0, space="z")]).latent.ws
    np.testing.assert_allclose(got[0, 0], expected(boundaries.get("age", "z").direction, 2.0), atol=1e-5)
    # With conditions that a precomputed `_c_` file covers, that file is the direction.
    got = editor.edit("t", "", source, [Step("age", 2.0, conditions=("eyeglasses",), space="z")]).latent.ws
    np.testing.assert_allclose(got[0, 0], expected(boundaries.get("age", "z", ("eyeglasses",)).direction, 2.0),
                               atol=1e-5)
    frames = list(editor.animate("t", "", source, [Step("eyeglasses", 3.0)], frames=3, start=-1, end=1))
    assert len(frames) == 3
    # A latent without a z (an id, inline values) cannot be moved in Z: said, naming the step.
    latent = editor.generate("t", "", [7])[0].latent
    with pytest.raises(InvalidInputError) as info:
        editor.edit("t", "", LatentSource(latent_id=latent.id), [Step("eyeglasses", 1.0)])
    assert info.value.field == "edits[0].attribute" and "seed latents only" in info.value.problem
    with pytest.raises(InvalidInputError) as info:
        editor.edit("t", "", source, [Step("eyeglasses", 1.0, space="w")])
    assert info.value.field == "edits[0].space"
    # W is preferred when both exist, so an id edits in W.
    editor.edit("t", "", LatentSource(latent_id=latent.id), [Step("age", 1.0)])
