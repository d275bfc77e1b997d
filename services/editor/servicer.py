"""Thin gRPC servicers: protobuf ↔ core values, auth, request ids, metrics; errors mapped in errors.py."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import status_pb2

from faceedit_client.v1 import (
    adaptation_pb2,
    adaptation_pb2_grpc,
    common_pb2,
    editor_pb2,
    editor_pb2_grpc,
)
from services.common import jobs as jobstates
from services.common.errors import TooLargeError
from services.editor.adaptation import AdaptationCore
from services.editor.auth import ApiKeys
from services.editor.editing import EditorCore
from services.editor.errors import CODE_NUMBERS, status_for
from services.editor.inference import CALLER_ACTIVE, CALLER_DEADLINE, MODEL_SERVER_SECONDS
from services.editor.metrics import EditorMetrics
from services.editor.values import (
    BASE,
    MAX_CONDITIONS,
    MAX_STEPS,
    AdaptationJob,
    Frame,
    GeneratorSummary,
    LatentSource,
    RenderedImage,
    Step,
)

log = logging.getLogger("faceedit.editor")

_FORMATS = {common_pb2.IMAGE_FORMAT_UNSPECIFIED: "", common_pb2.IMAGE_FORMAT_PNG: "png",
            common_pb2.IMAGE_FORMAT_JPEG: "jpeg", common_pb2.IMAGE_FORMAT_WEBP: "webp",
            common_pb2.IMAGE_FORMAT_GIF: "gif"}
_FORMAT_ENUM = {v: k for k, v in _FORMATS.items() if v}
_ANIMATIONS = {editor_pb2.ANIMATION_FORMAT_NONE: "", editor_pb2.ANIMATION_FORMAT_GIF: "gif",
               editor_pb2.ANIMATION_FORMAT_WEBP: "webp"}
_INVERSION_MODES = {editor_pb2.INVERSION_MODE_ENCODER: "encoder", editor_pb2.INVERSION_MODE_OPTIMIZE: "optimize"}
_METHODS = {adaptation_pb2.ADAPTATION_METHOD_DIFA: "difa", adaptation_pb2.ADAPTATION_METHOD_PIVOTAL_TUNING: "pti"}
_STATES = {jobstates.QUEUED: adaptation_pb2.ADAPTATION_STATE_QUEUED,
           jobstates.RUNNING: adaptation_pb2.ADAPTATION_STATE_RUNNING,
           jobstates.SUCCEEDED: adaptation_pb2.ADAPTATION_STATE_SUCCEEDED,
           jobstates.FAILED: adaptation_pb2.ADAPTATION_STATE_FAILED,
           jobstates.CANCELLED: adaptation_pb2.ADAPTATION_STATE_CANCELLED}
MAX_LATENT_VALUES = 64 * 32 * 1024
# grpcio's time_remaining() for a call without a deadline is ~9.2e18 s (its infinite deadline), not None;
# passed on as TorchServe's timeout, that overflowed grpc-core's deadline and every render failed at once
# with DEADLINE_EXCEEDED. Anything longer than a year means "none".
NO_DEADLINE_S = 365 * 24 * 3600.0


class CallContext:
    """Per-call values the handlers need: the tenant and the request id for logs."""

    def __init__(self, tenant: str, request_id: str):
        self.tenant = tenant
        self.request_id = request_id


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
            return value
    return uuid.uuid4().hex[:16]


def rpc(method: str, streaming: bool = False) -> Callable:
    """Wraps a handler: request id, tenant from the API key, per-RPC latency, one structured log
    line, and the single translation of exceptions into status codes (services.editor.errors)."""

    def wrap(handler: Callable) -> Callable:
        def begin(self: Any, context: grpc.ServicerContext) -> tuple[CallContext, float]:
            remaining = context.time_remaining()
            if remaining is not None and remaining > NO_DEADLINE_S:
                remaining = None  # the client set no deadline
            CALLER_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
            CALLER_ACTIVE.set(context.is_active)
            request_id = _request_id(context)
            context.set_trailing_metadata((("x-request-id", request_id),))
            self.metrics.in_flight.inc()
            MODEL_SERVER_SECONDS.set([])
            return CallContext("", request_id), time.perf_counter()

        def finish(self: Any, call: CallContext, started: float, exc: BaseException | None,
                   context: grpc.ServicerContext, cancelled: bool = False) -> None:
            self.metrics.in_flight.dec()
            code, message = (grpc.StatusCode.OK, "") if exc is None else status_for(exc)
            if cancelled:
                code = grpc.StatusCode.CANCELLED
            elapsed = time.perf_counter() - started
            self.metrics.rpc_seconds.labels(method, code.name).observe(elapsed)
            record = {"event": "rpc", "method": method, "request_id": call.request_id, "tenant": call.tenant,
                      "code": code.name, "ms": round(elapsed * 1000, 2)}
            model_server = MODEL_SERVER_SECONDS.get()
            if model_server:
                record["model_server_ms"] = round(sum(model_server) * 1000, 2)
            if exc is not None:
                record["error"] = message
            level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
            log.log(level, json.dumps(record), exc_info=exc if code == grpc.StatusCode.INTERNAL else None)
            if exc is not None:
                context.abort(code, message)

        if streaming:
            @functools.wraps(handler)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call, started = begin(self, context)
                try:
                    call.tenant = self.keys.tenant(context.invocation_metadata())
                    yield from handler(self, request, call)
                except GeneratorExit:
                    # The client went away mid-stream: count it as CANCELLED, nothing to send.
                    finish(self, call, started, None, context, cancelled=True)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
                    finish(self, call, started, exc, context)
                else:
                    finish(self, call, started, None, context)
            return stream

        @functools.wraps(handler)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            call, started = begin(self, context)
            try:
                call.tenant = self.keys.tenant(context.invocation_metadata())
                response = handler(self, request, call)
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
                finish(self, call, started, exc, context)
                raise  # unreachable: abort raises
            finish(self, call, started, None, context)
            return response
        return unary
    return wrap


# -- conversions --------------------------------------------------------------------------------

def image_msg(image: RenderedImage) -> common_pb2.Image:
    return common_pb2.Image(data=image.data, format=_FORMAT_ENUM.get(image.format, 0), width=image.width,
                            height=image.height)


def latent_msg(ws: np.ndarray) -> common_pb2.Latent:
    return common_pb2.Latent(shape=list(ws.shape), values=np.asarray(ws, dtype=np.float32).reshape(-1).tolist())


def latent_array(msg: common_pb2.Latent, field_name: str) -> np.ndarray:
    from faceedit.errors import InvalidInputError

    if not 2 <= len(msg.shape) <= 3:  # counted before they become a list: a request may hold millions
        raise InvalidInputError(f"{field_name}.shape",
                                f"must be 2 or 3 positive dimensions, got {len(msg.shape)} dimensions")
    shape = list(msg.shape)
    if any(d <= 0 for d in shape):
        raise InvalidInputError(f"{field_name}.shape", f"must be 2 or 3 positive dimensions, got {shape}")
    count = math.prod(shape)  # Python ints: np.prod wraps around in int64 ([2^30, 2^30, 16] gave 0)
    if count > MAX_LATENT_VALUES:
        raise InvalidInputError(f"{field_name}.shape", f"{shape} has too many values")
    if len(msg.values) != count:
        raise InvalidInputError(f"{field_name}.values", f"holds {len(msg.values)} values; shape {shape} needs {count}")
    return np.asarray(msg.values, dtype=np.float32).reshape(shape)


def latent_source(msg: common_pb2.LatentRef, field_name: str = "latent") -> LatentSource:
    which = msg.WhichOneof("source")
    if which == "latent_id":
        return LatentSource(latent_id=msg.latent_id)
    if which == "seed":
        return LatentSource(seed=msg.seed, truncation=msg.truncation)
    if which == "inline":
        return LatentSource(inline=latent_array(msg.inline, f"{field_name}.inline"))
    return LatentSource()  # none set: the core names the field


def steps(msgs: Any) -> list[Step]:
    # Counted before any becomes a Step: one request may carry millions of (tiny) steps or conditions.
    if len(msgs) > MAX_STEPS:
        raise TooLargeError("edits", f"{len(msgs)} steps exceeds the limit of {MAX_STEPS}")
    for i, m in enumerate(msgs):
        if len(m.conditions) > MAX_CONDITIONS:
            raise TooLargeError(f"edits[{i}].conditions", f"more than {MAX_CONDITIONS}")
    return [Step(m.attribute, m.strength, m.layers, tuple(m.conditions), m.space, m.text, m.neutral, m.threshold)
            for m in msgs]


def timestamp(unix: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


def generator_msg(g: GeneratorSummary) -> common_pb2.GeneratorInfo:
    kind = common_pb2.GENERATOR_KIND_BASE if g.kind == BASE else common_pb2.GENERATOR_KIND_ADAPTED
    msg = common_pb2.GeneratorInfo(id=g.id, kind=kind, family=g.family, size=g.size, n_latent=g.n_latent,
                                   style_dim=g.style_dim, display_name=g.display_name)
    if g.created:
        msg.create_time.CopyFrom(timestamp(g.created))
    return msg


def operation_msg(view: AdaptationJob) -> adaptation_pb2.AdaptationOperation:
    job = view.job
    state = _STATES.get(job.state, adaptation_pb2.ADAPTATION_STATE_UNSPECIFIED)
    if job.state == jobstates.RUNNING and job.cancel_requested:
        state = adaptation_pb2.ADAPTATION_STATE_CANCELLING
    metadata = adaptation_pb2.AdaptationMetadata(
        state=state, progress=job.progress, base_generator_id=job.base_generator,
        idempotency_key=job.idempotency_key, display_name=job.display_name,
        create_time=timestamp(job.created), update_time=timestamp(job.updated), message=job.message)
    op = adaptation_pb2.AdaptationOperation(name=job.id, metadata=metadata, done=job.done)
    if job.state == jobstates.SUCCEEDED:
        result = adaptation_pb2.AdaptationResult(generator_id=job.result_generator_id,
                                                  generator_deleted=view.generator is None,
                                                  pivot_latent_id=job.result_latent_id)
        if view.generator is not None:
            result.generator.CopyFrom(generator_msg(view.generator))
        op.response.CopyFrom(result)
    elif job.state == jobstates.FAILED:
        code = CODE_NUMBERS.get(job.error_code or "INTERNAL", CODE_NUMBERS["INTERNAL"])
        op.error.CopyFrom(status_pb2.Status(code=code, message=job.error_message or "the job failed"))
    elif job.state == jobstates.CANCELLED:
        op.error.CopyFrom(status_pb2.Status(code=CODE_NUMBERS["CANCELLED"], message=job.message or "cancelled"))
    return op


# -- services -----------------------------------------------------------------------------------

class EditorServicer(editor_pb2_grpc.EditorServicer):
    def __init__(self, editor: EditorCore, keys: ApiKeys, metrics: EditorMetrics):
        self.core = editor
        self.keys = keys
        self.metrics = metrics

    @rpc("Generate")
    def Generate(self, request: editor_pb2.GenerateRequest, call: CallContext) -> editor_pb2.GenerateResponse:
        # The repeated field itself, not a list: the core checks its length before reading a seed, so 20M
        # seeds (a 20 MB request) never become 20M Python ints.
        faces = self.core.generate(call.tenant, request.generator_id, request.seeds, request.truncation,
                                   _FORMATS.get(request.format, "?"))
        out = editor_pb2.GenerateResponse(generator_id=request.generator_id or self.core.catalog.default)
        for seed, face in zip(request.seeds, faces, strict=True):
            msg = out.faces.add(seed=seed, image=image_msg(face.image), latent_id=face.latent.id)
            if request.return_latents:
                msg.latent.CopyFrom(latent_msg(face.latent.ws))
        return out

    @rpc("Invert")
    def Invert(self, request: editor_pb2.InvertRequest, call: CallContext) -> editor_pb2.InvertResponse:
        result = self.core.invert(call.tenant, request.image.data, request.align, request.generator_id,
                                  _FORMATS.get(request.format, "?"), request.return_aligned,
                                  _INVERSION_MODES.get(request.mode, "?"))
        out = editor_pb2.InvertResponse(latent_id=result.latent.id, reconstruction=image_msg(result.reconstruction),
                                        expire_time=timestamp(result.latent.expires_at))
        if request.return_latent:
            out.latent.CopyFrom(latent_msg(result.latent.ws))
        if result.aligned is not None:
            out.aligned.CopyFrom(image_msg(result.aligned))
        return out

    @rpc("Edit")
    def Edit(self, request: editor_pb2.EditRequest, call: CallContext) -> editor_pb2.EditResponse:
        result = self.core.edit(call.tenant, request.generator_id, latent_source(request.latent),
                                steps(request.edits), _FORMATS.get(request.format, "?"), request.paste_back)
        out = editor_pb2.EditResponse(image=image_msg(result.image), latent_id=result.latent.id,
                                      expire_time=timestamp(result.latent.expires_at))
        if request.return_latent:
            out.latent.CopyFrom(latent_msg(result.latent.ws))
        return out

    @rpc("Animate", streaming=True)
    def Animate(self, request: editor_pb2.AnimateRequest, call: CallContext) -> Iterator[editor_pb2.AnimateResponse]:
        items = self.core.animate(call.tenant, request.generator_id, latent_source(request.latent),
                                  steps(request.edits), request.frames, request.start, request.end,
                                  _FORMATS.get(request.frame_format, "?"), _ANIMATIONS.get(request.animation, "?"),
                                  request.skip_frames, request.frame_duration_ms, request.paste_back)
        for item in items:
            if isinstance(item, Frame):
                yield editor_pb2.AnimateResponse(frame=editor_pb2.Frame(index=item.index, t=item.t,
                                                                         image=image_msg(item.image)))
            else:
                yield editor_pb2.AnimateResponse(animation=image_msg(item))

    @rpc("ListGenerators")
    def ListGenerators(self, request: editor_pb2.ListGeneratorsRequest, call: CallContext
                       ) -> editor_pb2.ListGeneratorsResponse:
        return editor_pb2.ListGeneratorsResponse(
            generators=[generator_msg(g) for g in self.core.list_generators(call.tenant)])

    @rpc("ListAttributes")
    def ListAttributes(self, request: editor_pb2.ListAttributesRequest, call: CallContext
                       ) -> editor_pb2.ListAttributesResponse:
        family, attributes, text_edits = self.core.list_attributes(call.tenant, request.generator_id)
        return editor_pb2.ListAttributesResponse(family=family, text_edits=text_edits, attributes=[
            editor_pb2.AttributeInfo(name=a.name, accuracy=a.accuracy or 0.0, accuracy_known=a.accuracy is not None,
                                     recommended_min=a.recommended_min, recommended_max=a.recommended_max,
                                     default_layers=a.default_layers, description=a.description, source=a.source,
                                     format=a.format, space=a.space, conditioned_variants=list(a.conditioned_variants))
            for a in attributes])

    @rpc("DeleteLatent")
    def DeleteLatent(self, request: editor_pb2.DeleteLatentRequest, call: CallContext) -> empty_pb2.Empty:
        self.core.delete_latent(call.tenant, request.latent_id)
        return empty_pb2.Empty()


class AdaptationServicer(adaptation_pb2_grpc.AdaptationServicer):
    def __init__(self, adaptation: AdaptationCore, keys: ApiKeys, metrics: EditorMetrics):
        self.core = adaptation
        self.keys = keys
        self.metrics = metrics

    @rpc("CreateAdaptation")
    def CreateAdaptation(self, request: adaptation_pb2.CreateAdaptationRequest, call: CallContext
                         ) -> adaptation_pb2.AdaptationOperation:
        options = {"steps": request.options.steps, "learning_rate": request.options.learning_rate}
        view, _ = self.core.create(call.tenant, request.base_generator_id, request.style_image.data,
                                   request.idempotency_key, request.display_name, options,
                                   _METHODS.get(request.method, "?"), request.latent_id)
        return operation_msg(view)

    @rpc("GetAdaptation")
    def GetAdaptation(self, request: adaptation_pb2.GetAdaptationRequest, call: CallContext
                      ) -> adaptation_pb2.AdaptationOperation:
        return operation_msg(self.core.get(call.tenant, request.name))

    @rpc("ListAdaptations")
    def ListAdaptations(self, request: adaptation_pb2.ListAdaptationsRequest, call: CallContext
                        ) -> adaptation_pb2.ListAdaptationsResponse:
        views, token = self.core.list(call.tenant, request.page_size, request.page_token)
        return adaptation_pb2.ListAdaptationsResponse(operations=[operation_msg(v) for v in views],
                                                      next_page_token=token)

    @rpc("CancelAdaptation")
    def CancelAdaptation(self, request: adaptation_pb2.CancelAdaptationRequest, call: CallContext
                         ) -> adaptation_pb2.AdaptationOperation:
        return operation_msg(self.core.cancel(call.tenant, request.name))

    @rpc("DeleteGenerator")
    def DeleteGenerator(self, request: adaptation_pb2.DeleteGeneratorRequest, call: CallContext
                        ) -> empty_pb2.Empty:
        self.core.delete_generator(call.tenant, request.generator_id)
        return empty_pb2.Empty()
