"""The one table from errors to status codes, shared by the editor, the TorchServe handlers and the worker.

Library errors (faceedit.errors) and the services' own errors map to a gRPC status code *name* here;
the editor turns the name into its grpc.StatusCode, the worker writes it into the job record, the
handlers put it into the wire protocol's error body. So the same failure gets the same code wherever
it happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from faceedit.errors import CheckpointError, FaceEditError, InvalidInputError, NoFaceFound, NotFoundError


class ServiceError(FaceEditError):
    """Errors a service raises itself about its dependencies and callers (not about the input)."""


class UnauthenticatedError(ServiceError):
    """No API key, or one we do not know."""


class UnavailableError(ServiceError):
    """A dependency (TorchServe, Redis, the broker) does not answer; the caller may retry."""

    def __init__(self, dependency: str, detail: str = ""):
        self.dependency = dependency
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))


class DeadlineError(ServiceError):
    """A call to a dependency ran past its deadline, or the caller's deadline left no time."""


class PreconditionError(ServiceError):
    """The request is valid but the system is not in a state to serve it (e.g. a model is not loaded)."""


class TooLargeError(InvalidInputError):
    """A field is over a size limit: RESOURCE_EXHAUSTED, naming the field."""


@contextmanager
def redis_errors() -> Iterator[None]:
    """Redis connection problems → UnavailableError (retryable), at the adapter boundary."""
    import redis as redis_lib

    try:
        yield
    except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
        raise UnavailableError("redis", type(exc).__name__) from None


# First match wins: subclasses before their bases.
_TABLE: tuple[tuple[type[BaseException], str], ...] = (
    (TooLargeError, "RESOURCE_EXHAUSTED"),
    (InvalidInputError, "INVALID_ARGUMENT"),
    (NoFaceFound, "INVALID_ARGUMENT"),  # the photo shows no face: the caller's input
    (NotFoundError, "NOT_FOUND"),
    (UnauthenticatedError, "UNAUTHENTICATED"),
    (UnavailableError, "UNAVAILABLE"),
    (DeadlineError, "DEADLINE_EXCEEDED"),
    (PreconditionError, "FAILED_PRECONDITION"),
    # A broken weights file on the server side is not the caller's fault and not retryable.
    (CheckpointError, "FAILED_PRECONDITION"),
    (FaceEditError, "FAILED_PRECONDITION"),
)


def code_for(exc: BaseException, extra: tuple[tuple[type[BaseException], str], ...] = ()) -> str:
    """The status code name for `exc`; `extra` rows (a service's own types) are tried first.
    Anything untyped is INTERNAL: its text may hold internals and is logged, never sent."""
    for kind, code in (*extra, *_TABLE):
        if isinstance(exc, kind):
            return code
    return "INTERNAL"
