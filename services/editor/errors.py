"""The ONE place where errors become gRPC status codes (library errors and the editor's own)."""

from __future__ import annotations

import logging

import grpc

from faceedit.errors import (
    CheckpointError,
    FaceEditError,
    InvalidInputError,
    NoFaceFound,
    NotFoundError,
)
from services.inference.protocol import FAILED_PRECONDITION, InferenceError, PayloadTooLargeError

log = logging.getLogger("faceedit.editor")


class ServiceError(FaceEditError):
    """Errors the editor raises itself about its dependencies and callers (not about the input)."""


class UnauthenticatedError(ServiceError):
    """No API key, or one we do not know."""


class UnavailableError(ServiceError):
    """A dependency (TorchServe, Redis, the broker) does not answer; the caller may retry."""

    def __init__(self, dependency: str, detail: str = ""):
        self.dependency = dependency
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))


class DeadlineError(ServiceError):
    """A call to a dependency ran past its deadline."""


class PreconditionError(ServiceError):
    """The request is valid but the system is not in a state to serve it (e.g. a model is not loaded)."""


class TooLargeError(InvalidInputError):
    """A field is over a size limit: RESOURCE_EXHAUSTED, naming the field."""


# Default gRPC clients drop a status message over 8 KB (the caller then sees RESOURCE_EXHAUSTED
# "Stream removed" instead of the error); errors stay far below that.
MAX_MESSAGE_CHARS = 1000


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and message (at most MAX_MESSAGE_CHARS) for an exception."""
    code, message = _status_for(exc)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    return code, message


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Untyped exceptions become INTERNAL with a fixed message: their text may hold paths or
    internals, so it goes to the log, never to the caller."""
    if isinstance(exc, (TooLargeError, PayloadTooLargeError)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc.field}: {exc.problem}"
    if isinstance(exc, InvalidInputError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.problem}"
    if isinstance(exc, NoFaceFound):
        return grpc.StatusCode.INVALID_ARGUMENT, f"image: {exc}"
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, DeadlineError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, PreconditionError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, InferenceError):
        if exc.code == FAILED_PRECONDITION:
            return grpc.StatusCode.FAILED_PRECONDITION, f"model server: {exc.message}"
        return grpc.StatusCode.INTERNAL, "the model server failed on this request; see its log"
    if isinstance(exc, CheckpointError):
        # A broken weights file on the server side is not the caller's fault and not retryable.
        return grpc.StatusCode.FAILED_PRECONDITION, "a model file on the server is unusable; see the server log"
    if isinstance(exc, FaceEditError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


# Job records store a status code name; the Operation's google.rpc.Status carries the number.
CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
