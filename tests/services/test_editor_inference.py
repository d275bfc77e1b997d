"""TorchServeInference against a stand-in of TorchServe's gRPC inference service: wire format, token,
deadlines, and the translation of its status codes into the editor's typed errors."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from services.common import protocol
from services.common.errors import DeadlineError, PreconditionError, TooLargeError, UnavailableError
from services.common.ts_grpc import inference_pb2, inference_pb2_grpc
from services.editor.errors import status_for
from services.editor.inference import CALLER_DEADLINE, TorchServeInference, read_inference_token

pytestmark = pytest.mark.integration


class FakeTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self):
        self.requests: list[tuple[str, dict, float | None]] = []
        self.abort_with: grpc.StatusCode | None = None
        self.block = threading.Event()
        self.hold = False
        self.key: str | None = None  # when set, calls without `Bearer <key>` are refused like TorchServe does
        self.delay_s = 0.0  # each call takes this long, like a 1024 px synthesis on a CPU
        self.image_bytes = 0  # when set, every image is this many bytes
        self.abort_detail = "x"
        self.contexts: list[grpc.ServicerContext] = []

    def Predictions(self, request, context):
        self.contexts.append(context)
        metadata = dict(context.invocation_metadata())
        self.requests.append((request.model_name, metadata, context.time_remaining()))
        if self.key is not None and metadata.get("authorization") != f"Bearer {self.key}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Token Authorization failed")
        if self.hold:
            self.block.wait(30)
        if self.abort_with is not None:
            context.abort(self.abort_with,
                          "Model not found" if self.abort_with == grpc.StatusCode.NOT_FOUND else self.abort_detail)
        time.sleep(self.delay_s)
        body = protocol.decode_generate_request(request.input["data"])
        image = b"\x89PNG\r\n\x1a\n" + b"f" * max(4, self.image_bytes - 8)
        images = [image] * body.ws.shape[0]
        return inference_pb2.PredictionResponse(prediction=protocol.encode_generate_response(images, "png", 32))

    def Ping(self, request, context):
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": "Healthy"}))


@pytest.fixture
def fake():
    servicer = FakeTorchServe()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.block.set()
    server.stop(0)


def ws(batch: int = 2) -> np.ndarray:
    return np.zeros((batch, 8, 64), np.float32)


def test_synthesize_sends_the_protocol_body_and_the_token(fake, tmp_path):
    servicer, target = fake
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "abc123"}, "management": {"key": "zzz"}}))
    assert read_inference_token(str(key_file)) == "abc123"
    client = TorchServeInference(target, generator_model="gen", key_file=str(key_file))
    response = client.synthesize("demo", "acme", ws(2), "png")
    assert len(response.images) == 2 and response.size == 32
    model, metadata, _ = servicer.requests[0]
    assert model == "gen" and metadata["authorization"] == "Bearer abc123"
    assert client.ping()
    client.close()


def test_work_handed_in_runs_while_the_synthesis_is_in_flight(fake):
    servicer, target = fake
    servicer.hold = True  # the stand-in answers only once it is released
    client = TorchServeInference(target)
    seen = []

    def while_waiting() -> None:
        deadline = time.monotonic() + 10
        while not servicer.requests and time.monotonic() < deadline:  # the request reached the server ...
            time.sleep(0.01)
        seen.append(len(servicer.requests))
        servicer.block.set()  # ... before the reply, which only comes after this work

    response = client.synthesize("demo", "acme", ws(1), "png", while_waiting=while_waiting)
    assert seen == [1] and len(response.images) == 1


def test_work_that_fails_while_waiting_cancels_the_call_and_is_the_error(fake):
    servicer, target = fake
    servicer.hold = True
    client = TorchServeInference(target)

    def while_waiting() -> None:
        deadline = time.monotonic() + 10
        while not servicer.contexts and time.monotonic() < deadline:  # the call is in TorchServe's hands
            time.sleep(0.01)
        raise UnavailableError("redis", "down")

    with pytest.raises(UnavailableError, match="redis"):
        client.synthesize("demo", "acme", ws(1), "png", while_waiting=while_waiting)
    deadline = time.monotonic() + 10
    while (not servicer.contexts or servicer.contexts[0].is_active()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert servicer.contexts and not servicer.contexts[0].is_active()  # TorchServe sees the call cancelled


def test_a_restarted_torchserves_new_key_is_read_again(fake, tmp_path):
    """TorchServe writes new keys on every start: after a refusal the editor reads the key file again."""
    servicer, target = fake
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "first"}}))
    servicer.key = "first"
    client = TorchServeInference(target, key_file=str(key_file))
    assert len(client.synthesize("demo", "", ws(1)).images) == 1
    servicer.key = "second"  # the restart
    key_file.write_text(json.dumps({"inference": {"key": "second"}}))
    with pytest.raises(UnavailableError):  # the call in flight with the old key fails, retryable
        client.synthesize("demo", "", ws(1))
    assert len(client.synthesize("demo", "", ws(1)).images) == 1
    assert servicer.requests[-1][1]["authorization"] == "Bearer second"
    client.close()


def test_a_fixed_token_is_sent_as_is(fake, tmp_path):
    servicer, target = fake
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}}))
    client = TorchServeInference(target, token="from-env", key_file=str(key_file))
    client.synthesize("demo", "", ws(1))
    assert servicer.requests[-1][1]["authorization"] == "Bearer from-env"
    client.close()


@pytest.mark.parametrize("code, error, status", [
    (grpc.StatusCode.NOT_FOUND, PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (grpc.StatusCode.PERMISSION_DENIED, UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (grpc.StatusCode.INTERNAL, protocol.InferenceError, grpc.StatusCode.INTERNAL),
])
def test_torchserve_codes_become_typed_errors(fake, code, error, status):
    servicer, target = fake
    servicer.abort_with = code
    client = TorchServeInference(target)
    with pytest.raises(error) as info:
        client.synthesize("demo", "", ws(1))
    assert status_for(info.value)[0] == status
    client.close()


def test_a_model_worker_that_died_mid_batch_is_unavailable_not_internal(fake):
    """TorchServe answers INTERNAL for the batch whose worker process was killed; it restarts the worker."""
    servicer, target = fake
    servicer.abort_with = grpc.StatusCode.INTERNAL
    servicer.abort_detail = "Worker died.\norg.pytorch.serve.http.InternalServerException"
    client = TorchServeInference(target)
    with pytest.raises(UnavailableError) as info:
        client.synthesize("demo", "", ws(1))
    assert status_for(info.value)[0] == grpc.StatusCode.UNAVAILABLE and "worker died" in str(info.value)
    servicer.abort_detail = "handler raised ValueError"  # a handler failure stays INTERNAL
    with pytest.raises(protocol.InferenceError):
        client.synthesize("demo", "", ws(1))
    client.close()


def test_a_dead_server_is_unavailable():
    from services.common.redis_server import free_port

    client = TorchServeInference(f"127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(UnavailableError):
        client.synthesize("demo", "", ws(1))
    assert not client.ping()
    client.close()


def test_the_callers_deadline_bounds_the_model_server_call(fake):
    servicer, target = fake
    client = TorchServeInference(target, timeout_s=60)
    servicer.hold = True
    token = CALLER_DEADLINE.set(time.monotonic() + 0.5)
    try:
        with pytest.raises(DeadlineError):
            client.synthesize("demo", "", ws(1))
        _, _, remaining = servicer.requests[0]
        assert remaining is not None and remaining < 1  # not the configured 60 s
        CALLER_DEADLINE.set(time.monotonic() - 1)  # already past: no call at all
        with pytest.raises(DeadlineError):
            client.synthesize("demo", "", ws(1))
        assert len(servicer.requests) == 1
    finally:
        CALLER_DEADLINE.reset(token)
        servicer.block.set()
        client.close()


def test_a_long_caller_deadline_is_not_cut_to_a_fixed_per_call_limit(fake):
    """Animate at 1024 on a CPU used to fail at the fixed per-call limit whatever the caller allowed."""
    servicer, target = fake
    servicer.delay_s = 0.6
    client = TorchServeInference(target, timeout_s=0.3)  # the default for calls without a caller deadline
    token = CALLER_DEADLINE.set(time.monotonic() + 10)
    try:
        assert len(client.synthesize("demo", "", ws(2)).images) == 2
        assert servicer.requests[-1][2] > 5  # TorchServe saw the caller's remaining time
    finally:
        CALLER_DEADLINE.reset(token)
    with pytest.raises(DeadlineError):  # without a caller deadline the configured limit applies
        client.synthesize("demo", "", ws(1))
    client.close()


def test_a_reply_over_the_channel_limit_is_resource_exhausted_and_not_retryable(fake):
    servicer, target = fake
    servicer.image_bytes = 400_000
    client = TorchServeInference(target, max_message_bytes=1_000_000)
    assert len(client.synthesize("demo", "", ws(1)).images) == 1
    with pytest.raises(TooLargeError) as info:  # 4 x 400 kB > 1 MB
        client.synthesize("demo", "", ws(4))
    assert status_for(info.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "message limit" in info.value.problem
    # TorchServe's own RESOURCE_EXHAUSTED (queue full, workers down) stays retryable.
    servicer.abort_with = grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(UnavailableError):
        client.synthesize("demo", "", ws(1))
    client.close()


def test_calls_are_balanced_over_every_replica_and_a_dead_one_is_skipped():
    """Behind one target naming two TorchServe replicas, calls alternate; with one stopped, all go to the other."""
    servers, servicers, ports = [], [], []
    for _ in range(2):
        servicer = FakeTorchServe()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
        servicers.append(servicer)
    client = TorchServeInference("ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports), timeout_s=5)
    try:
        for _ in range(3):  # the first calls may land before both subchannels are ready
            client.synthesize("demo", "", ws(1))
        before = [len(s.requests) for s in servicers]
        for _ in range(10):
            client.synthesize("demo", "", ws(1))
        assert [len(s.requests) - b for s, b in zip(servicers, before)] == [5, 5]
        servers[0].stop(0).wait()
        answered = 0
        for _ in range(10):
            try:
                client.synthesize("demo", "", ws(1))
                answered += 1
            except UnavailableError:
                pass  # at most the call in flight when the replica went away
        assert answered >= 9 and len(servicers[1].requests) >= before[1] + 5 + 9
    finally:
        client.close()
        for server in servers:
            server.stop(0)
