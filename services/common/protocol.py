"""Wire format between the editor and the TorchServe handlers: JSON requests,
replies framed as a JSON header plus raw bytes."""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceedit.errors import FaceEditError, InvalidInputError, NotFoundError
from services.common.errors import TooLargeError, code_for
from services.common.latents import MAX_BATCH, MAX_N_LATENT, MAX_STYLE_DIM, check_latents
from services.common.photos import Placement
from services.common.uploads import check_upload_bytes

VERSION = 2
IMAGE_FORMATS = ("png", "jpeg", "webp")
NOISE_MODES = ("const", "random", "none")

# Limits checked before anything is allocated from a request. A 1024 px generator has
# n_latent 18 and style_dim 512; the larger bounds leave room without inviting abuse.
MAX_BODY_BYTES = 48 * 1024 * 1024
MAX_ID_LENGTH = 128
MAX_HEADER_BYTES = 64 * 1024

# A reply that carries images or latents is a frame: FRAME_MAGIC, the header's length (4 bytes,
# big-endian), a JSON header, then the raw bytes the header lists. Images are most of a reply (a
# 1024 px PNG is ~1.5 MB): as base64 in JSON they were a third larger and took ~20 ms per image to
# encode and decode. Requests stay JSON (latents as base64): they are small (36 kB at 1024 px), and
# TorchServe's REST API hands a JSON body to the handler already parsed. Error replies stay JSON.
FRAME_MAGIC = b"FEF\x02"
_FRAME_PREFIX = struct.Struct(">4sI")

# Error codes in a response body; the editor maps them to gRPC status codes one to one. Errors travel
# in the body of a normal (200) response: TorchServe turns a non-200 per-request status into a bare
# gRPC error whose only text is the reason phrase, which would lose the field name and the kind.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNAVAILABLE = "UNAVAILABLE"  # a dependency of the handler (Redis, the artifact store) is down: retryable
INTERNAL = "INTERNAL"


