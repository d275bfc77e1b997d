"""The TorchServe handler classes called directly with a fake context: batching, per-request errors, adapted weights."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.images import from_pil, to_pil
from faceedit.models import load_encoder, load_generator
from services.common import protocol
from services.common.registry import save_adapted_generator
from services.inference.encoder_handler import EncoderHandler
from services.inference.generator_handler import GeneratorHandler

pytestmark = pytest.mark.inference  # make test-services


def fake_context(models_file: Path, model_dir: Path, settings: dict | None = None) -> SimpleNamespace:
    """What TorchServe hands a handler: the archive's model dir and its model-config.yaml (no weights:
    the handler reads the model configuration the `models` setting names)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(system_properties={"model_dir": str(model_dir)}, manifest={"model": {}},
                           model_yaml_config={"faceedit": {"models": str(models_file), **(settings or {})}})


@pytest.fixture
def base(tiny_models):
    return load_generator(tiny_models["generator"])


@pytest.fixture
def handler(tiny_models, tmp_path, redis_server, namespace, store):
    h = GeneratorHandler()
    h.initialize(fake_context(tiny_models["models"], tmp_path / "gen", {
        "redis_url": redis_server.url, "redis_namespace": namespace,
        "artifact_store_url": f"file://{store.root}", "lru_size": 1}))
    return h


def latents(base, batch: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    w = base.mapping(torch.randn(batch, base.style_dim, generator=g))
    return base.broadcast(w).detach().numpy().copy()


def decode_images(body: bytes) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)) for b in protocol.decode_generate_response(body).images]


def test_base_generator_batch_matches_direct_synthesis(handler, base):
    a, b = latents(base, 2, 0), latents(base, 1, 1)
    rows = [{"data": protocol.encode_generate_request("tiny", a)},
            {"body": protocol.encode_generate_request("tiny", b, image_format="webp")}]
    first, second = handler.handle(rows, None)
    expected = to_pil(base.synthesis(torch.from_numpy(a)))
    images = decode_images(first)
    assert len(images) == 2 and images[0].format == "PNG" and images[0].size == (32, 32)
    for got, want in zip(images, expected):
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))
    assert decode_images(second)[0].format == "WEBP"


def test_a_json_body_parsed_by_torchserve_is_accepted(handler, base):
    body = json.loads(protocol.encode_generate_request("tiny", latents(base, 1, 0)))
    (response,) = handler.handle([{"body": body}], None)
    assert len(protocol.decode_generate_response(response).images) == 1


def test_bad_requests_fail_alone(handler, base):
    good = protocol.encode_generate_request("tiny", latents(base, 1, 0))
    wrong_shape = protocol.encode_generate_request("tiny", np.zeros((1, 3, 64), np.float32))
    unknown = protocol.encode_generate_request("gen-missing", latents(base, 1, 0), tenant="acme")
    rows = [{"data": b"{not json"}, {"data": wrong_shape}, {"data": good}, {"data": unknown}, {}]
    garbage, shape, ok, missing, empty = handler.handle(rows, None)
    for body, field in ((garbage, "body"), (shape, "ws"), (empty, "body")):
        with pytest.raises(InvalidInputError) as info:
            protocol.decode_generate_response(body)
        assert info.value.field == field
    with pytest.raises(NotFoundError):
        protocol.decode_generate_response(missing)
    assert len(protocol.decode_generate_response(ok).images) == 1


def _adapt(base, store, index, tenant: str, seed: int):
    # Additive noise, not a scale: weight demodulation cancels a uniform scale of a conv weight.
    weight = base.state_dict()["convs.0.conv.weight"]
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))
    tensors = {"convs.0.conv.weight": weight + noise * weight.std()}
    return save_adapted_generator(store, index, tenant, "tiny", tensors, base=base)


def test_adapted_generator_is_served_to_its_tenant_only(handler, base, store, index):
    record = _adapt(base, store, index, "acme", 1)
    ws = latents(base, 1, 0)
    base_img, = decode_images(handler.handle([{"data": protocol.encode_generate_request("tiny", ws)}], None)[0])
    mine, theirs = handler.handle([
        {"data": protocol.encode_generate_request(record.id, ws, tenant="acme")},
        {"data": protocol.encode_generate_request(record.id, ws, tenant="intruder")}], None)
    adapted_img, = decode_images(mine)
    assert not np.array_equal(np.asarray(adapted_img), np.asarray(base_img))
    with pytest.raises(NotFoundError):
        protocol.decode_generate_response(theirs)


