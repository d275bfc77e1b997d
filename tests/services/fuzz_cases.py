"""The fuzz campaign's cases (tests/services/test_fuzz.py): seeded malformed requests over every RPC."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from faceedit_client.v1 import adaptation_pb2 as A
from faceedit_client.v1 import common_pb2 as C
from faceedit_client.v1 import editor_pb2 as E

from fuzz_inputs import Inputs

DEADLINE_S = 30.0
S = grpc.StatusCode
SERVICES = {"Editor": E.DESCRIPTOR.services_by_name["Editor"],
            "Adaptation": A.DESCRIPTOR.services_by_name["Adaptation"]}
METHODS = {m.name: (service, m) for service, d in SERVICES.items() for m in d.methods}
REQUEST_TYPES = {name: getattr(E if service == "Editor" else A, m.input_type.name)
                 for name, (service, m) in METHODS.items()}


# -- inputs ---------------------------------------------------------------------------------------

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
            "Invert": [self._generator_id, self._image, self._format, self._image_meta, self._mode],
            "Edit": [self._generator_id, self._latent, self._edits, self._format, self._paste_back],
            "Animate": [self._generator_id, self._latent, self._edits, self._frame_format, self._animation,
                        self._frames, self._start_end, self._duration, self._skip_frames, self._paste_back],
            "ListGenerators": [],
            "ListAttributes": [self._generator_id],
            "CreateAdaptation": [self._base_generator_id, self._style_image, self._idempotency_key,
                                 self._display_name, self._steps, self._learning_rate, self._method,
                                 self._tuning_latent_id],
            "GetAdaptation": [self._name],
            "ListAdaptations": [self._page_size, self._page_token],
            "CancelAdaptation": [self._name],
            "DeleteGenerator": [self._delete_id],
            "DeleteLatent": [self._latent_id_to_delete],
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
            "DeleteLatent": lambda: E.DeleteLatentRequest(latent_id="lat-" + "0" * 32),
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

    def _mode(self, r: Any) -> str:
        r.mode = self.rng.choice(BAD_ENUMS[:3] + [2, 99])  # OPTIMIZE is valid (and slow): not a fuzz case
        return "mode"

    def _paste_back(self, r: Any) -> str:
        r.paste_back = True  # for a seed latent: there is no photo to paste into
        return "paste_back"

    def _method(self, r: Any) -> str:
        r.method = self.rng.choice(BAD_ENUMS[:3] + [2, 99])
        return "method"

    def _tuning_latent_id(self, r: Any) -> str:
        r.latent_id = bad_string(self.rng, ("lat-" + "0" * 32, "lat-", "x"))  # DIFA takes no latent
        return "latent_id"

    def _latent_id_to_delete(self, r: Any) -> str:
        r.latent_id = bad_string(self.rng, ("lat-" + "f" * 32, "lat-", "../x", "a" * 129))
        return "latent_id"

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
                                       ("ListAdaptations", "page_token"), ("DeleteGenerator", "generator_id"),
                                       ("DeleteLatent", "latent_id"), ("CreateAdaptation", "latent_id")):
                request = self.base(method)
                setattr(request, field_name, value)
                out.append(Case(method, f"{len(value)} chars in {field_name}", request, auth, field=field_name))
            for method in ("Edit", "Animate"):
                for step_field in ("attribute", "layers", "space", "text", "neutral"):
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
