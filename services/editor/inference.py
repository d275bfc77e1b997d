"""Client of TorchServe's gRPC inference API for the two models (generator, encoder), with deadlines."""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np

from services.common import protocol
from services.common.errors import (
    DeadlineError,
    PreconditionError,
    TooLargeError,
    UnavailableError,
)
from services.common.protocol import GenerateResponse, InvertResponse, StyleOffset

# The caller's deadline (time.monotonic() seconds) for the RPC being served on this thread: set by
# the servicer, so a model-server call never outlives the client that is waiting for it.
CALLER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("caller_deadline", default=None)
# Whether that caller is still waiting (grpc's context.is_active): no further chunk is sent to
# TorchServe for a caller that cancelled or went away.
CALLER_ACTIVE: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("caller_active",
                                                                                         default=None)


# Seconds this RPC spent waiting on the model server (a list to add to: set by the servicer per call), so its
# log line can tell the editor's own time from TorchServe's.
MODEL_SERVER_SECONDS: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("model_server_seconds",
                                                                                          default=None)


def caller_remaining_s() -> float | None:
    """Seconds left before the current caller's deadline; None when it set none."""
    deadline = CALLER_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def caller_active() -> bool:
    check = CALLER_ACTIVE.get()
    return True if check is None else bool(check())


class Inference(Protocol):
    """What the core needs from the model server (the unit tests' fake implements the same)."""

    def synthesize(self, generator_id: str, tenant: str, ws: np.ndarray, image_format: str,
                   style_offset: StyleOffset | None = None,
                   while_waiting: Callable[[], None] | None = None) -> GenerateResponse:
        """ws [B, n_latent, style_dim] float32 (and a StyleSpace offset: text edits) → B encoded images.

        `while_waiting` runs once the request is on its way, before the reply is awaited: work that does not
        need the images (storing the edited latent) overlaps the synthesis. If it raises, the call is
        cancelled and its error is the one raised."""
        ...

    def invert(self, image: bytes, align: bool, return_aligned: bool, mode: str = "encoder") -> InvertResponse: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def read_inference_token(key_file: str) -> str:
    """TorchServe 0.12 writes key_file.json with {"inference": {"key": ...}, ...} at start."""
    data = json.loads(Path(key_file).read_text())
    return str(data["inference"]["key"])