def test_adapted_cache_is_bounded_and_deletion_takes_effect(handler, base, store, index):
    first, second = _adapt(base, store, index, "acme", 1), _adapt(base, store, index, "acme", 2)
    ws = latents(base, 1, 0)
    for record in (first, second):
        protocol.decode_generate_response(
            handler.handle([{"data": protocol.encode_generate_request(record.id, ws, tenant="acme")}], None)[0])
    assert handler.adapted.keys() == [(second.id, second.sha256)]
    index.delete(second.id, "acme")
    with pytest.raises(NotFoundError):
        protocol.decode_generate_response(
            handler.handle([{"data": protocol.encode_generate_request(second.id, ws, tenant="acme")}], None)[0])


def test_tampered_adapted_weights_are_refused(handler, base, store, index):
    record = _adapt(base, store, index, "acme", 1)
    data = bytearray(store.get(record.artifact_key))
    data[-5] ^= 0x55
    store.put(record.artifact_key, bytes(data))
    body = handler.handle([{"data": protocol.encode_generate_request(record.id, latents(base, 1, 0), tenant="acme")}],
                          None)[0]
    with pytest.raises(protocol.InferenceError) as info:
        protocol.decode_generate_response(body)
    assert info.value.code == protocol.FAILED_PRECONDITION and "sha256" in info.value.message


def test_without_redis_only_the_base_is_served(tiny_models, tmp_path, base):
    h = GeneratorHandler()
    h.initialize(fake_context(tiny_models["models"], tmp_path / "gen"))
    with pytest.raises(NotFoundError):
        protocol.decode_generate_response(
            h.handle([{"data": protocol.encode_generate_request("gen-x", latents(base, 1, 0))}], None)[0])


def test_env_overrides_the_model_config(monkeypatch, tiny_models, tmp_path):
    from editor_fakes import write_models_file

    monkeypatch.setenv("FACEEDIT_MODELS", str(write_models_file(tmp_path / "env.yaml", tiny_models, "from-env")))
    monkeypatch.setenv("FACEEDIT_LRU_SIZE", "3")
    h = GeneratorHandler()
    h.initialize(SimpleNamespace(system_properties={"model_dir": str(tmp_path)}, manifest={"model": {}},
                                 model_yaml_config={"faceedit": {"lru_size": 1}}))
    assert list(h.bases) == ["from-env"] and h.config.lru_size == 3
    monkeypatch.setenv("FACEEDIT_LRU_SIZE", "many")
    with pytest.raises(InvalidInputError) as info:
        GeneratorHandler().initialize(fake_context(tiny_models["models"], tmp_path / "gen2"))
    assert info.value.field == "FACEEDIT_LRU_SIZE"  # the variable that holds the bad value


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def encoder_handler(tiny_models, tmp_path):
    h = EncoderHandler()
    h.initialize(fake_context(tiny_models["models"], tmp_path / "enc"))
    return h


def test_encoder_returns_the_latents_of_the_photo(encoder_handler, tiny_models, base):
    photo = to_pil(base.synthesis(torch.from_numpy(latents(base, 1, 3))))[0].resize((48, 40))
    body = encoder_handler.handle([{"data": protocol.encode_invert_request(png(photo), return_aligned=True)}], None)[0]
    response = protocol.decode_invert_response(body)
    # The crop comes back at the photo's resolution (up to 1024, FFHQ's), not the encoder's 32 px input.
    assert response.ws.shape == (1, base.n_latent, base.style_dim) and response.size == 40
    crop = Image.open(io.BytesIO(response.aligned))
    assert crop.size == (40, 40)
    with torch.inference_mode():
        direct = load_encoder(tiny_models["encoder"]).encode(
            from_pil([crop.convert("RGB").resize((32, 32), Image.LANCZOS)]))
    np.testing.assert_allclose(response.ws, direct.numpy(), rtol=1e-5, atol=1e-5)


