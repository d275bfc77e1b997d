"""faceedit_client without a server: what is retried, how often, and with which idempotency key."""

from __future__ import annotations

import grpc
import pytest

from faceedit_client import FaceEditClient, FaceEditClientError, RetryPolicy, Step
from faceedit_client.v1 import adaptation_pb2


class Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode):
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} (test)"


class Scripted:
    """A stub method: raises the scripted codes in order, then answers `reply`; records requests."""

    def __init__(self, codes: list[grpc.StatusCode], reply: object):
        self.codes = list(codes)
        self.reply = reply
        self.requests: list[tuple[object, float, tuple]] = []

    def __call__(self, request, timeout=None, metadata=()):
        self.requests.append((request, timeout, metadata))
        if self.codes:
            raise Rpc(self.codes.pop(0))
        return self.reply


@pytest.fixture
def client():
    sleeps: list[float] = []
    c = FaceEditClient("127.0.0.1:1", "key-0123456789abcdef", timeout_s=7,
                       retry=RetryPolicy(attempts=4, initial_backoff_s=0.1, max_backoff_s=0.3, sleep=sleeps.append))
    c.sleeps = sleeps
    yield c
    c.close()


def test_unavailable_is_retried_with_growing_capped_backoff_and_one_key(client):
    op = adaptation_pb2.AdaptationOperation(name="job-1", metadata={"state": adaptation_pb2.ADAPTATION_STATE_QUEUED})
    method = Scripted([grpc.StatusCode.UNAVAILABLE] * 3, op)
    client.adaptation.CreateAdaptation = method
    job = client.create_adaptation(b"img")
    assert job.name == "job-1" and job.state == "QUEUED"
    keys = {r[0].idempotency_key for r in method.requests}
    request_ids = {dict(r[2])["x-request-id"] for r in method.requests}
    assert len(method.requests) == 4 and len(keys) == 1 and len(request_ids) == 1  # same key on every retry
    assert all(r[1] == 7 for r in method.requests)  # every attempt has the deadline
    assert len(client.sleeps) == 3 and all(0 < s <= 0.3 for s in client.sleeps)


def test_retries_stop_after_the_policy_and_other_codes_are_not_retried(client):
    client.editor.Edit = Scripted([grpc.StatusCode.UNAVAILABLE] * 10, None)
    with pytest.raises(FaceEditClientError) as info:
        client.edit([Step("age", 1.0)], seed=1)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(client.editor.Edit.requests) == 4
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        client.editor.Edit = Scripted([code], None)
        with pytest.raises(FaceEditClientError) as info:
            client.edit([], seed=1)
        assert info.value.code == code and len(client.editor.Edit.requests) == 1


def test_exactly_one_latent_source(client):
    with pytest.raises(ValueError):
        client.edit([], seed=1, latent_id="lat-1")
    with pytest.raises(ValueError):
        client.edit([])
