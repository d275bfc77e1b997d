"""The editor's gRPC status and message for an error: the code from the shared table, a message safe to send."""

from __future__ import annotations

import logging

import grpc

from faceedit.errors import CheckpointError, InvalidInputError, NoFaceFound
from services.common.errors import code_for
from services.common.protocol import FAILED_PRECONDITION, UNAVAILABLE, InferenceError

log = logging.getLogger("faceedit.editor")


# Default gRPC clients drop a status message over 8 KB (the caller then sees RESOURCE_EXHAUSTED
# "Stream removed" instead of the error); errors stay far below that. Counted in characters and in
# UTF-8 bytes (what travels): 1000 characters of echoed emoji would be ~4 KB.
MAX_MESSAGE_CHARS = 1000


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and message (at most MAX_MESSAGE_CHARS characters and bytes) for an exception."""
    code, message = _status_for(exc)
    if len(message) > MAX_MESSAGE_CHARS or len(message.encode("utf-8")) > MAX_MESSAGE_CHARS:
        cut = message.encode("utf-8")[:MAX_MESSAGE_CHARS - 3].decode("utf-8", "ignore")  # "…" is 3 bytes
        message = cut[:MAX_MESSAGE_CHARS - 1] + "…"
    return code, message


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code from the shared table (services.common.errors); the message says what the caller
    may know. Untyped exceptions become INTERNAL with a fixed message: their text may hold paths or
    internals, so it goes to the log, never to the caller."""
    code = grpc.StatusCode[code_for(exc)]
    if isinstance(exc, InferenceError):  # a handler's error body: its code came from the same table
        if exc.code in (FAILED_PRECONDITION, UNAVAILABLE):
            return grpc.StatusCode[exc.code], f"model server: {exc.message}"
        return grpc.StatusCode.INTERNAL, "the model server failed on this request; see its log"
    if isinstance(exc, InvalidInputError):
        return code, f"{exc.field}: {exc.problem}"
    if isinstance(exc, NoFaceFound):
        return code, f"image: {exc}"
    if isinstance(exc, CheckpointError):
        return code, "a model file on the server is unusable; see the server log"
    if code == grpc.StatusCode.INTERNAL:
        return code, "internal error; see the server log"
    return code, str(exc)


# Job records store a status code name; the Operation's google.rpc.Status carries the number.
CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
