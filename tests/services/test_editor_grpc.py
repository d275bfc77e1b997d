"""The editor over real gRPC (loopback, random port) with real Redis and an in-process model-server fake:
every RPC through faceedit_client, status codes for bad input, auth, health, reflection, metrics."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from faceedit_client import FaceEditClient, FaceEditClientError, RetryPolicy, Step
from faceedit_client.v1 import editor_pb2, editor_pb2_grpc
from services.common.errors import UnavailableError
from services.common.registry import GeneratorRecord
from services.editor import probe
from services.editor.boundaries import BoundaryRegistry
from services.editor.catalog import BaseGenerator
from services.editor.config import EditorConfig
from services.editor.probe import LIVENESS_SERVICE
from services.editor.server import EditorServer

from editor_fakes import FakeInference, boundary_set, png_bytes

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "key-tenant-a-0123456789", "key-tenant-b-0123456789"


@pytest.fixture
def server(tmp_path, tiny_models, redis_server, namespace):
    config = EditorConfig.from_env({}, host="127.0.0.1", port=0, redis_url=redis_server.url,
                                   redis_namespace=namespace, queue=f"gpu-{namespace}",
                                   artifact_store_url=str(tmp_path / "artifacts"),
                                   api_keys={KEY_A: "tenant-a", KEY_B: "tenant-b"}, max_image_bytes=200_000,
                                   max_message_bytes=1_000_000, max_frames=12, health_interval_s=60.0)
    base = BaseGenerator.load("demo", tiny_models["generator"])
    rng = torch.Generator().manual_seed(0)
    normals = {name: torch.randn(64, generator=rng) for name in ("age", "smile")}
    inference = FakeInference(tiny_models["generator"], tiny_models["encoder"])
    srv = EditorServer(config, inference=inference, bases={"demo": base},
                       boundaries=BoundaryRegistry({"demo": boundary_set(normals, 0.91, (-3.0, 2.5))}))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=0)


def client_for(server, key=KEY_A, **kwargs) -> FaceEditClient:
    return FaceEditClient(f"127.0.0.1:{server.port}", key, timeout_s=30, **kwargs)


@pytest.fixture
def client(server):
    with client_for(server) as c:
        yield c


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(FaceEditClientError) as info:
        call()
    return info.value.code, info.value.message


class TestEditorRpcs:
    def test_generate_edit_animate_roundtrip(self, client):
        faces = client.generate([1, 2], truncation=0.6, return_latents=True)
        assert [f.seed for f in faces] == [1, 2] and faces[0].latent.shape == (1, 8, 64)
        assert Image.open(io.BytesIO(faces[0].image.data)).size == (32, 32)
        edited = client.edit([Step("age", 2.0, layers="coarse")], latent_id=faces[0].latent_id, return_latent=True)
        delta = edited.latent - faces[0].latent
        assert np.abs(delta[0, 0]).sum() > 0 and np.abs(delta[0, 5]).sum() == 0
        again = client.edit([], latent_id=edited.latent_id)  # chained by id
        assert again.image.data == edited.image.data
        items = list(client.animate([Step("smile", 2.0)], seed=3, frames=5, start=-1, end=1, animation="webp"))
        assert [i.index for i in items[:-1]] == [0, 1, 2, 3, 4]
        assert Image.open(io.BytesIO(items[-1].data)).format == "WEBP" and items[-1].format == "webp"

    def test_invert_and_edit_inline(self, client):
        inv = client.invert(png_bytes(40), return_latent=True, format="jpeg")
        assert inv.reconstruction.format == "jpeg" and inv.latent.shape == (1, 8, 64)
        out = client.edit([Step("age", -1.0)], latent=inv.latent[0])
        assert out.latent_id and out.image.data

    def test_list_generators_and_attributes(self, client):
        assert [(g.id, g.kind, g.size) for g in client.list_generators()] == [("demo", "base", 32)]
        attributes = {a.name: a for a in client.list_attributes()}
        assert set(attributes) == {"age", "smile"}
        assert attributes["age"].accuracy == pytest.approx(0.91)
        assert (attributes["age"].recommended_min, attributes["age"].recommended_max) == (-3.0, 2.5)


class TestStatusCodes:
    @pytest.mark.parametrize("call, code, field", [
        (lambda c: c.invert(b"\x89PNG\r\n\x1a\nbroken"), grpc.StatusCode.INVALID_ARGUMENT, "image.data"),
        (lambda c: c.invert(b"\x89PNG\r\n\x1a\n" + bytes(300_000)), grpc.StatusCode.RESOURCE_EXHAUSTED, "image.data"),
        (lambda c: c.edit([], latent=np.zeros((2, 64), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "latent.inline"),
        (lambda c: c.edit([], latent=np.full((8, 64), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
         "latent.inline"),
        (lambda c: c.edit([Step("wings", 1)], seed=1), grpc.StatusCode.NOT_FOUND, "edits[0].attribute"),
        (lambda c: c.edit([Step("age", float("inf"))], seed=1), grpc.StatusCode.INVALID_ARGUMENT, "edits[0].strength"),
        (lambda c: c.edit([], seed=1, generator_id="gen-nope"), grpc.StatusCode.NOT_FOUND, "gen-nope"),
        (lambda c: c.generate(list(range(65))), grpc.StatusCode.RESOURCE_EXHAUSTED, "seeds"),
        (lambda c: list(c.animate([Step("age", 1)], seed=1, frames=50)), grpc.StatusCode.INVALID_ARGUMENT, "frames"),
        (lambda c: c.get_adaptation("job-nope"), grpc.StatusCode.NOT_FOUND, "job-nope"),
        (lambda c: c.delete_generator("demo"), grpc.StatusCode.FAILED_PRECONDITION, "base generator"),
        (lambda c: c.create_adaptation(b"nope", idempotency_key="k"), grpc.StatusCode.INVALID_ARGUMENT,
         "style_image.data"),
    ])
    def test_bad_input_gets_the_right_code_and_names_the_field(self, client, call, code, field):
        got, message = code_of(lambda: call(client))
        assert got == code and field in message

    def test_a_message_over_the_grpc_limit_is_resource_exhausted(self, client):
        got, _ = code_of(lambda: client.invert(bytes(2_000_000)))
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED

    def test_missing_and_unknown_keys(self, server):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = editor_pb2_grpc.EditorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListGenerators(editor_pb2.ListGeneratorsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in info.value.details()
        channel.close()
        with client_for(server, key="wrong-key-0123456789") as bad:
            assert code_of(bad.list_generators)[0] == grpc.StatusCode.UNAUTHENTICATED

    def test_another_tenants_generator_is_not_found(self, server, client):
        server.index.add(GeneratorRecord(id="gen-b", tenant="tenant-b", base_generator="demo", sha256="0" * 64,
                                         size_bytes=1, created=1.0, state="READY", artifact_key="generators/x"))
        server.inference.adapted[("gen-b", "tenant-b")] = 0.3
        with client_for(server, key=KEY_B) as b:
            assert "gen-b" in {g.id for g in b.list_generators()}
            assert b.edit([], seed=1, generator_id="gen-b").image.data
        assert "gen-b" not in {g.id for g in client.list_generators()}
        assert code_of(lambda: client.edit([], seed=1, generator_id="gen-b"))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: client.delete_generator("gen-b"))[0] == grpc.StatusCode.NOT_FOUND

    def test_internal_errors_do_not_leak_and_the_server_survives(self, server, client, monkeypatch):
        def boom(*args, **kwargs):
            raise RuntimeError("secret /etc/path")
        monkeypatch.setattr(server.inference, "synthesize", boom)
        code, message = code_of(lambda: client.edit([], seed=1))
        assert code == grpc.StatusCode.INTERNAL and "secret" not in message
        monkeypatch.undo()
        assert client.edit([], seed=1).image.data  # still serving

    def test_unavailable_is_retried_with_backoff(self, server, monkeypatch):
        real, failures, sleeps = server.inference.synthesize, [], []

        def flaky(generator_id, tenant, *args, **kwargs):
            if tenant == "tenant-a" and len(failures) < 2:  # not the health monitor's warm-up call
                failures.append(1)
                raise UnavailableError("model server", "restarting")
            return real(generator_id, tenant, *args, **kwargs)
        monkeypatch.setattr(server.inference, "synthesize", flaky)
        with client_for(server, retry=RetryPolicy(attempts=3, sleep=sleeps.append)) as c:
            assert c.edit([], seed=1).image.data
        assert len(sleeps) == 2 and sleeps[1] > 0

    def test_other_codes_are_not_retried(self, server):
        sleeps = []
        with client_for(server, retry=RetryPolicy(attempts=3, sleep=sleeps.append)) as c:
            code_of(lambda: c.edit([Step("wings", 1)], seed=1))
        assert sleeps == []


class TestAdaptationRpcs:
    def test_create_is_idempotent_and_queued_on_the_broker(self, server, client):
        first = client.create_adaptation(png_bytes(), idempotency_key="style-1", display_name="x", steps=3)
        again = client.create_adaptation(png_bytes(), idempotency_key="style-1")
        assert first.name == again.name and first.state == "QUEUED" and not first.done
        assert server.redis.llen(server.config.queue) >= 1  # the Celery message is in the queue
        jobs, token = client.list_adaptations()
        assert [j.name for j in jobs] == [first.name] and token == ""
        cancelled = client.cancel_adaptation(first.name)
        assert (cancelled.state == "CANCELLED" and cancelled.done
                and cancelled.error_code == grpc.StatusCode.CANCELLED.value[0])
        with client_for(server, key=KEY_B) as b:
            assert code_of(lambda: b.get_adaptation(first.name))[0] == grpc.StatusCode.NOT_FOUND
            assert b.list_adaptations()[0] == []

    def test_wait_for_adaptation_reports_progress_and_result(self, server, client):
        job = client.create_adaptation(png_bytes(), idempotency_key="style-2")
        seen = []

        def progress(update):
            seen.append((update.state, update.progress))
            # Play the worker's part through the job store, one step per poll.
            if update.state == "QUEUED":
                server.jobs.start(job.name)
            elif update.state == "RUNNING" and update.progress < 0.5:
                server.jobs.set_progress(job.name, 0.5, "training")
            elif update.state == "RUNNING":
                server.jobs.succeed(job.name, "gen-new")
        done = client.wait_for_adaptation(job.name, poll_s=0, on_progress=progress)
        assert done.state == "SUCCEEDED" and done.generator_id == "gen-new"
        assert seen[:3] == [("QUEUED", 0.0), ("RUNNING", 0.0), ("RUNNING", 0.5)]


class TestOperations:
    def test_health_follows_dependencies(self, server):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        target = f"127.0.0.1:{server.port}"
        # The monitor's own first check (with its warm-up render) runs on its thread from start(): let it
        # finish, or its late SERVING would overwrite the NOT_SERVING this test is about to cause.
        deadline = time.monotonic() + 60
        while not server.monitor.serving:
            assert time.monotonic() < deadline, "the editor never turned SERVING"
            time.sleep(0.05)
        server.inference.healthy = False
        server.monitor.check()
        for service in ("", "faceedit.v1.Editor", "faceedit.v1.Adaptation"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # A dependency is down, the process is fine: not ready, but alive (no restart by a liveness probe).
        reply = health.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert probe.main([target]) == 1 and probe.main([target, "--service", LIVENESS_SERVICE]) == 0
        server.inference.healthy = True
        server.monitor.check()
        assert (health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING)
        assert probe.main([target]) == 0
        channel.close()

    def test_the_probe_fails_when_nothing_listens(self):
        from services.common.redis_server import free_port

        assert probe.main([f"127.0.0.1:{free_port()}", "--service", LIVENESS_SERVICE, "--timeout", "1"]) == 1

    def test_reflection_lists_the_services(self, server):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert {"faceedit.v1.Editor", "faceedit.v1.Adaptation", "grpc.health.v1.Health"} <= names
        channel.close()

    def test_metrics_count_rpcs_by_code_and_stage(self, server, client):
        client.edit([], seed=1)
        code_of(lambda: client.edit([Step("wings", 1)], seed=1))
        registry = server.metrics.registry
        assert registry.get_sample_value("faceedit_editor_rpc_seconds_count", {"method": "Edit", "code": "OK"}) == 1
        assert registry.get_sample_value("faceedit_editor_rpc_seconds_count",
                                         {"method": "Edit", "code": "NOT_FOUND"}) == 1
        assert registry.get_sample_value("faceedit_editor_stage_seconds_count", {"stage": "inference.synthesize"}) >= 1
        assert registry.get_sample_value("faceedit_editor_rpcs_in_flight") == 0
        client.create_adaptation(png_bytes(), idempotency_key="q")
        assert registry.get_sample_value("faceedit_editor_adaptation_queue_depth") >= 1


def test_a_failed_job_surfaces_its_code_in_wait_for_adaptation(server, client):
    from faceedit_client import AdaptationFailed

    job = client.create_adaptation(png_bytes(), idempotency_key="fails")
    server.jobs.start(job.name)
    server.jobs.fail(job.name, "INVALID_ARGUMENT", "target: cannot be decoded")
    with pytest.raises(AdaptationFailed) as info:
        client.wait_for_adaptation(job.name, poll_s=0)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "target" in info.value.message
    op = client.get_adaptation(job.name)
    assert op.done and op.state == "FAILED" and op.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_redis_down_is_unavailable_and_not_serving(tmp_path, tiny_models):
    """An editor whose Redis does not answer: UNAVAILABLE naming Redis (clients retry), health NOT_SERVING."""
    from services.common.redis_server import free_port

    config = EditorConfig.from_env({}, port=0, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                   artifact_store_url=str(tmp_path / "a"), api_keys={KEY_A: "tenant-a"},
                                   health_interval_s=60.0)
    inference = FakeInference(tiny_models["generator"], tiny_models["encoder"])
    srv = EditorServer(config, inference=inference,
                       bases={"demo": BaseGenerator.load("demo", tiny_models["generator"])},
                       boundaries=BoundaryRegistry())
    srv.start()
    try:
        assert srv.monitor.check() is False
        with client_for(srv, retry=RetryPolicy(attempts=2, sleep=lambda s: None)) as c:
            code, message = code_of(lambda: c.generate([1]))
            assert code == grpc.StatusCode.UNAVAILABLE and "redis" in message
            code, _ = code_of(lambda: c.create_adaptation(png_bytes(), idempotency_key="k"))
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=0)


def test_unknown_enum_values_are_invalid_argument(server):
    """proto3 enums are open: a newer client may send a value this server does not know."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = editor_pb2_grpc.EditorStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(editor_pb2.GenerateRequest(seeds=[1], format=99), timeout=10,
                      metadata=[("authorization", f"Bearer {KEY_A}")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in info.value.details()
    channel.close()


def test_a_client_leaving_a_stream_is_counted_as_cancelled(server, client):
    stream = client.animate([Step("age", 1.0)], seed=1, frames=12)
    next(stream)
    stream.close()  # cancels the RPC after the first frame
    registry = server.metrics.registry
    # The server notices the cancellation when it next yields; wait for the RPC to be accounted.
    for _ in range(200):
        if registry.get_sample_value("faceedit_editor_rpc_seconds_count",
                                     {"method": "Animate", "code": "CANCELLED"}):
            break
        time.sleep(0.05)
    assert registry.get_sample_value("faceedit_editor_rpc_seconds_count",
                                     {"method": "Animate", "code": "CANCELLED"}) == 1
    assert registry.get_sample_value("faceedit_editor_rpcs_in_flight") == 0
