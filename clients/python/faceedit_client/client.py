"""Typed Python client of the faceedit gRPC API: deadlines, retries on UNAVAILABLE, idempotent job creation.

Needs grpcio, protobuf and numpy only (no torch, no faceedit library): the faceedit.v1 stubs ship in
faceedit_client.v1."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from faceedit_client.v1 import adaptation_pb2, adaptation_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc

T = TypeVar("T")

FORMATS = {"png": common_pb2.IMAGE_FORMAT_PNG, "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
           "webp": common_pb2.IMAGE_FORMAT_WEBP, "gif": common_pb2.IMAGE_FORMAT_GIF}
_FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
ANIMATIONS = {"": editor_pb2.ANIMATION_FORMAT_NONE, "gif": editor_pb2.ANIMATION_FORMAT_GIF,
              "webp": editor_pb2.ANIMATION_FORMAT_WEBP}
STATES = {v: k.removeprefix("ADAPTATION_STATE_") for k, v in adaptation_pb2.AdaptationState.items()}
INVERSION_MODES = {"encoder": editor_pb2.INVERSION_MODE_ENCODER, "optimize": editor_pb2.INVERSION_MODE_OPTIMIZE}


class FaceEditClientError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's text (it names the field).

    Not the library's `faceedit.errors.FaceEditError`: this one is what a remote call raises."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(f"{code.name}: {message}" + (f" (request {request_id})" if request_id else ""))


class AdaptationFailed(FaceEditClientError):
    """wait_for_adaptation saw the job end in FAILED or CANCELLED."""


# -- results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    """An image from the service: encoded bytes (PNG, JPEG, WebP or GIF) and its size, as every reply states it."""

    data: bytes
    format: str
    width: int
    height: int

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.data)


@dataclass(frozen=True)
class Face:
    seed: int
    image: Image
    latent_id: str
    latent: np.ndarray | None = None  # [1, n_latent, style_dim] when asked for


@dataclass(frozen=True)
class Inversion:
    latent_id: str
    reconstruction: Image
    latent: np.ndarray | None = None
    aligned: Image | None = None


@dataclass(frozen=True)
class EditResult:
    image: Image
    latent_id: str
    latent: np.ndarray | None = None


@dataclass(frozen=True)
class Step:
    """One attribute step for edit/animate; or, with `text` (and attribute ""), a text prompt (StyleCLIP):
    `Step("", 4.0, text="a smiling face")` where `text_edits()` says the generator has them."""

    attribute: str
    strength: float
    layers: str = ""
    conditions: Sequence[str] = ()
    space: str = ""  # "w" or "z" for an attribute listed in both; "": W when there is one
    text: str = ""
    neutral: str = ""  # "": "a face"
    threshold: float = 0.0  # 0: 0.1


@dataclass(frozen=True)
class Frame:
    """One frame of an animation: its index, its position t along the edit, its image."""

    index: int
    t: float
    image: Image


@dataclass(frozen=True)
class Attribute:
    """An editable attribute of a generator family, as ListAttributes reports it."""

    name: str
    accuracy: float | None  # None: the boundary file records none (official direction files)
    recommended_min: float
    recommended_max: float
    default_layers: str
    description: str
    source: str = ""  # the file it came from
    format: str = ""  # faceedit, interfacegan, e4e or ganspace
    space: str = "w"  # "z": an InterfaceGAN Z boundary, which edits seed latents only
    conditioned_variants: tuple[str, ...] = ()  # precomputed conditions, e.g. ("eyeglasses",)


@dataclass(frozen=True)
class GeneratorInfo:
    id: str
    kind: str  # "base" or "adapted"
    family: str
    size: int
    n_latent: int
    style_dim: int
    display_name: str = ""


@dataclass(frozen=True)
class Adaptation:
    """A job, as google.longrunning.Operation: state, progress, done, and a generator id or an error."""

    name: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED
    progress: float
    done: bool
    message: str = ""
    generator_id: str = ""
    error_code: int = 0
    error_message: str = ""
    idempotency_key: str = ""
    display_name: str = ""
    generator_deleted: bool = False  # SUCCEEDED, and its generator has been deleted since
    pivot_latent_id: str = ""  # a tuning job's: the photo's latent on the tuned generator


@dataclass
class RetryPolicy:
    """Retries only UNAVAILABLE (the server or a dependency is down or restarting): other codes mean the
    request itself is wrong or already failed, and repeating it cannot help."""

    attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield random.uniform(0.5, 1.0) * delay  # jitter: clients restarting together spread out
            delay = min(delay * self.multiplier, self.max_backoff_s)


def _image(msg: common_pb2.Image) -> Image:
    return Image(msg.data, _FORMAT_NAMES.get(msg.format, ""), msg.width, msg.height)


def _latent(msg: common_pb2.Latent) -> np.ndarray | None:
    if not msg.shape:
        return None
    return np.asarray(msg.values, dtype=np.float32).reshape(list(msg.shape))


def _latent_msg(ws: np.ndarray) -> common_pb2.Latent:
    ws = np.asarray(ws, dtype=np.float32)
    return common_pb2.Latent(shape=list(ws.shape), values=ws.reshape(-1).tolist())


def _ref(latent_id: str | None, seed: int | None, latent: np.ndarray | None, truncation: float
         ) -> common_pb2.LatentRef:
    if sum(x is not None for x in (latent_id, seed, latent)) != 1:
        raise ValueError("pass exactly one of latent_id, seed, latent")
    if latent_id is not None:
        return common_pb2.LatentRef(latent_id=latent_id)
    if seed is not None:
        return common_pb2.LatentRef(seed=seed, truncation=truncation)
    return common_pb2.LatentRef(inline=_latent_msg(latent))


def _steps(steps: Sequence[Step]) -> list[editor_pb2.AttributeStep]:
    return [editor_pb2.AttributeStep(attribute=s.attribute, strength=s.strength, layers=s.layers,
                                     conditions=list(s.conditions), space=s.space, text=s.text, neutral=s.neutral,
                                     threshold=s.threshold) for s in steps]


def _operation(op: adaptation_pb2.AdaptationOperation) -> Adaptation:
    which = op.WhichOneof("result")
    return Adaptation(op.name, STATES.get(op.metadata.state, "UNSPECIFIED"), op.metadata.progress, op.done,
                      op.metadata.message, op.response.generator_id if which == "response" else "",
                      op.error.code if which == "error" else 0, op.error.message if which == "error" else "",
                      op.metadata.idempotency_key, op.metadata.display_name,
                      which == "response" and op.response.generator_deleted,
                      op.response.pivot_latent_id if which == "response" else "")


class FaceEditClient:
    """`with FaceEditClient("127.0.0.1:50051", api_key) as c: c.generate([1, 2])`.

    Every call has a deadline (`timeout_s`, overridable per call); UNAVAILABLE is retried with
    exponential backoff and jitter. Errors surface as FaceEditClientError with the status code.
    """

    def __init__(self, target: str, api_key: str, timeout_s: float = 30.0, retry: RetryPolicy | None = None,
                 max_message_bytes: int = 32 << 20, channel: grpc.Channel | None = None):
        self.channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.editor = editor_pb2_grpc.EditorStub(self.channel)
        self.adaptation = adaptation_pb2_grpc.AdaptationStub(self.channel)

    def __enter__(self) -> FaceEditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, method: Callable[..., T], request: object, timeout_s: float | None) -> T:
        delays = self.retry.delays()
        request_id = uuid.uuid4().hex[:16]  # the same id on every retry: one request in the logs
        while True:
            try:
                return method(request, timeout=timeout_s or self.timeout_s,
                              metadata=(*self._metadata, ("x-request-id", request_id)))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        self.retry.sleep(delay)
                        continue
                raise FaceEditClientError(exc.code(), exc.details() or "", request_id) from None

    # -- Editor -------------------------------------------------------------------------------
    def generate(self, seeds: Sequence[int], generator_id: str = "", truncation: float = 0.0,
                 format: str = "png", return_latents: bool = False, timeout_s: float | None = None) -> list[Face]:
        reply = self._call(self.editor.Generate, editor_pb2.GenerateRequest(
            generator_id=generator_id, seeds=list(seeds), truncation=truncation, format=FORMATS[format],
            return_latents=return_latents), timeout_s)
        return [Face(f.seed, _image(f.image), f.latent_id, _latent(f.latent)) for f in reply.faces]

    def invert(self, image: bytes, align: bool = False, generator_id: str = "", format: str = "png",
               return_latent: bool = False, return_aligned: bool = False, mode: str = "encoder",
               timeout_s: float | None = None) -> Inversion:
        """`align=True` also keeps the photo with the latent (for `paste_back`, until `delete_latent` or the
        latent's TTL); `mode="optimize"` refines the encoder's code against the photo within the deadline."""
        reply = self._call(self.editor.Invert, editor_pb2.InvertRequest(
            image=common_pb2.Image(data=image), align=align, generator_id=generator_id, format=FORMATS[format],
            return_latent=return_latent, return_aligned=return_aligned, mode=INVERSION_MODES[mode]), timeout_s)
        return Inversion(reply.latent_id, _image(reply.reconstruction), _latent(reply.latent),
                         _image(reply.aligned) if reply.HasField("aligned") else None)

    def edit(self, steps: Sequence[Step], latent_id: str | None = None, seed: int | None = None,
             latent: np.ndarray | None = None, truncation: float = 0.0, generator_id: str = "",
             format: str = "png", return_latent: bool = False, paste_back: bool = False,
             timeout_s: float | None = None) -> EditResult:
        """`paste_back=True`: the caller's whole photo with the edited face blended in (a latent from
        `invert(align=True)`, an edit of one, or a tuning job's pivot)."""
        reply = self._call(self.editor.Edit, editor_pb2.EditRequest(
            generator_id=generator_id, latent=_ref(latent_id, seed, latent, truncation), edits=_steps(steps),
            format=FORMATS[format], return_latent=return_latent, paste_back=paste_back), timeout_s)
        return EditResult(_image(reply.image), reply.latent_id, _latent(reply.latent))

    def animate(self, steps: Sequence[Step], latent_id: str | None = None, seed: int | None = None,
                latent: np.ndarray | None = None, truncation: float = 0.0, generator_id: str = "",
                frames: int = 16, start: float = 0.0, end: float = 1.0, frame_format: str = "png",
                animation: str = "", skip_frames: bool = False, frame_duration_ms: int = 0,
                paste_back: bool = False, timeout_s: float | None = None) -> Iterator[Frame | Image]:
        """Yields Frame objects as they arrive, then (with `animation`) one Image of the GIF/WebP.
        Retries UNAVAILABLE only before the first message: a half-delivered stream is not repeated."""
        request = editor_pb2.AnimateRequest(
            generator_id=generator_id, latent=_ref(latent_id, seed, latent, truncation), edits=_steps(steps),
            frames=frames, start=start, end=end, frame_format=FORMATS[frame_format],
            animation=ANIMATIONS[animation], skip_frames=skip_frames, frame_duration_ms=frame_duration_ms,
            paste_back=paste_back)
        delays = self.retry.delays()
        request_id = uuid.uuid4().hex[:16]
        while True:
            received = False
            call = self.editor.Animate(request, timeout=timeout_s or self.timeout_s,
                                       metadata=(*self._metadata, ("x-request-id", request_id)))
            try:
                for item in call:
                    received = True
                    if item.WhichOneof("item") == "frame":
                        yield Frame(item.frame.index, item.frame.t, _image(item.frame.image))
                    else:
                        yield _image(item.animation)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not received:
                    delay = next(delays, None)
                    if delay is not None:
                        self.retry.sleep(delay)
                        continue
                raise FaceEditClientError(exc.code(), exc.details() or "", request_id) from None
            finally:
                call.cancel()  # a caller that stops iterating early frees the server's stream now

    def list_generators(self, timeout_s: float | None = None) -> list[GeneratorInfo]:
        reply = self._call(self.editor.ListGenerators, editor_pb2.ListGeneratorsRequest(), timeout_s)
        kinds = {common_pb2.GENERATOR_KIND_BASE: "base", common_pb2.GENERATOR_KIND_ADAPTED: "adapted"}
        return [GeneratorInfo(g.id, kinds.get(g.kind, ""), g.family, g.size, g.n_latent, g.style_dim, g.display_name)
                for g in reply.generators]

    def list_attributes(self, generator_id: str = "", timeout_s: float | None = None) -> list[Attribute]:
        reply = self._call(self.editor.ListAttributes, editor_pb2.ListAttributesRequest(generator_id=generator_id),
                           timeout_s)
        return [Attribute(a.name, a.accuracy if a.accuracy_known else None, a.recommended_min, a.recommended_max,
                          a.default_layers, a.description, a.source, a.format, a.space or "w",
                          tuple(a.conditioned_variants)) for a in reply.attributes]

    def text_edits(self, generator_id: str = "", timeout_s: float | None = None) -> bool:
        """Whether `Step(text=...)` works for this generator (its text-edit relevance is prepared)."""
        return self._call(self.editor.ListAttributes, editor_pb2.ListAttributesRequest(generator_id=generator_id),
                          timeout_s).text_edits

    def delete_latent(self, latent_id: str, timeout_s: float | None = None) -> None:
        """Forget a latent now, with the photo kept for it (its edits lose the photo too)."""
        self._call(self.editor.DeleteLatent, editor_pb2.DeleteLatentRequest(latent_id=latent_id), timeout_s)

    # -- Adaptation ---------------------------------------------------------------------------
    def create_adaptation(self, style_image: bytes, idempotency_key: str | None = None,
                          base_generator_id: str = "", display_name: str = "", steps: int = 0,
                          learning_rate: float = 0.0, timeout_s: float | None = None) -> Adaptation:
        """Start a job. The key (generated if not given) is sent unchanged on every retry, so a retry
        after a lost reply returns the same job instead of starting a second one."""
        request = adaptation_pb2.CreateAdaptationRequest(
            base_generator_id=base_generator_id, style_image=common_pb2.Image(data=style_image),
            idempotency_key=idempotency_key or uuid.uuid4().hex, display_name=display_name,
            options=adaptation_pb2.AdaptationOptions(steps=steps, learning_rate=learning_rate))
        return _operation(self._call(self.adaptation.CreateAdaptation, request, timeout_s))

    def create_tuning(self, latent_id: str, idempotency_key: str | None = None, base_generator_id: str = "",
                      display_name: str = "", steps: int = 0, learning_rate: float = 0.0,
                      timeout_s: float | None = None) -> Adaptation:
        """Start a pivotal-tuning job for the photo kept with `latent_id` (from `invert(align=True)`): its
        result is a generator tuned to that photo and the pivot latent to edit on it (`pivot_latent_id`)."""
        request = adaptation_pb2.CreateAdaptationRequest(
            base_generator_id=base_generator_id, method=adaptation_pb2.ADAPTATION_METHOD_PIVOTAL_TUNING,
            latent_id=latent_id, idempotency_key=idempotency_key or uuid.uuid4().hex, display_name=display_name,
            options=adaptation_pb2.AdaptationOptions(steps=steps, learning_rate=learning_rate))
        return _operation(self._call(self.adaptation.CreateAdaptation, request, timeout_s))

    def get_adaptation(self, name: str, timeout_s: float | None = None) -> Adaptation:
        return _operation(self._call(self.adaptation.GetAdaptation, adaptation_pb2.GetAdaptationRequest(name=name),
                                     timeout_s))

    def list_adaptations(self, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
                         ) -> tuple[list[Adaptation], str]:
        reply = self._call(self.adaptation.ListAdaptations, adaptation_pb2.ListAdaptationsRequest(
            page_size=page_size, page_token=page_token), timeout_s)
        return [_operation(op) for op in reply.operations], reply.next_page_token

    def cancel_adaptation(self, name: str, timeout_s: float | None = None) -> Adaptation:
        return _operation(self._call(self.adaptation.CancelAdaptation,
                                     adaptation_pb2.CancelAdaptationRequest(name=name), timeout_s))

    def delete_generator(self, generator_id: str, timeout_s: float | None = None) -> None:
        self._call(self.adaptation.DeleteGenerator, adaptation_pb2.DeleteGeneratorRequest(generator_id=generator_id),
                   timeout_s)

    def wait_for_adaptation(self, name: str, timeout_s: float = 3600.0, poll_s: float = 1.0,
                            on_progress: Callable[[Adaptation], None] | None = None) -> Adaptation:
        """Poll until the job is done; `on_progress` sees every state. Returns the SUCCEEDED job or raises
        AdaptationFailed (FAILED/CANCELLED) or FaceEditClientError(DEADLINE_EXCEEDED) after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_adaptation(name)
            if on_progress is not None:
                on_progress(job)
            if job.done:
                if job.state != "SUCCEEDED":
                    code = grpc.StatusCode.CANCELLED if job.state == "CANCELLED" else next(
                        (c for c in grpc.StatusCode if c.value[0] == job.error_code), grpc.StatusCode.UNKNOWN)
                    raise AdaptationFailed(code, job.error_message or job.message)
                return job
            if time.monotonic() >= deadline:
                raise FaceEditClientError(grpc.StatusCode.DEADLINE_EXCEEDED, f"job {name} not done after {timeout_s} s")
            self.retry.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
