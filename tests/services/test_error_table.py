"""One error → status table (services/common/errors.py): the editor, the worker and the handlers agree."""

from __future__ import annotations

import json

import grpc
import pytest

from faceedit.errors import CheckpointFormatError, FaceEditError, InvalidInputError, NoFaceFound, NotFoundError
from services.common import protocol
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
def test_the_editor_the_worker_and_the_handlers_read_the_same_table(exc, code):
    assert code_for(exc) == code  # what the worker writes into a failed job
    assert status_for(exc)[0] == grpc.StatusCode[code]  # what the editor answers
    body = protocol.encode_error(exc)  # what a TorchServe handler replies ...
    assert json.loads(body)["error"]["code"] == code
    with pytest.raises(FaceEditError) as relayed:  # ... and what the editor makes of that reply
        protocol.decode_generate_response(body)
    assert status_for(relayed.value)[0] == grpc.StatusCode[code]
