"""The adaptation job in-process on a real Redis: success, exactly-once reruns, resume, cancel, leases, bad input."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from faceedit.adaptation.finetune import FinetuneConfig, finetune
from faceedit.images import to_pil
from faceedit.models import load_generator
from services.common.artifacts import LocalArtifactStore
from services.common.jobs import CANCELLED, FAILED, QUEUED, SUCCEEDED, JobStore
from services.common.registry import GeneratorIndex, load_adapted_generator, save_adapted_generator
from services.worker.adapt import (
    LeaseBusy,
    Runtime,
    generator_id_for,
    load_target,
    run_adaptation,
    state_key,
    target_latent,
)
from services.worker.config import WorkerConfig


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def runtime(redis_client, redis_server, namespace, tiny_models, tmp_path) -> Runtime:
    config = WorkerConfig(redis_url=redis_server.url, artifact_store_url=f"file://{tmp_path}/artifacts",
                          redis_namespace=namespace, base_generators=f"tiny={tiny_models['generator']}",
                          encoders=f"tiny={tiny_models['encoder']}", iterations=12, checkpoint_every=4,
                          lease_ttl=30)
    store = LocalArtifactStore(tmp_path / "artifacts")
    return Runtime(config, JobStore(redis_client, namespace), GeneratorIndex(redis_client, store, namespace),
                   store, worker_id="test-worker")


@pytest.fixture
def target_png(tiny_models) -> bytes:
    # A face-sized image the base does not produce: a colour ramp.
    ramp = torch.linspace(-0.9, 0.9, 32)
    image = torch.stack([ramp.expand(32, 32), ramp.expand(32, 32).T, -ramp.expand(32, 32)]).unsqueeze(0)
    return png_bytes(to_pil(image)[0])


def new_job(rt: Runtime, target: bytes, params: dict | None = None, base: str = "tiny"):
    key = "targets/t/target.png"
    rt.store.put(key, target)
    job, _ = rt.jobs.create("acme", base, key, params)
    return job


def test_job_succeeds_with_one_indexed_generator_that_fits_the_target(runtime, target_png, tiny_models):
    job = new_job(runtime, target_png, {"iterations": 30, "lr": 0.005})
    seen = []
    result = run_adaptation(job.id, runtime, lambda fraction, message: seen.append(fraction))
    done = runtime.jobs.get(job.id)
    assert done.state == SUCCEEDED and done.progress == 1.0 and done.result_generator_id == result["generator_id"]
    assert seen[-1] == 1.0 and len(seen) == 30
    assert [r.id for r in runtime.index.list("acme")] == [done.result_generator_id]
    assert not runtime.store.exists(state_key(job.id)) and runtime.jobs.lease_holder(job.id) is None
    # The adapted generator reproduces the target better than the base does, from the same latent.
    base = load_generator(tiny_models["generator"])
    adapted = load_adapted_generator(runtime.store, runtime.index.get(done.result_generator_id, "acme"), base)
    image = load_target(runtime, job, 32)
    with torch.no_grad():
        ws = target_latent(runtime, "tiny", base, image)
        base_err = (base.synthesis(ws) - image).abs().mean()
        adapted_err = (adapted.synthesis(ws) - image).abs().mean()
    assert adapted_err < 0.8 * base_err


def test_a_rerun_of_a_finished_job_does_nothing(runtime, target_png):
    job = new_job(runtime, target_png)
    first = run_adaptation(job.id, runtime)
    again = run_adaptation(job.id, runtime)
    assert again == {"status": SUCCEEDED, "generator_id": first["generator_id"]}
    assert len(runtime.index.list("acme")) == 1


def test_generator_stored_before_a_crash_finishes_the_job_without_training(runtime, target_png, tiny_models):
    job = new_job(runtime, target_png)
    base = load_generator(tiny_models["generator"])
    weight = base.state_dict()["conv1.conv.weight"]
    save_adapted_generator(runtime.store, runtime.index, "acme", "tiny", {"conv1.conv.weight": weight + 1},
                           base=base, generator_id=generator_id_for(job.id), job_id=job.id)
    result = run_adaptation(job.id, runtime)
    assert result["resumed_from"] == "result"
    assert runtime.jobs.get(job.id).result_generator_id == generator_id_for(job.id)
    assert len(runtime.index.list("acme")) == 1


def test_a_redelivered_job_resumes_from_its_checkpoint(runtime, target_png):
    job = new_job(runtime, target_png)
    # What a worker killed after iteration 8 leaves behind: a checkpoint and a RUNNING job.
    config = FinetuneConfig(iterations=12, checkpoint_every=4)
    runtime.jobs.start(job.id)
    base = runtime.base("tiny")
    target = load_target(runtime, job, 32)
    states = []
    finetune(base, target, target_latent(runtime, "tiny", base, target), config,
             checkpoint=lambda s: (states.append(s), runtime.store.put(state_key(job.id), s.to_bytes())),
             should_cancel=lambda: len(states) == 2)
    result = run_adaptation(job.id, runtime)
    assert result["status"] == SUCCEEDED and result["resumed_from"] == 8 and result["iterations"] == 12
    job_after = runtime.jobs.get(job.id)
    assert job_after.attempts == 2 and job_after.state == SUCCEEDED


def test_cooperative_cancel_stops_the_job_without_a_generator(runtime, target_png):
    job = new_job(runtime, target_png, {"iterations": 50})

    def cancel_at_third(fraction: float, message: str) -> None:
        if message.startswith("iteration 3/"):
            runtime.jobs.request_cancel(job.id, "acme")

    result = run_adaptation(job.id, runtime, cancel_at_third)
    assert result == {"status": CANCELLED, "iterations": 3}
    assert runtime.jobs.get(job.id).state == CANCELLED and runtime.index.list("acme") == []


def test_a_job_leased_by_another_worker_is_retried_later(runtime, target_png):
    job = new_job(runtime, target_png)
    assert runtime.jobs.acquire_lease(job.id, "other-worker", 30)
    with pytest.raises(LeaseBusy) as info:
        run_adaptation(job.id, runtime)
    assert info.value.countdown > 0
    assert runtime.jobs.get(job.id).state == QUEUED


@pytest.mark.parametrize("target, params, base, field", [
    (b"\x89PNG\r\n\x1a\nbroken", None, "tiny", "target"),
    (None, None, "unknown-base", "base_generator"),
    (None, {"iterations": -1}, "tiny", "iterations"),
    (None, {"speed": 9}, "tiny", "params"),
])
def test_bad_jobs_fail_with_the_field_named(runtime, target_png, target, params, base, field):
    job = new_job(runtime, target or target_png, params, base)
    result = run_adaptation(job.id, runtime)
    failed = runtime.jobs.get(job.id)
    assert result["status"] == FAILED and failed.state == FAILED
    assert failed.error_code == "INVALID_ARGUMENT" and failed.error_message.startswith(field)
    assert runtime.jobs.lease_holder(job.id) is None