def test_encoder_bad_photo_fails_alone(encoder_handler, base):
    good = png(Image.new("RGB", (32, 32), (200, 100, 50)))
    truncated = good[: len(good) // 2]
    huge = Image.new("1", (8000, 6000))  # 48 Mpx, compresses to a few KB
    bad, ok, big = encoder_handler.handle([{"data": protocol.encode_invert_request(truncated)},
                                           {"data": protocol.encode_invert_request(good)},
                                           {"data": protocol.encode_invert_request(png(huge))}], None)
    with pytest.raises(InvalidInputError) as info:
        protocol.decode_invert_response(bad)
    assert info.value.field == "image"
    with pytest.raises(protocol.TooLargeError):
        protocol.decode_invert_response(big)
    assert protocol.decode_invert_response(ok).aligned is None


@pytest.mark.slow
def test_alignment_problems_are_typed(encoder_handler):
    blank = png(Image.new("RGB", (64, 64), (128, 128, 128)))
    body = encoder_handler.handle([{"data": protocol.encode_invert_request(blank, align=True)}], None)[0]
    # With dlib installed a blank image has no face (INVALID_ARGUMENT); without it the deployment
    # lacks alignment (FAILED_PRECONDITION). Either way a typed error, never a crash.
    with pytest.raises((InvalidInputError, protocol.InferenceError)) as info:
        protocol.decode_invert_response(body)
    if isinstance(info.value, protocol.InferenceError):
        assert info.value.code == protocol.FAILED_PRECONDITION
    else:
        assert info.value.field == "image"


def test_one_synthesis_call_per_generator_and_noise_mode(handler, base, store, index):
    record = _adapt(base, store, index, "acme", 1)
    ws = latents(base, 1, 0)
    # Load the adapted generator first: it is a deep copy of the base and would copy the counter.
    handler.handle([{"data": protocol.encode_generate_request(record.id, ws, tenant="acme")}], None)
    calls = []
    synthesis = handler.bases["tiny"].synthesis

    def counting(ws, noise_mode="const", **kwargs):
        calls.append((ws.shape[0], noise_mode))
        return synthesis(ws, noise_mode=noise_mode, **kwargs)

    handler.bases["tiny"].synthesis = counting
    rows = [{"data": protocol.encode_generate_request("tiny", ws, tenant="acme")},
            {"data": protocol.encode_generate_request(record.id, ws, tenant="acme")},
            {"data": protocol.encode_generate_request("tiny", latents(base, 2, 1), tenant="other")},
            {"data": protocol.encode_generate_request("tiny", ws, noise_mode="none")}]
    bodies = handler.handle(rows, None)
    assert [len(protocol.decode_generate_response(b).images) for b in bodies] == [1, 1, 2, 1]
    # The base serves both tenants in one call; the adapted generator is a separate model.
    assert sorted(calls) == [(1, "none"), (3, "const")]


def test_a_batch_is_split_to_stay_within_the_memory_budget_and_precision_is_a_setting(tiny_models, tmp_path, base):
    # 32 px at 560 B per pixel is 0.57 MB per image: a 1 MB budget allows 1 image per call.
    h = GeneratorHandler()
    h.initialize(fake_context(tiny_models["models"], tmp_path / "gen", {"memory_budget_mb": 1}))
    calls = []
    synthesis = h.bases["tiny"].synthesis
    h.bases["tiny"].synthesis = lambda ws, **kw: calls.append(ws.shape[0]) or synthesis(ws, **kw)
    body = h.handle([{"data": protocol.encode_generate_request("tiny", latents(base, 5, 0))}], None)[0]
    assert len(protocol.decode_generate_response(body).images) == 5 and calls == [1, 1, 1, 1, 1]
    bf16 = GeneratorHandler()
    bf16.initialize(fake_context(tiny_models["models"], tmp_path / "bf16", {"precision": "bf16"}))
    assert bf16.config.precision == "bf16"
    assert len(protocol.decode_generate_response(bf16.handle(
        [{"data": protocol.encode_generate_request("tiny", latents(base, 1, 0))}], None)[0]).images) == 1
    with pytest.raises(InvalidInputError, match="bf16 on CPU"):
        GeneratorHandler().initialize(fake_context(tiny_models["models"], tmp_path / "fp16", {"precision": "fp16"}))


@pytest.mark.slow
def test_alignment_finds_a_drawn_face_and_returns_its_crop(encoder_handler):
    pytest.importorskip("dlib")
    from tests.test_align import drawn_face

    photo = png(drawn_face(400).rotate(20.0, fillcolor=(90, 120, 160)))
    aligned, plain = encoder_handler.handle([
        {"data": protocol.encode_invert_request(photo, align=True, return_aligned=True)},
        {"data": protocol.encode_invert_request(photo, align=False, return_aligned=True)}], None)
    aligned, plain = protocol.decode_invert_response(aligned), protocol.decode_invert_response(plain)
    assert Image.open(io.BytesIO(aligned.aligned)).size == (400, 400)  # the photo's scale, for paste-back
    # Alignment rotated and cropped the face: the encoder saw a different image, so other latents.
    assert aligned.aligned != plain.aligned and not np.allclose(aligned.ws, plain.ws)
    # Where the crop lies in the photo comes back too (what paste-back needs), and nothing for a plain crop.
    assert plain.placement is None and aligned.placement.photo_size == (400, 400)
    assert aligned.placement.quad.shape == (4, 2) and aligned.placement.landmarks.shape == (68, 2)


def test_optimize_refines_the_encoders_code_within_the_callers_budget(encoder_handler, base):
    photo = to_pil(base.synthesis(torch.from_numpy(latents(base, 1, 5))) * 0.8 + 0.1)[0]
    bodies = encoder_handler.handle([
        {"data": protocol.encode_invert_request(png(photo))},
        {"data": protocol.encode_invert_request(png(photo), mode="optimize", budget_s=2.0)},
        {"data": protocol.encode_invert_request(png(photo), mode="optimize", budget_s=0.001)}], None)
    encoded, optimized, out_of_time = (protocol.decode_invert_response(b).ws for b in bodies)
    # A caller whose deadline left no time gets the encoder's code (its budget ran from the batch's start).
    np.testing.assert_array_equal(out_of_time, encoded)
    target = from_pil([photo])

    def l2(ws):
        with torch.no_grad():
            return float((base.synthesis(torch.from_numpy(ws.copy())) - target).pow(2).mean())

    assert l2(optimized) < 0.9 * l2(encoded)
    for bad in ({"mode": "pti"}, {"budget_s": -1.0}):  # tuning is a job; a budget is a positive time
        body = protocol.encode_invert_request(png(photo))
        raw = json.loads(body)
        raw.update(bad)
        with pytest.raises(InvalidInputError) as info:
            protocol.decode_invert_response(encoder_handler.handle([{"data": json.dumps(raw).encode()}], None)[0])
        assert info.value.field == next(iter(bad))


def test_redis_down_fails_adapted_ids_as_unavailable_and_the_base_still_works(tiny_models, tmp_path, base):
    from services.common.redis_server import free_port

    h = GeneratorHandler()
    h.initialize(fake_context(tiny_models["models"], tmp_path / "gen", {
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        "artifact_store_url": f"file://{tmp_path}/artifacts"}))
    ws = latents(base, 1, 0)
    adapted, plain = h.handle([{"data": protocol.encode_generate_request("gen-x", ws, tenant="acme")},
                               {"data": protocol.encode_generate_request("tiny", ws)}], None)
    with pytest.raises(protocol.InferenceError) as info:
        protocol.decode_generate_response(adapted)
    assert info.value.code == protocol.UNAVAILABLE
    assert len(protocol.decode_generate_response(plain).images) == 1


def test_a_stylespace_offset_moves_each_latents_styles_by_its_own_strength(handler, base):
    ws = latents(base, 2, 9)
    layers = [j for j, (conv, _) in enumerate(base.style_layers()) if conv.out_ch != 3][:2]
    widths = [base.style_layers()[j][0].in_ch for j in layers]
    direction = np.random.default_rng(0).standard_normal(sum(widths)).astype(np.float32)
    offset = protocol.StyleOffset(tuple(layers), tuple(widths), direction, np.array([0.0, 2.0], np.float32))
    plain, styled = handler.handle([{"data": protocol.encode_generate_request("tiny", ws)},
                                    {"data": protocol.encode_generate_request("tiny", ws, style_offset=offset)}],
                                   None)
    plain, styled = protocol.decode_generate_response(plain), protocol.decode_generate_response(styled)
    assert styled.images[0] == plain.images[0] and styled.images[1] != plain.images[1]  # strength 0, then 2
    with torch.no_grad():
        styles = base.styles(torch.from_numpy(ws[1:2]))
        styles[layers[0]] += 2.0 * torch.from_numpy(direction[:widths[0]])
        styles[layers[1]] += 2.0 * torch.from_numpy(direction[widths[0]:])
        expected = to_pil(base.synthesis_from_styles(styles))[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(styled.images[1]))), np.asarray(expected))
    wrong = protocol.StyleOffset((0,), (widths[0] + 1,), np.zeros(widths[0] + 1, np.float32), np.ones(2, np.float32))
    body = handler.handle([{"data": protocol.encode_generate_request("tiny", ws, style_offset=wrong)}], None)[0]
    with pytest.raises(InvalidInputError) as info:
        protocol.decode_generate_response(body)
    assert info.value.field == "style_offset.layers"


@pytest.mark.parametrize("make", [GeneratorHandler, EncoderHandler])
def test_handlers_silence_torchserve_per_request_info_lines(make, tiny_models, tmp_path):
    """TorchServe's worker logs at INFO per request to the stdout its Java frontend parses; after a handler
    starts only WARNING and above get through (the handlers' own messages are warnings)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as TorchServe's model_service_worker.py configures it
    try:
        make().initialize(fake_context(tiny_models["models"], tmp_path / "h"))
        assert not root.isEnabledFor(logging.INFO)
        assert root.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)