class TorchServeInference:
    """One channel to TorchServe's gRPC inference port; every call carries a deadline and the token."""

    def __init__(self, target: str, generator_model: str = "generator", encoder_model: str = "encoder",
                 timeout_s: float = 120.0, token: str = "", key_file: str = "", max_message_bytes: int = 64 << 20):
        from services.common.ts_grpc import inference_pb2, inference_pb2_grpc

        self._pb = inference_pb2
        self.generator_model = generator_model
        self.encoder_model = encoder_model
        self.timeout_s = timeout_s  # for calls made for no caller, or a caller without a deadline
        self.max_message_bytes = max_message_bytes
        self._token = token  # a fixed key from the environment wins over the file
        self._key_file = key_file
        self._file_token = ""  # the key last read from key_file; cleared when TorchServe refuses it
        # Balanced per call, not per connection: `target` may name several TorchServe replicas
        # ("ipv4:10.0.0.1:7070,10.0.0.2:7070", or "dns:///faceedit-torchserve-headless:7070", which
        # resolves to every pod); round_robin spreads calls over every ready address, skips one that
        # fails and takes it back once it reconnects.
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.lb_policy_name", "round_robin"),
            # A replaced pod's address is looked up again within seconds, not minutes.
            ("grpc.dns_min_time_between_resolutions_ms", 5000),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ])
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    def _metadata(self) -> list[tuple[str, str]]:
        token = self._token
        if not token and self._key_file:
            if not self._file_token:
                # TorchServe regenerates keys on every start: re-read the file until it is there.
                try:
                    self._file_token = read_inference_token(self._key_file)
                except (OSError, KeyError, ValueError):
                    return []
            token = self._file_token
        return [("authorization", f"Bearer {token}")] if token else []

    def _call(self, model: str, body: bytes, what: str, while_waiting: Callable[[], None] | None = None) -> bytes:
        request = self._pb.PredictionsRequest(model_name=model, input={"data": body})
        # The caller's remaining time, not a fixed per-call limit: a caller that allows 10 minutes
        # for a 1024 px animation gets them; the editor's chunking keeps each call short anyway.
        remaining = caller_remaining_s()
        timeout = self.timeout_s if remaining is None else remaining
        if timeout <= 0:
            raise DeadlineError(f"no time left for model server {what}")
        started = time.perf_counter()
        spent = MODEL_SERVER_SECONDS.get()
        call = self.stub.Predictions.future(request, timeout=timeout, metadata=self._metadata())
        if while_waiting is not None:
            try:
                while_waiting()
            except BaseException:
                call.cancel()
                raise
        try:
            response = call.result()
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                # A restarted TorchServe wrote new keys: read the file again on the next call
                # instead of sending the stale key forever.
                self._file_token = ""
            raise _translate(exc, model, what, self.max_message_bytes) from None
        finally:
            if spent is not None:
                spent.append(time.perf_counter() - started)
        return response.prediction

    def synthesize(self, generator_id: str, tenant: str, ws: np.ndarray, image_format: str = "png",
                   style_offset: StyleOffset | None = None,
                   while_waiting: Callable[[], None] | None = None) -> GenerateResponse:
        body = protocol.encode_generate_request(generator_id, ws, image_format=image_format, tenant=tenant,
                                                style_offset=style_offset)
        response = protocol.decode_generate_response(self._call(self.generator_model, body, "synthesis",
                                                                while_waiting))
        if len(response.images) != ws.shape[0]:
            raise UnavailableError("model server", f"returned {len(response.images)} images for {ws.shape[0]} latents")
        return response

    def invert(self, image: bytes, align: bool = False, return_aligned: bool = False,
               mode: str = "encoder") -> InvertResponse:
        # OPTIMIZE answers within the caller's deadline: the handler stops early, leaving a fifth of the time
        # (and half a second) for queueing, the encoder pass and the reconstruction rendered after it.
        remaining = caller_remaining_s()
        budget = None if remaining is None else max(0.8 * remaining - 0.5, 0.1)
        body = protocol.encode_invert_request(image, align=align, return_aligned=return_aligned, mode=mode,
                                              budget_s=budget)
        return protocol.decode_invert_response(self._call(self.encoder_model, body, "inversion"))

    def ping(self) -> bool:
        from google.protobuf import empty_pb2

        try:
            reply = self.stub.Ping(empty_pb2.Empty(), timeout=min(self.timeout_s, 5.0), metadata=self._metadata())
        except grpc.RpcError:
            return False
        return "healthy" in reply.health.lower()

    def close(self) -> None:
        self.channel.close()


# What grpc-core says when a message exceeds the channel's limit, e.g. "Received message larger than
# max (40123456 vs. 33554432)": only this RESOURCE_EXHAUSTED is the request's size, not the server's load.
_TOO_LARGE_DETAIL = "larger than max"
# What TorchServe answers (as INTERNAL) for the requests of a batch whose model worker process died
# under it (OOM-killed, SIGKILLed): not the handler failing on this input, and TorchServe starts a
# new worker within seconds, so it is the model server being briefly unavailable.
_WORKER_DIED_DETAIL = "worker died"


def _translate(exc: grpc.RpcError, model: str, what: str, max_message_bytes: int) -> Exception:
    """TorchServe's status codes → the editor's typed errors (mapped to codes in services.editor.errors)."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE_DETAIL in detail.lower():
        # Retrying cannot help: the caller must ask for fewer or smaller images.
        return TooLargeError("request", f"the model server's {what} reply exceeds the editor's message limit of "
                                        f"{max_message_bytes / 1e6:.0f} MB; ask for fewer images or use JPEG")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineError(f"model server {what} ({model}) ran past its deadline")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        # TorchServe's own RESOURCE_EXHAUSTED means its queue is full or its workers are down
        # (seen: back within ~4 s of a SIGKILLed worker): transient, so retryable.
        return UnavailableError("model server", f"{what}: {code.name}")
    if code == grpc.StatusCode.INTERNAL and _WORKER_DIED_DETAIL in detail.lower():
        return UnavailableError("model server", f"{what}: its model worker died and is being restarted")
    if code == grpc.StatusCode.NOT_FOUND:
        return PreconditionError(f"model {model!r} is not loaded in the model server")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        # Our token is wrong (TorchServe restarted with new keys): an operator problem, retryable.
        return UnavailableError("model server", "it refused the editor's token")
    # A handler exception (INTERNAL) or anything else: the detail may hold internals, keep it in logs.
    return protocol.InferenceError(protocol.INTERNAL,
                                   f"{what} failed with {code.name if code else 'error'}: {detail[:200]}")
