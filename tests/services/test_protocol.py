"""The editor ↔ handler wire format: round trips, and typed errors naming the field for bad bodies."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import protocol as p

pytestmark = pytest.mark.inference  # make test-services

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def ws(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 8, 64)).astype(np.float32)


def test_generate_request_round_trip_is_exact():
    latents = ws()
    body = p.encode_generate_request("gen-1", latents, "webp", "none", tenant="acme")
    request = p.decode_generate_request(body)
    assert request.generator_id == "gen-1" and request.tenant == "acme"
    assert request.image_format == "webp" and request.noise_mode == "none"
    assert request.ws.dtype == np.float32 and np.array_equal(request.ws, latents)


def test_float64_latents_travel_as_float32():
    request = p.decode_generate_request(p.encode_generate_request("g", ws().astype(np.float64)))
    assert request.ws.dtype == np.float32


def test_generate_response_round_trip():
    body = p.encode_generate_response([PNG, PNG + b"x"], "png", 32, handler_ms=41.5)
    response = p.decode_generate_response(body)
    assert response.images == [PNG, PNG + b"x"] and response.size == 32 and response.format == "png"
    assert response.handler_ms == 41.5
    assert p.decode_generate_response(p.encode_generate_response([PNG], "png", 32)).handler_ms is None


def test_invert_round_trip_with_aligned_crop():
    request = p.decode_invert_request(p.encode_invert_request(PNG, align=True, return_aligned=True))
    assert request.image == PNG and request.align and request.return_aligned
    latents = ws(1)
    response = p.decode_invert_response(p.encode_invert_response(latents, PNG, 32))
    assert np.array_equal(response.ws, latents) and response.aligned == PNG and response.size == 32
    assert p.decode_invert_response(p.encode_invert_response(latents, None, 32)).aligned is None


def test_images_travel_as_raw_bytes_after_a_json_header():
    body = p.encode_generate_response([PNG, PNG], "png", 32)
    assert body.startswith(p.FRAME_MAGIC) and body.endswith(PNG + PNG)
    assert len(body) < 2 * len(PNG) + 100  # no base64: a 1024 px PNG would grow by a third


def _frame(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return p.FRAME_MAGIC + len(head).to_bytes(4, "big") + head + payload


@pytest.mark.parametrize("body, field", [
    (_frame({"v": p.VERSION, "format": "png", "size": 32, "images": [len(PNG) + 1]}, PNG), "images"),
    (_frame({"v": p.VERSION, "format": "png", "size": 32, "images": [-1, len(PNG) + 1]}, PNG), "images"),
    (_frame({"v": p.VERSION, "format": "png", "size": 32, "images": "all"}, PNG), "images"),
    (_frame({"v": p.VERSION, "format": "gif", "size": 32, "images": [len(PNG)]}, PNG), "format"),
    (_frame({"v": 1, "format": "png", "size": 32, "images": [len(PNG)]}, PNG), "v"),
    (p.FRAME_MAGIC + (10**6).to_bytes(4, "big") + b"{}", "header"),
    (p.FRAME_MAGIC + b"\x00", "body"),
    (p.FRAME_MAGIC + (3).to_bytes(4, "big") + b"[1]", "header"),
    (json.dumps({"v": p.VERSION, "images": []}).encode(), "body"),
])
def test_bad_reply_frames_are_named(body, field):
    with pytest.raises(InvalidInputError) as info:
        p.decode_generate_response(body)
    assert info.value.field == field


def test_a_frame_listing_too_many_images_is_refused_before_copying():
    body = _frame({"v": p.VERSION, "format": "png", "size": 32, "images": [0] * (p.MAX_BATCH + 1)}, b"")
    with pytest.raises(p.TooLargeError) as info:
        p.decode_generate_response(body)
    assert info.value.field == "images"


def test_an_invert_reply_must_carry_its_latent_bytes():
    header = {"v": p.VERSION, "ws": {"shape": [1, 8, 64], "dtype": "float32"}, "size": 32}
    with pytest.raises(InvalidInputError) as info:
        p.decode_invert_response(_frame({**header, "parts": [100, len(PNG)]}, b"\0" * 100 + PNG))
    assert info.value.field == "parts"
    nan = np.full((1, 8, 64), np.nan, "<f4").tobytes()
    with pytest.raises(InvalidInputError, match="NaN") as info:
        p.decode_invert_response(_frame({**header, "parts": [len(nan)]}, nan))
    assert info.value.field == "ws"


def _tamper(body: bytes, **changes) -> bytes:
    data = json.loads(body)
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize("changes, field", [
    ({"generator_id": ""}, "generator_id"),
    ({"generator_id": "../etc"}, "generator_id"),
    ({"image_format": "gif"}, "image_format"),
    ({"noise_mode": "loud"}, "noise_mode"),
    ({"ws": None}, "ws"),
    ({"v": 1}, "v"),
    ({"tenant": 5}, "tenant"),
])
def test_bad_generate_fields_are_named(changes, field):
    body = _tamper(p.encode_generate_request("g", ws()), **changes)
    with pytest.raises(InvalidInputError) as info:
        p.decode_generate_request(body)
    assert info.value.field == field


def test_latent_data_must_match_its_shape():
    body = json.loads(p.encode_generate_request("g", ws()))
    body["ws"]["shape"] = [2, 8, 65]
    with pytest.raises(InvalidInputError) as info:
        p.decode_generate_request(json.dumps(body).encode())
    assert info.value.field == "ws.data"


def test_nan_latents_are_refused():
    body = json.loads(p.encode_generate_request("g", ws()))
    raw = np.frombuffer(base64.b64decode(body["ws"]["data"]), dtype="<f4").copy()
    raw[3] = np.nan
    body["ws"]["data"] = base64.b64encode(raw.tobytes()).decode()
    with pytest.raises(InvalidInputError, match="NaN") as info:
        p.decode_generate_request(json.dumps(body).encode())
    assert info.value.field == "ws"


def test_oversized_batch_is_resource_exhausted():
    with pytest.raises(p.TooLargeError) as info:
        p.encode_generate_request("g", np.zeros((p.MAX_BATCH + 1, 8, 64), np.float32))
    assert info.value.field == "ws"
    assert json.loads(p.encode_error(info.value))["error"]["code"] == p.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("body, field", [
    (b"not json", "body"), (b"[1, 2]", "body"), (b"\xff\xfe", "body"),
])
def test_garbage_bodies_are_invalid(body, field):
    with pytest.raises(InvalidInputError) as info:
        p.decode_generate_request(body)
    assert info.value.field == field


def test_invert_request_must_be_an_image():
    body = json.dumps({"image": base64.b64encode(b"GIF89a....").decode()}).encode()
    with pytest.raises(InvalidInputError) as info:
        p.decode_invert_request(body)
    assert info.value.field == "image"
    with pytest.raises(InvalidInputError) as info:
        p.decode_invert_request(json.dumps({"image": "***"}).encode())
    assert info.value.field == "image"


def test_error_bodies_raise_the_typed_error_on_the_editor_side():
    with pytest.raises(InvalidInputError) as info:
        p.decode_generate_response(p.encode_error(InvalidInputError("ws", "bad shape")))
    assert info.value.field == "ws" and "bad shape" in str(info.value)
    with pytest.raises(NotFoundError) as info:
        p.decode_invert_response(p.encode_error(NotFoundError("generator", "gen-x")))
    assert info.value.name == "gen-x"


def test_unexpected_exceptions_do_not_leak_their_text():
    body = p.encode_error(RuntimeError("secret path /root/x"))
    assert b"secret" not in body
    with pytest.raises(p.InferenceError) as info:
        p.decode_generate_response(body)
    assert info.value.code == p.INTERNAL


def test_a_style_offset_round_trips_and_bad_ones_name_their_field():
    ws = np.zeros((2, 8, 64), np.float32)
    offset = p.StyleOffset((0, 3), (4, 2), np.arange(6, dtype=np.float32), np.array([0.5, 1.0], np.float32))
    decoded = p.decode_generate_request(p.encode_generate_request("g", ws, style_offset=offset))
    assert decoded.style_offset.layers == (0, 3) and decoded.style_offset.widths == (4, 2)
    np.testing.assert_array_equal(decoded.style_offset.direction, offset.direction)
    np.testing.assert_array_equal(decoded.style_offset.strengths, offset.strengths)
    bad = [
        (p.StyleOffset((0,), (4, 2), np.zeros(6, np.float32), np.ones(2, np.float32)), "style_offset.layers"),
        (p.StyleOffset((0, 0), (4, 2), np.zeros(6, np.float32), np.ones(2, np.float32)), "style_offset.layers"),
        (p.StyleOffset((0,), (4,), np.zeros(5, np.float32), np.ones(2, np.float32)), "style_offset.direction"),
        (p.StyleOffset((0,), (4,), np.zeros(4, np.float32), np.ones(3, np.float32)), "style_offset.direction"),
        (p.StyleOffset((0,), (4,), np.full(4, np.nan, np.float32), np.ones(2, np.float32)),
         "style_offset.direction"),
    ]
    for wrong, field in bad:
        with pytest.raises(InvalidInputError) as info:
            p.encode_generate_request("g", ws, style_offset=wrong)
        assert info.value.field == field
