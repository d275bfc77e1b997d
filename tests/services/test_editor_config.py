"""EditorConfig from the environment, API keys from files and env, the one status-code mapping."""

from __future__ import annotations

import json

import grpc
import pytest

from faceedit.errors import CheckpointFormatError, InvalidInputError, NoFaceFound, NotFoundError
from services.common.errors import (
    DeadlineError,
    PreconditionError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
)
from services.common.protocol import InferenceError
from services.editor.auth import ApiKeys, read_keys_file
from services.editor.config import EditorConfig
from services.editor.errors import status_for

KEY = "k" * 20


def test_config_reads_the_environment_once():
    config = EditorConfig.from_env({"FACEEDIT_PORT": "0", "FACEEDIT_LATENT_TTL_S": "90",
                                    "FACEEDIT_MODELS": "/etc/faceedit/models.yaml",
                                    "FACEEDIT_API_KEYS": f"{KEY}=acme", "FACEEDIT_DEFAULT_TRUNCATION": "0.5"})
    assert (config.host, config.port, config.latent_ttl_s, config.default_truncation) == ("127.0.0.1", 0, 90, 0.5)
    assert config.models == "/etc/faceedit/models.yaml" and dict(config.api_keys) == {KEY: "acme"}
    assert KEY not in repr(config)  # secrets never show up in logs of the config


@pytest.mark.parametrize("env, field", [
    ({"FACEEDIT_PORT": "http"}, "FACEEDIT_PORT"),
    ({"FACEEDIT_PORT": "70000"}, "port"),
    ({"FACEEDIT_API_KEYS": "demo"}, "FACEEDIT_API_KEYS"),
    ({"FACEEDIT_CHUNK_SECONDS": "0"}, "inference_timeout_s/chunk_seconds/frame_batch"),
    ({"FACEEDIT_DEFAULT_TRUNCATION": "2"}, "default_truncation"),
    ({"FACEEDIT_API_KEYS_FILE": "/nonexistent/keys.json"}, "api_keys_file"),
])
def test_bad_settings_name_the_setting(env, field):
    with pytest.raises(InvalidInputError) as info:
        EditorConfig.from_env(env)
    assert info.value.field == field


def test_keys_from_json_and_line_files(tmp_path):
    (tmp_path / "keys.json").write_text(json.dumps({KEY: "acme"}))
    (tmp_path / "keys.txt").write_text(f"# comment\n{'x' * 20} globex\n")
    keys = ApiKeys.load(str(tmp_path / "keys.json"), {"y" * 20: "initech"})
    assert keys.tenant([("authorization", f"Bearer {KEY}")]) == "acme"
    assert keys.tenant([("authorization", "bearer " + "y" * 20)]) == "initech"
    assert read_keys_file(tmp_path / "keys.txt") == {"x" * 20: "globex"}


@pytest.mark.parametrize("metadata", [None, [], [("authorization", KEY)], [("authorization", "Bearer ")],
                                      [("authorization", "Bearer " + "z" * 20)]])
def test_missing_or_wrong_keys_are_unauthenticated(metadata):
    with pytest.raises(UnauthenticatedError):
        ApiKeys({KEY: "acme"}).tenant(metadata)


def test_short_keys_are_refused():
    with pytest.raises(InvalidInputError, match="at least"):
        ApiKeys({"short": "acme"})


@pytest.mark.parametrize("exc, code, text", [
    (InvalidInputError("latent.inline", "bad shape"), grpc.StatusCode.INVALID_ARGUMENT, "latent.inline: bad shape"),
    (TooLargeError("image.data", "too big"), grpc.StatusCode.RESOURCE_EXHAUSTED, "image.data"),
    (TooLargeError("ws", "batch too big"), grpc.StatusCode.RESOURCE_EXHAUSTED, "ws"),
    (NotFoundError("attribute", "wings"), grpc.StatusCode.NOT_FOUND, "wings"),
    (NoFaceFound("no face"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    (UnauthenticatedError("no key"), grpc.StatusCode.UNAUTHENTICATED, "no key"),
    (UnavailableError("redis"), grpc.StatusCode.UNAVAILABLE, "redis"),
    (DeadlineError("slow"), grpc.StatusCode.DEADLINE_EXCEEDED, "slow"),
    (PreconditionError("not loaded"), grpc.StatusCode.FAILED_PRECONDITION, "not loaded"),
    (InferenceError("FAILED_PRECONDITION", "model missing"), grpc.StatusCode.FAILED_PRECONDITION, "model missing"),
    (InferenceError("INTERNAL", "Traceback /srv/x.py"), grpc.StatusCode.INTERNAL, "model server"),
    (CheckpointFormatError("/srv/weights.pt", "truncated"), grpc.StatusCode.FAILED_PRECONDITION, "model file"),
    (RuntimeError("/secret/path"), grpc.StatusCode.INTERNAL, "internal error"),
])
def test_one_mapping_from_errors_to_status_codes(exc, code, text):
    got, message = status_for(exc)
    assert got == code and text in message
    assert "/srv" not in message and "/secret" not in message  # internals stay in the server log


def test_status_messages_stay_short_whatever_the_error_holds():
    code, message = status_for(NotFoundError("attribute", "x" * 10_000))
    assert code == grpc.StatusCode.NOT_FOUND and len(message) <= 1000
