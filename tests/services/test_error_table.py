"""One error → status table (services/common/errors.py): the editor, the worker and the handlers agree."""

from __future__ import annotations

import grpc
import pytest

from faceedit.errors import CheckpointFormatError, FaceEditError, InvalidInputError, NoFaceFound, NotFoundError
from services.common.errors import TooLargeError, UnavailableError, code_for
from services.editor.errors import status_for


@pytest.mark.parametrize("exc, code", [
    (InvalidInputError("layers", "bad"), "INVALID_ARGUMENT"),
    (TooLargeError("seeds", "too many"), "RESOURCE_EXHAUSTED"),
    (NoFaceFound("no face"), "INVALID_ARGUMENT"),  # was FAILED_PRECONDITION in the worker
    (NotFoundError("generator", "gen-x"), "NOT_FOUND"),  # was INVALID_ARGUMENT in the worker
    (CheckpointFormatError("/w.pt", "truncated"), "FAILED_PRECONDITION"),
    (UnavailableError("redis"), "UNAVAILABLE"),
    (FaceEditError("other"), "FAILED_PRECONDITION"),
    (RuntimeError("boom"), "INTERNAL"),
])
def test_the_editor_and_the_worker_read_the_same_table(exc, code):
    assert code_for(exc) == code  # what the worker writes into a failed job
    assert status_for(exc)[0] == grpc.StatusCode[code]  # what the editor answers