class InferenceError(FaceEditError):
    """The handler failed for a reason other than the caller's input (FAILED_PRECONDITION, UNAVAILABLE, INTERNAL)."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class StyleOffset:
    """A StyleSpace edit (a text edit's direction): the styles of `layers` (Generator.style_layers indices,
    `widths` channels each) move by strengths[b] x direction for latent b."""

    layers: tuple[int, ...]
    widths: tuple[int, ...]
    direction: np.ndarray  # [sum(widths)] float32
    strengths: np.ndarray  # [B] float32


@dataclass(frozen=True)
class GenerateRequest:
    generator_id: str
    ws: np.ndarray  # [B, n_latent, style_dim] float32
    image_format: str = "png"
    noise_mode: str = "const"
    tenant: str = ""
    style_offset: StyleOffset | None = None


@dataclass(frozen=True)
class GenerateResponse:
    images: list[bytes]  # one encoded image per latent, in request order
    format: str
    size: int
    # The handler's own time on the batch this reply came from, up to this reply (decoding,
    # synthesis, image encoding): what TorchServe's queue, batching delay and transport add is the rest.
    handler_ms: float | None = None


INVERSION_MODES = ("encoder", "optimize")  # "pti" tunes a generator: a job, not a request


@dataclass(frozen=True)
class InvertRequest:
    image: bytes  # PNG, JPEG or WebP
    align: bool = False
    return_aligned: bool = False
    mode: str = "encoder"
    budget_s: float | None = None  # "optimize" stops after this long (the caller's deadline)


@dataclass(frozen=True)
class InvertResponse:
    ws: np.ndarray  # [1, n_latent, style_dim] float32
    aligned: bytes | None  # the PNG crop the encoder saw, when asked for
    size: int  # side of the crop the encoder saw
    placement: Placement | None = None  # where that crop lies in the photo (aligned requests)


# -- generator ---------------------------------------------------------------------------------

def encode_generate_request(generator_id: str, ws: np.ndarray, image_format: str = "png",
                            noise_mode: str = "const", tenant: str = "",
                            style_offset: StyleOffset | None = None) -> bytes:
    """Editor side: W+ latents for one generator → request body."""
    _check_id(generator_id, "generator_id")
    _check_choice(image_format, IMAGE_FORMATS, "image_format")
    _check_choice(noise_mode, NOISE_MODES, "noise_mode")
    ws = check_latents(np.asarray(ws), "ws")
    body = {"v": VERSION, "generator_id": generator_id, "tenant": tenant,
            "ws": _pack_array(ws), "image_format": image_format, "noise_mode": noise_mode}
    if style_offset is not None:
        _check_style_offset(style_offset, ws.shape[0])
        body["style_offset"] = {"layers": list(style_offset.layers), "widths": list(style_offset.widths),
                                "direction": _pack_array(style_offset.direction),
                                "strengths": _pack_array(style_offset.strengths)}
    return _dumps(body)


MAX_STYLE_CHANNELS = 32 * 1024  # 9,088 at 1024 px with the toRGB styles


def _check_style_offset(offset: StyleOffset, batch: int) -> StyleOffset:
    layers, widths = offset.layers, offset.widths
    if (len(layers) != len(widths) or not layers or len(layers) > 64 or len(set(layers)) != len(layers)
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_STYLE_CHANNELS
                       for v in (*layers, *widths))):
        raise InvalidInputError("style_offset.layers", "expected as many distinct layer indices as widths, "
                                                       "at most 64")
    channels = sum(widths)
    if offset.direction.shape != (channels,) or offset.strengths.shape != (batch,) or channels > MAX_STYLE_CHANNELS:
        raise InvalidInputError("style_offset.direction", f"expected direction [{channels}] and strengths "
                                                          f"[{batch}], got {list(offset.direction.shape)} and "
                                                          f"{list(offset.strengths.shape)}")
    if not (np.isfinite(offset.direction).all() and np.isfinite(offset.strengths).all()):
        raise InvalidInputError("style_offset.direction", "contains NaN or infinite values")
    return offset


def decode_generate_request(data: bytes | bytearray | str) -> GenerateRequest:
    """Handler side: parse and validate a request body; raises InvalidInputError naming the field."""
    body = _loads(data)
    generator_id = _get(body, "generator_id", str)
    _check_id(generator_id, "generator_id")
    tenant = _get(body, "tenant", str, default="")
    if len(tenant) > MAX_ID_LENGTH:
        raise InvalidInputError("tenant", f"longer than {MAX_ID_LENGTH} characters")
    image_format = _get(body, "image_format", str, default="png")
    _check_choice(image_format, IMAGE_FORMATS, "image_format")
    noise_mode = _get(body, "noise_mode", str, default="const")
    _check_choice(noise_mode, NOISE_MODES, "noise_mode")
    ws = check_latents(_unpack_array(_get(body, "ws", dict), "ws"), "ws")
    offset = _get(body, "style_offset", dict, default=None)
    style_offset = None
    if offset is not None:
        layers, widths = _get(offset, "layers", list), _get(offset, "widths", list)
        style_offset = _check_style_offset(StyleOffset(
            tuple(layers), tuple(widths), _unpack_array(_get(offset, "direction", dict), "style_offset.direction"),
            _unpack_array(_get(offset, "strengths", dict), "style_offset.strengths")), ws.shape[0])
    return GenerateRequest(generator_id, ws, image_format, noise_mode, tenant, style_offset)


def encode_generate_response(images: Sequence[bytes], fmt: str, size: int, handler_ms: float | None = None) -> bytes:
    """Handler side: encoded images → response frame."""
    _check_choice(fmt, IMAGE_FORMATS, "format")
    header: dict[str, Any] = {"v": VERSION, "format": fmt, "size": int(size), "images": [len(i) for i in images]}
    if handler_ms is not None:
        header["handler_ms"] = round(float(handler_ms), 3)
    return _frame(header, images)


def decode_generate_response(data: bytes | bytearray | str) -> GenerateResponse:
    """Editor side: response frame → images; an error body raises the typed error it carries."""
    header, payload = _unframe(data)
    fmt = _get(header, "format", str)
    _check_choice(fmt, IMAGE_FORMATS, "format")
    images = _split(payload, _get(header, "images", list), "images")
    return GenerateResponse(images, fmt, _get(header, "size", int), _get(header, "handler_ms", float, default=None))


# -- encoder ------------------------------------------------------------------------------------

def encode_invert_request(image: bytes, align: bool = False, return_aligned: bool = False, mode: str = "encoder",
                          budget_s: float | None = None) -> bytes:
    """Editor side: an encoded photo → request body for the encoder."""
    check_upload_bytes(bytes(image), "image")
    _check_choice(mode, INVERSION_MODES, "mode")
    body = {"v": VERSION, "image": base64.b64encode(bytes(image)).decode("ascii"),
            "align": bool(align), "return_aligned": bool(return_aligned), "mode": mode}
    if budget_s is not None:
        body["budget_s"] = round(float(budget_s), 3)
    return _dumps(body)


def decode_invert_request(data: bytes | bytearray | str) -> InvertRequest:
    body = _loads(data)
    image = _b64(_get(body, "image", str), "image")
    check_upload_bytes(image, "image")
    mode = _get(body, "mode", str, default="encoder")
    _check_choice(mode, INVERSION_MODES, "mode")
    budget = _get(body, "budget_s", float, default=None)
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise InvalidInputError("budget_s", f"must be a positive number of seconds, got {budget}")
    return InvertRequest(image, _get(body, "align", bool, default=False),
                         _get(body, "return_aligned", bool, default=False), mode, budget)


def encode_invert_response(ws: np.ndarray, aligned: bytes | None, size: int,
                           placement: Placement | None = None) -> bytes:
    ws = np.ascontiguousarray(check_latents(np.asarray(ws), "ws"), dtype="<f4")
    parts = [ws.tobytes()] if aligned is None else [ws.tobytes(), bytes(aligned)]
    header = {"v": VERSION, "ws": {"shape": list(ws.shape), "dtype": "float32"}, "size": int(size),
              "parts": [len(p) for p in parts]}
    if placement is not None:
        header["placement"] = placement.to_dict()
    return _frame(header, parts)


def decode_invert_response(data: bytes | bytearray | str) -> InvertResponse:
    header, payload = _unframe(data)
    shape, count = _array_shape(_get(header, "ws", dict), "ws")
    parts = _split(payload, _get(header, "parts", list), "parts")
    if len(parts) not in (1, 2) or len(parts[0]) != 4 * count:
        raise InvalidInputError("parts", f"expected the {4 * count} bytes of ws {shape}, then at most the aligned crop")
    ws = check_latents(np.frombuffer(parts[0], dtype="<f4").reshape(shape), "ws")
    placement = header.get("placement")
    return InvertResponse(ws, parts[1] if len(parts) == 2 else None, _get(header, "size", int),
                          None if placement is None else Placement.from_dict(placement, "placement"))


# -- errors -------------------------------------------------------------------------------------

def encode_error(exc: BaseException) -> bytes:
    """Handler side: one request's failure → an error body, its code from the services' one table
    (services.common.errors). Only typed errors carry their text: anything else is reported as INTERNAL
    without the exception string (the server log has it)."""
    code = exc.code if isinstance(exc, InferenceError) else code_for(exc)
    error: dict[str, Any] = {"code": code}
    if code == INTERNAL:
        error["message"] = "internal error in the model handler; see its log"
    elif isinstance(exc, InvalidInputError):
        error.update(field=exc.field, message=exc.problem)
    elif isinstance(exc, NotFoundError):
        error.update(kind=exc.kind, name=exc.name, message=str(exc))
    elif isinstance(exc, InferenceError):
        error["message"] = exc.message
    elif code == INVALID_ARGUMENT:  # a typed input error without a field of its own (NoFaceFound)
        error.update(field="image", message=str(exc))
    else:
        error["message"] = str(exc)
    return _dumps({"v": VERSION, "error": error})


def _raise_if_error(body: dict) -> None:
    error = body.get("error")
    if error is None:
        return
    if not isinstance(error, dict):
        raise InferenceError(INTERNAL, "malformed error body")
    code, message = str(error.get("code", INTERNAL)), str(error.get("message", ""))
    if code == INVALID_ARGUMENT:
        raise InvalidInputError(str(error.get("field", "request")), message)
    if code == RESOURCE_EXHAUSTED:
        raise TooLargeError(str(error.get("field", "request")), message)
    if code == NOT_FOUND:
        raise NotFoundError(str(error.get("kind", "object")), str(error.get("name", "")))
    raise InferenceError(code, message)


# -- helpers ------------------------------------------------------------------------------------

def _dumps(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _body_bytes(data: bytes | bytearray | str) -> bytes | bytearray:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidInputError("body", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_BODY_BYTES:
        raise TooLargeError("body", f"{len(data)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    return data


def _loads(data: bytes | bytearray | str | memoryview, field: str = "body") -> dict:
    raw = bytes(data) if isinstance(data, memoryview) else _body_bytes(data)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(field, f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(body, dict):
        raise InvalidInputError(field, "expected a JSON object")
    version = body.get("v", VERSION)
    if version != VERSION:
        raise InvalidInputError("v", f"protocol version {version!r} is not supported (this side speaks {VERSION})")
    return body


def _frame(header: dict, parts: Sequence[bytes]) -> bytes:
    head = _dumps(header)
    return b"".join((_FRAME_PREFIX.pack(FRAME_MAGIC, len(head)), head, *parts))


def _unframe(data: bytes | bytearray | str) -> tuple[dict, memoryview]:
    """A reply → (header, payload); an error body (JSON) raises the typed error it carries."""
    data = _body_bytes(data)
    if not data.startswith(FRAME_MAGIC):
        _raise_if_error(_loads(data))
        raise InvalidInputError("body", "expected a reply frame or an error")
    if len(data) < _FRAME_PREFIX.size:
        raise InvalidInputError("body", "the frame is truncated")
    _, length = _FRAME_PREFIX.unpack_from(data)
    if length > MAX_HEADER_BYTES or length > len(data) - _FRAME_PREFIX.size:
        raise InvalidInputError("header", f"declares {length} bytes; the frame holds {len(data) - _FRAME_PREFIX.size} "
                                          f"and the limit is {MAX_HEADER_BYTES}")
    view = memoryview(data)
    header = _loads(view[_FRAME_PREFIX.size:_FRAME_PREFIX.size + length], "header")
    return header, view[_FRAME_PREFIX.size + length:]


def _split(payload: memoryview, lengths: list, field: str) -> list[bytes]:
    """The payload cut into the parts the header lists, each checked before anything is copied."""
    if len(lengths) > MAX_BATCH:
        raise TooLargeError(field, f"{len(lengths)} parts exceed the limit of {MAX_BATCH}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths):
        raise InvalidInputError(field, "must list the byte length of each part")
    if sum(lengths) != len(payload):
        raise InvalidInputError(field, f"lists {sum(lengths)} bytes; the frame carries {len(payload)}")
    parts, start = [], 0
    for n in lengths:
        parts.append(bytes(payload[start:start + n]))
        start += n
    return parts


_MISSING = object()


def _get(body: dict, key: str, kind: type, default: Any = _MISSING) -> Any:
    if key not in body or body[key] is None:
        if default is _MISSING:
            raise InvalidInputError(key, "is required")
        return default
    value = body[key]
    # bool is an int subclass: never let true/false pass as a size.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInputError(key, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _check_id(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(field, "must be a non-empty string")
    if len(value) > MAX_ID_LENGTH or not all(c.isalnum() or c in "-_." for c in value):
        raise InvalidInputError(field, f"must be at most {MAX_ID_LENGTH} characters of [A-Za-z0-9-_.]")


def _check_choice(value: Any, choices: tuple[str, ...], field: str) -> None:
    if value not in choices:
        raise InvalidInputError(field, f"must be one of {list(choices)}, got {value!r}")


def _pack_array(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "dtype": "float32",
            "data": base64.b64encode(data.tobytes()).decode("ascii")}


def _array_shape(packed: dict, field: str) -> tuple[list[int], int]:
    """(shape, element count) of a packed float32 array's description, within the limits."""
    if packed.get("dtype", "float32") != "float32":
        raise InvalidInputError(f"{field}.dtype", f"must be 'float32', got {packed.get('dtype')!r}")
    shape = packed.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInputError(f"{field}.shape", f"must be a list of up to 4 non-negative ints, got {shape!r}")
    count = math.prod(shape)
    if count > MAX_BATCH * MAX_N_LATENT * MAX_STYLE_DIM:
        raise TooLargeError(f"{field}.shape", f"{shape} has too many elements")
    return shape, count


def _unpack_array(packed: dict, field: str) -> np.ndarray:
    shape, count = _array_shape(packed, field)
    raw = packed.get("data")
    if not isinstance(raw, str):
        raise InvalidInputError(f"{field}.data", "must be a base64 string")
    buffer = _b64(raw, f"{field}.data")
    if len(buffer) != 4 * count:
        raise InvalidInputError(f"{field}.data", f"holds {len(buffer)} bytes; shape {shape} needs {4 * count}")
    return np.frombuffer(buffer, dtype="<f4").reshape(shape)


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInputError(field, "must be a base64 string")
    if len(value) > MAX_BODY_BYTES:
        raise TooLargeError(field, "exceeds the body size limit")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(field, "is not valid base64") from None
