"""The project's own fuzz campaign: no request can take the service down.

A seeded campaign of malformed requests over every RPC of faceedit.v1.Editor and faceedit.v1.Adaptation,
against the real stack (launcher: Redis, TorchServe, the editor process) with its shipped defaults, started
once for the module. Requests go through the raw generated stubs on a plain channel (the typed client would
refuse most of them), and as raw bytes through the method paths.

What every response must be:

* a typed status code: OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED (size limits, the editor's and
  grpc-core's message/metadata limits), UNAUTHENTICATED, OUT_OF_RANGE; FAILED_PRECONDITION only from
  DeleteGenerator (a base generator cannot be deleted). Never UNKNOWN or INTERNAL from the application, and
  never UNAVAILABLE: every dependency is up for the whole campaign, so it would mean a request knocked one
  over or an error left the editor mistyped. DEADLINE_EXCEEDED only for the few cases sent with a 1-50 ms
  deadline (the client's own); about 10% go with no deadline at all, grpc's default (a watchdog here
  cancels one that is never answered), the rest with 30 s.
* the one INTERNAL accepted: grpcio's own "Exception deserializing request!" for undecodable bytes, which
  it answers before any application code runs (only for the raw-bytes cases).
* INVALID_ARGUMENT messages start with the field they are about, as a path into the request message
  (e.g. "edits[0].layers: ..."); a case that breaks a single field must get that field named.
* every message under 1 KB (UTF-8). Each rejection is handled by the editor in under 0.5 s of its own time
  (from its log: a bound on the work a bad request can cause, ~500x the measured median). The caller's wall
  time is printed, not asserted: it includes moving a 17 MiB body over loopback (0.54 s on a busy CI
  machine) and grpc-core's own refusal of oversized metadata, which take what the machine takes.

And over the campaign: the editor process is the same one (the supervisor restarts a crashed editor, which
would hide a crash), its log records no INTERNAL/UNKNOWN RPC, its RSS grows by at most 60 MB (measured
after a warm-up of one valid call per RPC, so one-time lazy loading is not counted) and by at most 20 MB
while the whole campaign is sent a second time (a leak grows with requests; the allocator's first-use
growth does not repeat), and at the end it answers grpc health SERVING and a valid Generate.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from editor_fakes import png_bytes, write_models_file
from faceedit.proto import adaptation_pb2 as A
from faceedit.proto import adaptation_pb2_grpc, editor_pb2_grpc
from faceedit.proto import common_pb2 as C
from faceedit.proto import editor_pb2 as E
from services import launcher
from services.editor import probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 0xFACE
DEADLINE_S = 30.0
WATCHDOG_S = 60.0  # a call without a deadline that is still unanswered after this is a hang
RANDOM_CASES = 1400  # on top of the ~290 fixed cases: ~1,700 requests, >= 130 per RPC
MAX_MESSAGE_BYTES = 1024
MAX_RSS_GROWTH_MB = 60
MAX_REJECTION_MS = 500  # the editor's own handling time of one rejected request
MAX_SECOND_PASS_GROWTH_MB = 20  # the same requests again: allocator noise, not a leak
DESERIALIZE_ERROR = "Exception deserializing request!"  # grpcio's answer, before any servicer code
S = grpc.StatusCode
TYPED = frozenset({S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.RESOURCE_EXHAUSTED, S.UNAUTHENTICATED,
                   S.OUT_OF_RANGE})
PRECONDITION_RPCS = {"DeleteGenerator"}  # a base generator id: FAILED_PRECONDITION by design

SERVICES = {"Editor": E.DESCRIPTOR.services_by_name["Editor"],
            "Adaptation": A.DESCRIPTOR.services_by_name["Adaptation"]}
METHODS = {m.name: (service, m) for service, d in SERVICES.items() for m in d.methods}
REQUEST_TYPES = {name: getattr(E if service == "Editor" else A, m.input_type.name)
                 for name, (service, m) in METHODS.items()}


# -- the stack ------------------------------------------------------------------------------------

@dataclass
class Stack:
    target: str
    api_key: str
    run_dir: Path


@pytest.fixture(scope="module")
def stack(tiny_models):
    from faceedit.editing import save_boundary
    from faceedit.models import load_generator
    from services.inference.archive import build_archive

    # Short: TorchServe's unix sockets live under the run directory (a socket path has ~100 bytes).
    root = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))
    store = root / "model_store"
    build_archive("generator", store)
    build_archive("encoder", store)
    generator = load_generator(tiny_models["generator"])
    rng = torch.Generator().manual_seed(0)
    for name in ("age", "smile"):
        save_boundary(root / "boundaries" / f"{name}.safetensors", torch.randn(generator.style_dim, generator=rng),
                      {"attribute": name, "accuracy": 0.9, "recommended_strength": [-3.0, 3.0]})
    # InterfaceGAN Z boundaries too (age in both spaces, eyeglasses in Z only, a precomputed conditional
    # variant): Z edits move a seed's z, so the Z paths have their own checks to break.
    for stem in ("age", "eyeglasses", "age_c_eyeglasses"):
        normal = torch.randn(1, generator.style_dim, generator=rng).numpy()
        np.save(root / "boundaries" / f"stylegan_ffhq_{stem}_boundary.npy", normal)
    models = write_models_file(root / "models.yaml", tiny_models, "demo", root / "boundaries")
    try:
        # No worker: CreateAdaptation still validates, stores the upload and enqueues on the real broker.
        started = launcher.up(root / "run", store, worker=False, timeout=400, models=models)
        yield Stack(started.editor_target, started.api_key, started.run_dir)
    finally:
        launcher.down(root / "run")
        shutil.rmtree(root, ignore_errors=True)


# -- inputs ---------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (RGB, 8 bit) over whatever IDAT follows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encoded(fmt: str, size: int = 32, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.effect_noise((size, size), 64).convert(mode).save(out, format=fmt)
    return out.getvalue()


def _text_bomb() -> bytes:
    """A tiny PNG with a zTXt chunk that inflates to 20 MB (PIL's text limit is 1 MB)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (20 << 20), zip=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class Inputs:
    """Payloads built once: valid images, broken ones, bombs."""

    def __init__(self) -> None:
        self.png = png_bytes(32)
        self.jpeg = _encoded("JPEG")
        self.webp = _encoded("WEBP")
        png = self.png
        self.bad_images: dict[str, tuple[bytes, frozenset | None]] = {
            "empty": (b"", None),
            "one byte": (b"\x89", None),
            "png signature only": (png[:8], None),
            "gif": (b"GIF89a" + bytes(32), None),
            "text": (b"hello, world", None),
            "header claims 100000x100000": (_png_claiming(100_000, 100_000), frozenset({S.RESOURCE_EXHAUSTED})),
            "header claims 2^31 x 1": (_png_claiming(2**31, 1), None),
            "header claims 0x0": (_png_claiming(0, 0), None),
            # 75 MB of pixels deflated to ~75 kB: refused from the header, before anything is inflated.
            "zlib bomb 5000x5000": (_png_claiming(5000, 5000, zlib.compress(bytes(5000 * 15001), 6)),
                                    frozenset({S.RESOURCE_EXHAUSTED})),
            # 64x64, but its IDAT inflates to 64 MB: a decoder must stop at the rows the header declares.
            "zlib bomb 64x64": (_png_claiming(64, 64, zlib.compress(bytes(64 << 20), 6)), None),
            # Under the pixel limit, but the stream stops short: decoding fails, typed.
            "2048x2048 with 1 kB of IDAT": (_png_claiming(2048, 2048, zlib.compress(bytes(1 << 20))[:1024]), None),
            "ztxt bomb": (_text_bomb(), None),
            "png bad crc": (png[:-9] + bytes(4) + png[-5:], None),
            "png truncated in IDAT": (png[:len(png) // 2], None),
            "jpeg truncated": (self.jpeg[:len(self.jpeg) // 3], None),
            "jpeg soi only": (b"\xff\xd8\xff", None),
            "jpeg zeroed middle": (self.jpeg[:100] + bytes(200) + self.jpeg[300:], None),
            "webp truncated": (self.webp[:30], None),
            "webp header only": (b"RIFF\x00\x00\x00\x00WEBP", None),
            "riff lies about its size": (b"RIFF\xff\xff\xff\xffWEBPVP8 \xff\xff\xff\xff" + bytes(16), None),
            # Over max_image_bytes (16 MiB) and under the channel's 32 MiB: the editor's own limit answers.
            "17 MiB": (b"\x89PNG\r\n\x1a\n" + bytes(17 << 20), frozenset({S.RESOURCE_EXHAUSTED})),
        }

    def corrupted(self, rng: random.Random) -> bytes:
        """A valid PNG/JPEG/WebP with a few bytes after its magic flipped, or cut short."""
        data = bytearray(rng.choice((self.png, self.jpeg, self.webp)))
        if rng.random() < 0.3:
            return bytes(data[:rng.randrange(12, len(data))])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(12, len(data))] = rng.randrange(256)
        return bytes(data)


HUGE = "x" * (1 << 20)
BAD_STRINGS = ["", " ", "\x00", "\x00\x01\x02\x1b[31m\x7f", "\t\r\n", "\u202e\u200b\ufeff", "é", "😀" * 300,
               "\U0010ffff", "x" * 129, "k" * 10_240, "ä" * 10_240, "../../etc/passwd", "%s%s%n", "'; DROP --",
               "${jndi:ldap://x}", "demo\x00", "DEMO", " demo", "0", "-1", "null", "\\", "*", "lat-*", "job-*",
               "gen-" + "0" * 20, "a" * 128, "٣" * 128]
BAD_FLOATS = [float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, -0.0, -1.0, 1.0000001, 100.5, 0.5]
BAD_INT32 = [-1, -(2**31), 2**31 - 1, 1, 0, 121, 10_001]
BAD_ENUMS = [-1, -(2**31), 2**31 - 1, 5, 99]
LAYERS = ["0-2147483648", "1-99999999999999999999", "-1", "8", "7-0", "0--1", "0-", "-", ",", ",,,", "coarse+bogus",
          "COARSE", "٣", "0x1", "1e3", "1.5", "0-3,8", " 0 - 3 ", "0" * 300, "0," * 200, "\x00", "all", "fine+fine",
          "0-7", "9" * 5000, "coarse+middle+fine"]
SPACES = ["z", "Z", "w", "W", "q" * 10_000, "\x00", "wz", "😀"]
PAGE_TOKENS = ["-1", "1e3", str(2**63), str(2**63 - 1), str(2**64), "9" * 1000, "٣", "0x10", " 1", "1 ", "100000",
               "100001", "abc", "k" * 10_240, "+1", "00000000001", "\x00", "1" * 19]


def bad_string(rng: random.Random, extra: tuple[str, ...] = ()) -> str:
    if rng.random() < 0.02:
        return HUGE  # 1 MB: well under the channel limit, far over every field's
    return rng.choice(BAD_STRINGS + list(extra))


def seed_list(rng: random.Random) -> list[int]:
    kind = rng.randrange(7)
    if kind == 0:
        return []
    if kind == 1:
        return [rng.choice((2**32, 2**63, 2**64 - 1, 2**32 + 1))]
    if kind == 2:
        return [1, 2, 2**64 - 1]
    if kind == 3:
        return [rng.randrange(2**32) for _ in range(rng.choice((65, 1000, 100_000)))]
    if kind == 4:
        return [0] * 300_000
    if kind == 5:
        return [2**32 - 1]  # valid: the last seed
    return [rng.randrange(2**64) for _ in range(rng.randint(2, 64))]


def bad_latent(rng: random.Random) -> C.Latent:
    nan, inf = float("nan"), float("inf")
    kind = rng.randrange(16)
    if kind == 0:
        return C.Latent()
    if kind == 1:
        return C.Latent(shape=[rng.choice((0, -1, -(2**31))), 8, 64])
    if kind == 2:
        return C.Latent(shape=[512], values=[0.0] * 512)
    if kind == 3:
        return C.Latent(shape=[1, 1, 8, 64], values=[0.0] * 512)
    if kind == 4:
        return C.Latent(shape=[1] * rng.choice((4, 1000, 50_000)))
    if kind == 5:
        return C.Latent(shape=rng.choice(([2**31 - 1] * 3, [1 << 30, 1 << 30, 16], [1 << 16, 1 << 16], [2048, 1025])))
    if kind == 6:
        return C.Latent(shape=[64, 8], values=[0.0] * 512)
    if kind == 7:
        return C.Latent(shape=[1, 8, 65], values=[0.0] * 520)
    if kind == 8:
        return C.Latent(shape=[2, 8, 64], values=[0.0] * 1024)
    if kind == 9:
        return C.Latent(shape=[8, 64], values=[0.0] * rng.choice((0, 511, 513, 100_000)))
    if kind in (10, 11, 12):
        values = [rng.gauss(0, 1) for _ in range(512)]
        values[rng.randrange(512)] = rng.choice((nan, inf, -inf))
        return C.Latent(shape=[1, 8, 64], values=values)
    if kind == 13:
        return C.Latent(shape=[8, 64], values=[3e38] * 512)  # finite: valid
    if kind == 14:
        return C.Latent(values=[0.0] * 512)
    return C.Latent(shape=[8, 64], values=[rng.gauss(0, 1) for _ in range(512)])  # valid


def bad_latent_ref(rng: random.Random, ref: C.LatentRef) -> None:
    kind = rng.randrange(6)
    if kind == 0:
        ref.Clear()  # none of the oneof set
    elif kind == 1:
        ref.latent_id = bad_string(rng, ("lat-" + "0" * 32, "lat-..", "lat-" + "é" * 10))
    elif kind == 2:
        ref.seed = rng.choice((2**32, 2**63, 2**64 - 1))
    elif kind == 3:
        ref.seed, ref.truncation = 3, rng.choice(BAD_FLOATS)
    else:
        ref.inline.CopyFrom(bad_latent(rng))


def bad_step(rng: random.Random, step: E.AttributeStep) -> str | None:
    """Breaks one thing of an AttributeStep; returns the field (relative to the step), if one."""
    kind = rng.randrange(5)
    if kind == 0:
        step.attribute = bad_string(rng, ("wings", "age ", "Age"))
        return "attribute"
    if kind == 1:
        step.strength = rng.choice(BAD_FLOATS + [1e38, -100.0001])
        return "strength"
    if kind == 2:
        step.layers = rng.choice(LAYERS)
        return "layers"
    if kind == 3:
        del step.conditions[:]
        step.conditions.extend(rng.choice((["age"], ["wings"], ["smile"] * 9, ["smile"] * 3, [""], ["smile"],
                                           [bad_string(rng)], ["smile"] * 100_000)))
        return "conditions"
    if rng.random() < 0.5:  # a Z boundary: seed latents only, no layers
        step.attribute, step.space = rng.choice((("eyeglasses", ""), ("age", "z"), ("eyeglasses", "w")))
        step.layers = rng.choice(("", "", "coarse", "0-3"))
        if rng.random() < 0.3:
            step.conditions.append(rng.choice(("eyeglasses", "age", "smile")))
        return None  # which field is wrong (if any) depends on the latent: any typed answer
    step.space = rng.choice(SPACES)
    return "space"


# -- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    method: str
    label: str
    request: Any  # a request message, or bytes sent as they are
    metadata: tuple | None
    field: str | None = None  # the one field this case breaks: INVALID_ARGUMENT must name it
    codes: frozenset | None = None  # narrower than the default set of allowed codes
    deadline: float | None = DEADLINE_S  # None: the call carries no deadline at all (grpc's default)


class Campaign:
    def __init__(self, api_key: str, job_name: str, inputs: Inputs, rng: random.Random):
        self.auth = (("authorization", f"Bearer {api_key}"),)
        self.key = api_key
        self.job = job_name
        self.inputs = inputs
        self.rng = rng
        self.mutators: dict[str, list[Callable[[Any], str | None]]] = {
            "Generate": [self._generator_id, self._seeds, self._truncation, self._format],
            "Invert": [self._generator_id, self._image, self._format, self._image_meta],
            "Edit": [self._generator_id, self._latent, self._edits, self._format],
            "Animate": [self._generator_id, self._latent, self._edits, self._frame_format, self._animation,
                        self._frames, self._start_end, self._duration, self._skip_frames],
            "ListGenerators": [],
            "ListAttributes": [self._generator_id],
            "CreateAdaptation": [self._base_generator_id, self._style_image, self._idempotency_key,
                                 self._display_name, self._steps, self._learning_rate],
            "GetAdaptation": [self._name],
            "ListAdaptations": [self._page_size, self._page_token],
            "CancelAdaptation": [self._name],
            "DeleteGenerator": [self._delete_id],
        }

    # Valid requests, one field of which each case breaks.
    def base(self, method: str) -> Any:
        age = E.AttributeStep(attribute="age", strength=1.5)
        return {
            "Generate": lambda: E.GenerateRequest(seeds=[self.rng.randrange(2**32)]),
            "Invert": lambda: E.InvertRequest(image=C.Image(data=self.inputs.png)),
            "Edit": lambda: E.EditRequest(latent=C.LatentRef(seed=7), edits=[age]),
            "Animate": lambda: E.AnimateRequest(latent=C.LatentRef(seed=7), edits=[age], frames=2),
            "ListGenerators": E.ListGeneratorsRequest,
            "ListAttributes": E.ListAttributesRequest,
            "CreateAdaptation": lambda: A.CreateAdaptationRequest(style_image=C.Image(data=self.inputs.png),
                                                                  idempotency_key="fuzz-base", display_name="fuzz"),
            "GetAdaptation": lambda: A.GetAdaptationRequest(name=self.job),
            "ListAdaptations": lambda: A.ListAdaptationsRequest(page_size=10),
            "CancelAdaptation": lambda: A.CancelAdaptationRequest(name=self.job),
            "DeleteGenerator": lambda: A.DeleteGeneratorRequest(generator_id="gen-" + "0" * 20),
        }[method]()

    # -- one field each; each returns the field's path (None: no single field to name)
    def _generator_id(self, r: Any) -> str:
        r.generator_id = bad_string(self.rng, ("demo", "gen-unknown", "gen-" + "f" * 124))
        return "generator_id"

    def _base_generator_id(self, r: Any) -> str:
        r.base_generator_id = bad_string(self.rng, ("gen-unknown", "bad id!"))
        return "base_generator_id"

    def _seeds(self, r: Any) -> str:
        del r.seeds[:]
        r.seeds.extend(seed_list(self.rng))
        return "seeds"

    def _truncation(self, r: Any) -> str:
        r.truncation = self.rng.choice(BAD_FLOATS)
        return "truncation"

    def _format(self, r: Any) -> str:
        r.format = self.rng.choice(BAD_ENUMS + [C.IMAGE_FORMAT_GIF, C.IMAGE_FORMAT_JPEG])
        return "format"

    def _frame_format(self, r: Any) -> str:
        r.frame_format = self.rng.choice(BAD_ENUMS + [C.IMAGE_FORMAT_GIF])
        return "frame_format"

    def _animation(self, r: Any) -> str:
        r.animation = self.rng.choice(BAD_ENUMS[:3] + [3, 99])
        return "animation"

    def _frames(self, r: Any) -> str:
        r.frames = self.rng.choice(BAD_INT32)
        return "frames"

    def _start_end(self, r: Any) -> str:
        name = self.rng.choice(("start", "end"))
        setattr(r, name, self.rng.choice([float("nan"), float("inf"), float("-inf"), 10.5, -11.0, 3.4e38]))
        return name

    def _duration(self, r: Any) -> str:
        r.frame_duration_ms = self.rng.choice([-1, 9, 10_001, 2**31 - 1, -(2**31)])
        return "frame_duration_ms"

    def _skip_frames(self, r: Any) -> str:
        r.skip_frames = True  # with no animation: nothing would be sent
        return "skip_frames"

    def _image(self, r: Any, name: str = "image") -> str | None:
        msg = getattr(r, name)
        if self.rng.random() < 0.3:
            msg.data = self.inputs.corrupted(self.rng)
            return None  # may still decode: any typed answer
        label = self.rng.choice([k for k in self.inputs.bad_images if k != "17 MiB"])
        msg.data = self.inputs.bad_images[label][0]
        return f"{name}.data"

    def _style_image(self, r: Any) -> str | None:
        return self._image(r, "style_image")

    def _image_meta(self, r: Any) -> None:
        r.image.format = self.rng.choice(BAD_ENUMS)
        r.image.width, r.image.height = self.rng.choice(BAD_INT32), self.rng.choice(BAD_INT32)
        r.align = self.rng.random() < 0.2
        r.return_aligned = self.rng.random() < 0.5
        return None  # output-only fields the server ignores: still valid

    def _latent(self, r: Any) -> str:
        bad_latent_ref(self.rng, r.latent)
        return "latent"

    def _edits(self, r: Any) -> str | None:
        kind = self.rng.randrange(6)
        if kind == 0:
            del r.edits[:]
            if isinstance(r, E.AnimateRequest):
                return "edits"  # an animation needs a step; an edit without one re-renders
            return None
        if kind == 1:
            r.edits.extend([E.AttributeStep(attribute="age", strength=1.0)] * self.rng.choice((17, 100, 100_000)))
            return "edits"
        i = self.rng.randrange(3)
        while len(r.edits) <= i:
            r.edits.add(attribute=self.rng.choice(("age", "smile")), strength=self.rng.uniform(-3, 3))
        name = bad_step(self.rng, r.edits[i])
        return None if name is None else f"edits[{i}].{name}"

    def _idempotency_key(self, r: Any) -> str:
        r.idempotency_key = self.rng.choice(["", "x" * 257, "k" * 10_240, HUGE, "é" * 256, "\x00", "😀" * 64])
        return "idempotency_key"

    def _display_name(self, r: Any) -> str:
        r.display_name = self.rng.choice(["x" * 201, "k" * 10_240, HUGE, "\x00\x1b[2J", "😀" * 200, "é" * 201])
        return "display_name"

    def _steps(self, r: Any) -> str:
        r.options.steps = self.rng.choice([-1, 10_001, 2**31 - 1, -(2**31), 3])
        return "options.steps"

    def _learning_rate(self, r: Any) -> str:
        r.options.learning_rate = self.rng.choice(BAD_FLOATS + [1.5, -0.1])
        return "options.learning_rate"

    def _name(self, r: Any) -> str:
        r.name = bad_string(self.rng, ("job-" + "0" * 20, "job-", self.job + "x", self.job.upper(), self.job + "\x00"))
        return "name"

    def _page_size(self, r: Any) -> str:
        r.page_size = self.rng.choice([-1, 201, 2**31 - 1, -(2**31), 200, 1])
        return "page_size"

    def _page_token(self, r: Any) -> str:
        r.page_token = self.rng.choice(PAGE_TOKENS)
        return "page_token"

    def _delete_id(self, r: Any) -> str:
        r.generator_id = bad_string(self.rng, ("demo", "gen-unknown", "..", "a" * 129))
        return "generator_id"

    # -- metadata and bytes
    def bad_auth(self) -> tuple[tuple | None, frozenset]:
        key = self.key
        values = ["", "Bearer", "Bearer ", "Basic " + key, "Bearer " + key[:-1], "Bearer " + key + "x", key,
                  "Token " + key, "Bearer " + "k" * 16, "Bearer " + "k" * 4000, "Bearer " + key.upper(),
                  "Bearer " + key + " extra", "Bearer Bearer " + key, "BearerX " + key]
        choice = self.rng.randrange(len(values) + 3)
        if choice == len(values):
            return None, frozenset({S.UNAUTHENTICATED})
        if choice == len(values) + 1:
            return (("x-api-key", key),), frozenset({S.UNAUTHENTICATED})
        if choice == len(values) + 2:  # over grpc-core's metadata limits: its own RESOURCE_EXHAUSTED
            return (("authorization", "Bearer " + "k" * 20_000),), frozenset({S.UNAUTHENTICATED, S.RESOURCE_EXHAUSTED})
        return (("authorization", values[choice]),), frozenset({S.UNAUTHENTICATED})

    def garbage(self, method: str) -> bytes:
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            return rng.randbytes(rng.randint(1, 600))
        if kind == 1:  # a valid request's bytes, damaged
            data = bytearray(self.build(method, mutate=False).request.SerializeToString() or b"\x08\x01")
            for _ in range(rng.randint(1, 6)):
                op, at = rng.randrange(3), rng.randrange(len(data) or 1)
                if op == 0 and data:
                    data[at % len(data)] = rng.randrange(256)
                elif op == 1:
                    data.insert(at, rng.randrange(256))
                else:
                    del data[at:]
            return bytes(data)
        crafted = [b"\x0a\x02\xff\xfe",  # field 1, invalid UTF-8
                   b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
                   b"\x08\x80\x80\x80",  # a varint that never ends
                   b"\x0b" * 200 + b"\x0c" * 200,  # nested groups past the recursion limit
                   b"\x00",  # field number 0
                   b"\xf8\xff\xff\xff\x0f\x01",  # field number 2^29 - 1 (unknown: ignored)
                   b"\x12\x03\x0a\x01\xc0",  # field 2's message, its field 1 invalid UTF-8
                   b"\x0d\x00\x00\x00",  # fixed32 cut short
                   ]
        return rng.choice(crafted)

    def build(self, method: str, mutate: bool = True) -> Case:
        request = self.base(method)
        if not mutate:
            return Case(method, "valid", request, self.auth)
        mutators = self.mutators[method]
        roll = self.rng.random()
        if not mutators or roll < 0.12:
            if self.rng.random() < 0.5:
                metadata, codes = self.bad_auth()
                return Case(method, f"auth {metadata!r:.60}", request, metadata, codes=codes)
            return Case(method, "garbage bytes", self.garbage(method), self.auth)
        if roll < 0.27:  # several fields at once: any typed answer, a field named if INVALID_ARGUMENT
            for mutate_one in self.rng.choices(mutators, k=self.rng.randint(2, 4)):
                mutate_one(request)
            return Case(method, "several fields", request, self.auth)
        mutate_one = self.rng.choice(mutators)
        field = mutate_one(request)
        return Case(method, f"{mutate_one.__name__[1:]}", request, self.auth, field=field)

    def fixed(self) -> list[Case]:
        """Cases the campaign always has, whatever the seed: each class of input the brief lists."""
        auth, out = self.auth, []
        for method in METHODS:
            out.append(Case(method, "no metadata", self.base(method), None, codes=frozenset({S.UNAUTHENTICATED})))
            out.append(Case(method, "unknown key", self.base(method), (("authorization", "Bearer " + "n" * 32),),
                            codes=frozenset({S.UNAUTHENTICATED})))
            out.append(Case(method, "not bearer", self.base(method), (("authorization", "Basic " + self.key),),
                            codes=frozenset({S.UNAUTHENTICATED})))
            for raw in (b"\xff" * 10, b"\x0a\x02\xff\xfe", bytes(range(256)), b"\x0b" * 200):
                out.append(Case(method, f"raw {raw[:8]!r}", raw, auth))
        for method, name in (("Invert", "image"), ("CreateAdaptation", "style_image")):
            for label, (data, codes) in self.inputs.bad_images.items():
                request = self.base(method)
                getattr(request, name).data = data
                out.append(Case(method, label, request, auth, field=f"{name}.data", codes=codes))
        for layers in LAYERS:
            for method in ("Edit", "Animate"):
                request = self.base(method)
                request.edits[0].layers = layers
                out.append(Case(method, f"layers {layers[:20]!r}", request, auth, field="edits[0].layers"))
        for seeds in ([], [2**32], [2**64 - 1], [1] * 65, list(range(100_000)), [0] * 1_000_000):
            out.append(Case("Generate", f"{len(seeds)} seeds", E.GenerateRequest(seeds=seeds), auth, field="seeds"))
        big = C.Latent(shape=[2048, 1024], values=[0.0] * (2048 * 1024))  # the most values latent_array takes
        for latent in (big, C.Latent(shape=[1 << 30, 1 << 30, 16]), C.Latent(shape=[2**31 - 1] * 3),
                       C.Latent(shape=[1] * 100_000), C.Latent(shape=[8, 64], values=[float("nan")] * 512)):
            request = E.EditRequest(latent=C.LatentRef(inline=latent))
            out.append(Case("Edit", f"latent {list(latent.shape)[:3]}", request, auth, field="latent.inline"))
        for token in PAGE_TOKENS:
            out.append(Case("ListAdaptations", f"token {token[:20]!r}", A.ListAdaptationsRequest(page_token=token),
                            auth, field="page_token"))
        for conditions in (["smile"] * 3, ["age"], ["wings"], ["eyeglasses"], ["smile"] * 9, ["smile"] * 100_000):
            for method in ("Edit", "Animate"):  # 3 equal normals: linearly dependent; eyeglasses: Z only
                request = self.base(method)
                request.edits[0].conditions.extend(conditions)
                out.append(Case(method, f"conditions {conditions[:3]}", request, auth, field="edits[0].conditions"))
        long_name = E.AttributeStep(attribute="n" * 10_240, strength=1.0)
        out.append(Case("Edit", "10 kB attribute", E.EditRequest(latent=C.LatentRef(seed=1), edits=[long_name]), auth,
                        field="edits[0].attribute"))
        for value in ("", "n" * 10_240, HUGE, "😀" * 5000):  # oversize strings in every string field
            for method, field_name in (("Generate", "generator_id"), ("Invert", "generator_id"),
                                       ("Edit", "generator_id"), ("Animate", "generator_id"),
                                       ("ListAttributes", "generator_id"), ("CreateAdaptation", "base_generator_id"),
                                       ("CreateAdaptation", "idempotency_key"), ("CreateAdaptation", "display_name"),
                                       ("GetAdaptation", "name"), ("CancelAdaptation", "name"),
                                       ("ListAdaptations", "page_token"), ("DeleteGenerator", "generator_id")):
                request = self.base(method)
                setattr(request, field_name, value)
                out.append(Case(method, f"{len(value)} chars in {field_name}", request, auth, field=field_name))
            for method in ("Edit", "Animate"):
                for step_field in ("attribute", "layers", "space"):
                    request = self.base(method)
                    setattr(request.edits[0], step_field, value)
                    out.append(Case(method, f"{len(value)} chars in {step_field}", request, auth,
                                    field=f"edits[0].{step_field}"))
                request = self.base(method)
                request.edits[0].conditions.append(value)
                out.append(Case(method, f"{len(value)} chars in a condition", request, auth,
                                field="edits[0].conditions"))
                request = self.base(method)
                request.latent.latent_id = value
                out.append(Case(method, f"{len(value)} chars in latent_id", request, auth, field="latent.latent_id"))
        return out


# -- checks ---------------------------------------------------------------------------------------

_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*): ")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[\d+\])?")


def field_path_resolves(path: str, descriptor: Any) -> bool:
    """'edits[0].conditions[1]' against the request's descriptor: each segment a field, [i] only on repeated."""
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        field = None if descriptor is None or match is None else descriptor.fields_by_name.get(match.group(1))
        if field is None or (match.group(2) and not field.is_repeated):
            return False
        descriptor = field.message_type
    return True


def problems(case: Case, code: grpc.StatusCode, details: str) -> list[str]:
    found = []
    raw = isinstance(case.request, bytes)
    allowed = case.codes or (TYPED | ({S.FAILED_PRECONDITION} if case.method in PRECONDITION_RPCS else set()))
    if case.deadline is not None and case.deadline < 1:
        allowed = allowed | {S.DEADLINE_EXCEEDED}
    if raw and code == S.INTERNAL and details == DESERIALIZE_ERROR:
        pass  # grpcio's own answer to undecodable bytes, before any servicer code runs
    elif code not in allowed:
        found.append(f"code {code.name} not in {sorted(c.name for c in allowed)}")
    if len(details.encode("utf-8")) >= MAX_MESSAGE_BYTES:
        found.append(f"message of {len(details.encode('utf-8'))} bytes")
    if code == S.INVALID_ARGUMENT:
        match = _FIELD.match(details)
        descriptor = REQUEST_TYPES[case.method].DESCRIPTOR
        if match is None or not field_path_resolves(match.group(1), descriptor):
            found.append("INVALID_ARGUMENT without a field of the request first")
        elif case.field and not match.group(1).startswith(case.field) and case.field not in details:
            found.append(f"INVALID_ARGUMENT names {match.group(1)}, not the broken {case.field}")
    return found


class Sender:
    def __init__(self, channel: grpc.Channel):
        self.stubs = {"Editor": editor_pb2_grpc.EditorStub(channel),
                      "Adaptation": adaptation_pb2_grpc.AdaptationStub(channel)}
        self.raw = {}
        for name, (service, method) in METHODS.items():
            path = f"/{SERVICES[service].full_name}/{name}"
            kind = channel.unary_stream if method.server_streaming else channel.unary_unary
            self.raw[name] = kind(path, request_serializer=None, response_deserializer=None)

    def send(self, case: Case) -> tuple[grpc.StatusCode, str, float]:
        service, method = METHODS[case.method]
        call = self.raw[case.method] if isinstance(case.request, bytes) else getattr(self.stubs[service], case.method)
        started = time.perf_counter()
        # Without a deadline on the wire, a watchdog here cancels a call the server never answers.
        watchdog = None
        try:
            if method.server_streaming:
                reply = call(case.request, metadata=case.metadata, timeout=case.deadline)
                if case.deadline is None:
                    watchdog = threading.Timer(WATCHDOG_S, reply.cancel)
                    watchdog.start()
                for _ in reply:
                    pass
            elif case.deadline is None:
                future = call.future(case.request, metadata=case.metadata)
                watchdog = threading.Timer(WATCHDOG_S, future.cancel)
                watchdog.start()
                future.result()
            else:
                call(case.request, metadata=case.metadata, timeout=case.deadline)
            code, details = S.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        except grpc.FutureCancelledError:
            code, details = S.CANCELLED, f"no answer within {WATCHDOG_S:.0f} s (cancelled by the test)"
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return code, details, time.perf_counter() - started


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _logged_rpcs(log: Path, offset: int) -> tuple[Counter, list[tuple[float, str, str]]]:
    """The editor's own record of what it served: (method, code) counts and, for each rejection it made
    (not the caller's own deadline or cancellation), its handling time in ms."""
    codes: Counter = Counter()
    rejections = []
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "rpc":
                codes[(record.get("method"), record.get("code"))] += 1
                if record.get("code") not in ("OK", "DEADLINE_EXCEEDED", "CANCELLED"):
                    rejections.append((float(record["ms"]), record["method"], record["code"]))
    return codes, sorted(rejections)


# -- the campaign ---------------------------------------------------------------------------------

def test_no_request_takes_the_service_down(stack):
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(stack.target, options=options) as channel:
        sender = Sender(channel)
        auth = (("authorization", f"Bearer {stack.api_key}"),)
        job = sender.stubs["Adaptation"].CreateAdaptation(
            A.CreateAdaptationRequest(style_image=C.Image(data=png_bytes(32)), idempotency_key="fuzz-base"),
            metadata=auth, timeout=30)
        campaign = Campaign(stack.api_key, job.name, Inputs(), random.Random(SEED))
        # Warm-up, not measured: one valid call per RPC (and an aligned inversion: the face detector loads
        # on first use), so lazily loaded code and connections do not count as growth or as slow rejections.
        for method in METHODS:
            code, details, _ = sender.send(campaign.build(method, mutate=False))
            assert code in (S.OK, S.NOT_FOUND), (method, code, details)
        sender.send(Case("Invert", "warm-up", E.InvertRequest(image=C.Image(data=png_bytes(64)), align=True), auth))

        pid = int((stack.run_dir / "editor.pid").read_text())
        log = stack.run_dir / "editor.log"
        log_offset = log.stat().st_size
        rss_before = _rss_mb(pid)

        cases = campaign.fixed()
        names = list(METHODS)
        cases += [campaign.build(names[i % len(names)]) for i in range(RANDOM_CASES)]
        deadlines = random.Random(SEED + 1)
        for case in cases:  # grpc's default is no deadline; a tiny one makes the client give up mid-call
            roll = deadlines.random()
            if roll < 0.1:
                case.deadline = None
            elif roll < 0.13:
                case.deadline = deadlines.uniform(0.001, 0.05)  # DEADLINE_EXCEEDED allowed: the client's own
        counts: Counter = Counter()
        seen: Counter = Counter()
        failures = []
        rejections: list[tuple[float, str]] = []
        started = time.perf_counter()
        rss_after_pass = []
        for _ in range(2):  # the same campaign twice: growth over the second pass is what a leak would be
            for case in cases:
                code, details, seconds = sender.send(case)
                counts[case.method] += 1
                seen[code.name] += 1
                if code != S.OK:
                    rejections.append((seconds, f"{case.method} [{case.label}]"))
                for problem in problems(case, code, details):
                    failures.append(f"{case.method} [{case.label}]: {problem} -- {code.name} {details[:200]!r}")
            rss_after_pass.append(_rss_mb(pid))
        elapsed = time.perf_counter() - started
        rss_after = rss_after_pass[-1]
        print(f"\nfuzz: {len(cases)} requests twice in {elapsed:.1f} s; per RPC {dict(counts)}; codes {dict(seen)}; "
              f"editor RSS {rss_before:.0f} -> {rss_after_pass[0]:.0f} -> {rss_after:.0f} MB")
        rejections.sort()
        print(f"rejections: median {rejections[len(rejections) // 2][0] * 1000:.1f} ms, "
              f"slowest {rejections[-1][0] * 1000:.0f} ms ({rejections[-1][1]})")

        assert not failures, f"{len(failures)} bad responses:\n" + "\n".join(failures[:40])
        assert len(cases) >= 1000 and set(counts) == set(METHODS) and min(counts.values()) >= 200, counts
        # The editor never went down: same process (a restart by the supervisor would hide a crash) ...
        assert int((stack.run_dir / "editor.pid").read_text()) == pid and Path(f"/proc/{pid}").exists()
        # ... nothing it answered was untyped (its own log of every RPC it served) ...
        logged, handled = _logged_rpcs(log, log_offset)
        untyped = {k: n for k, n in logged.items() if k[1] in ("INTERNAL", "UNKNOWN")}
        assert not untyped, untyped
        # ... each rejection cost it little: its own handling time (the log's, so loopback transfer of a
        # 17 MiB body on a busy CI machine does not count; measured median ~1 ms, so 0.5 s is a bound on
        # work done, e.g. a synthesis or a huge allocation before the check, not a speed goal) ...
        print(f"editor's own handling of {len(handled)} rejections: median {handled[len(handled) // 2][0]:.1f} ms, "
              f"slowest {handled[-1][0]:.1f} ms {handled[-1][1:]}")
        assert len(handled) >= 1000 and handled[-1][0] < MAX_REJECTION_MS, handled[-5:]
        # ... it kept no memory of the campaign ...
        assert rss_after - rss_before <= MAX_RSS_GROWTH_MB, (rss_before, rss_after_pass)
        assert rss_after - rss_after_pass[0] <= MAX_SECOND_PASS_GROWTH_MB, (rss_before, rss_after_pass)
        # ... and it still serves.
        assert probe.check(stack.target, timeout_s=5)
        for deadline in (DEADLINE_S, None):
            reply = sender.stubs["Editor"].Generate.future(E.GenerateRequest(seeds=[1, 2]), metadata=auth,
                                                           timeout=deadline).result(timeout=WATCHDOG_S)
            assert [f.seed for f in reply.faces] == [1, 2]
            assert all(Image.open(io.BytesIO(f.image.data)).size == (32, 32) for f in reply.faces)
