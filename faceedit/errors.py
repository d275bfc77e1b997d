"""Typed errors of the library; services map these (and only these) to their status codes."""

from __future__ import annotations

from pathlib import Path


class FaceEditError(Exception):
    """Base of every error the library raises on purpose."""


class InvalidInputError(FaceEditError, ValueError):
    """A caller passed a bad value; `field` names it so a service can report it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class NotFoundError(FaceEditError, LookupError):
    """A named thing (attribute, generator, file) does not exist."""

    def __init__(self, kind: str, name: str, hint: str = ""):
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found" + (f": {hint}" if hint else ""))


class CheckpointError(FaceEditError):
    """A checkpoint file cannot be used; names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary unpickling, which we never do implicitly."""


class CheckpointFormatError(CheckpointError):
    """Truncated, corrupt, or not a format we know."""


class CheckpointMismatchError(CheckpointError):
    """Keys or shapes do not match the model config inferred from the file."""


class ChecksumMismatchError(CheckpointError):
    """The file's sha256 differs from the one recorded next to it."""


class NoFaceFound(FaceEditError):
    """Face alignment found no face in the photo."""
