"""Real Celery worker on a real Redis with the product's settings: a job runs to completion, and a job whose
worker is SIGKILLed mid-run is re-queued from its expired lease and completes exactly once, from its checkpoint."""

from __future__ import annotations

import io
import json
import re
import time
import uuid

import pytest
import redis
import torch

from faceedit.images import to_pil
from services.common.artifacts import LocalArtifactStore
from services.common.jobs import RUNNING, SUCCEEDED, JobStore
from services.common.redis_server import RedisServer
from services.common.registry import GeneratorIndex
from services.worker.adapt import state_key
from services.worker.app import TASK_ADAPT, create_app
from services.worker.config import WorkerConfig
from services.worker.launcher import WorkerProcess

from conftest import TINY_DIFA_SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.inference]

# Guards against a hung test, not assertions about speed.
DEADLINE = 300.0


@pytest.fixture(scope="module")
def broker():
    """A Redis of its own: the Celery queue must not carry messages from other tests."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def setup(broker, tiny_models, tmp_path):
    namespace = f"w-{uuid.uuid4().hex[:8]}"
    env = {"FACEEDIT_REDIS_URL": broker.url, "FACEEDIT_ARTIFACT_STORE_URL": f"file://{tmp_path / 'artifacts'}",
           "FACEEDIT_REDIS_NAMESPACE": namespace, "FACEEDIT_MODELS": str(tiny_models["models"]),
           "FACEEDIT_ITERATIONS": "30",
           # DIFA with the tiny CLIP, sized for a test.
           "FACEEDIT_DIFA_SETTINGS": json.dumps(TINY_DIFA_SETTINGS),
           # The product's own lease and visibility timeout (no test-only timeouts): a killed
           # worker's job must come back through its expired lease, as it does under `make demo`.
           "FACEEDIT_CHECKPOINT_EVERY": "5"}
    client = redis.Redis.from_url(broker.url)
    store = LocalArtifactStore(tmp_path / "artifacts")
    app = create_app(WorkerConfig(redis_url=broker.url))
    workers: list[WorkerProcess] = []

    def start_worker(name: str) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"{name}.log", name=name).start()
        workers.append(worker)
        return worker

    yield JobStore(client, namespace), GeneratorIndex(client, store, namespace), store, app, start_worker
    for worker in workers:
        worker.stop()
    app.close()
    client.close()


def submit(jobs: JobStore, store: LocalArtifactStore, app, params: dict, job_id: str = "") -> tuple[str, str]:
    ramp = torch.linspace(-0.9, 0.9, 32)
    image = to_pil(torch.stack([ramp.expand(32, 32), ramp.expand(32, 32).T, -ramp.expand(32, 32)])[None])[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    store.put("targets/t/ramp.png", buffer.getvalue())
    job_id = job_id or jobs.create("acme", "tiny", "targets/t/ramp.png", params)[0].id
    return job_id, app.send_task(TASK_ADAPT, args=[job_id], queue="gpu").id


def wait_for(condition, what: str, workers=()) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        for worker in workers:
            assert worker.alive(), f"worker died while waiting for {what}; see {worker.log_file}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_job_is_polled_to_completion(setup):
    jobs, index, store, app, start_worker = setup
    worker = start_worker("w1")
    job_id, task_id = submit(jobs, store, app, {})
    progress = []

    def finished() -> bool:
        job = jobs.get(job_id)
        progress.append(job.progress)
        return job.done

    wait_for(finished, "the job", [worker])
    job = jobs.get(job_id)
    assert job.state == SUCCEEDED and job.attempts == 1
    assert progress == sorted(progress)  # progress only moves forward
    assert [r.id for r in index.list("acme")] == [job.result_generator_id]
    result = app.AsyncResult(task_id).get(timeout=30)
    assert result["generator_id"] == job.result_generator_id and result["method"] == "difa"


def test_a_job_whose_worker_is_killed_completes_exactly_once(setup):
    jobs, index, store, app, start_worker = setup
    first = start_worker("victim")
    # Long enough that the kill lands mid-run: 400 iterations, a checkpoint every 5.
    job_id, _ = submit(jobs, store, app, {"iterations": 400})
    wait_for(lambda: store.exists(state_key(job_id)), "the first checkpoint", [first])
    first.kill()
    killed = jobs.get(job_id)
    assert killed.state == RUNNING and killed.attempts == 1 and not killed.done

    killed_at = time.monotonic()
    second = start_worker("rescuer")
    # Celery would redeliver the unacknowledged message only after the visibility timeout (2 h);
    # the job comes back through its expired lease instead: lease_ttl + the watch's interval.
    lease_ttl = WorkerConfig().lease_ttl
    wait_for(lambda: jobs.get(job_id).attempts == 2, "the re-queued job", [second])
    assert time.monotonic() - killed_at < lease_ttl * 1.25 + 10
    wait_for(lambda: jobs.get(job_id).done, "the resumed job", [second])
    job = jobs.get(job_id)
    assert job.state == SUCCEEDED and job.attempts == 2
    records = index.list("acme")
    assert [r.id for r in records] == [job.result_generator_id] and records[0].job_id == job_id
    log = second.log_file.read_text()
    resumed = [int(m) for m in re.findall(rf"job {job_id} resumed from iteration (\d+) of 400", log)]
    assert resumed and resumed[0] >= 5  # from its checkpoint, not from 0
    assert not store.exists(state_key(job_id))


def test_a_delivery_that_finds_the_job_leased_retries_until_it_can_run(setup):
    jobs, index, store, app, start_worker = setup
    worker = start_worker("w2")
    job, _ = jobs.create("acme", "tiny", "targets/t/ramp.png", {})
    # Another worker holds the job when the message arrives: the delivery must retry, not run it.
    assert jobs.acquire_lease(job.id, "other-worker", ttl=120)
    job_id, task_id = submit(jobs, store, app, {}, job_id=job.id)
    wait_for(lambda: app.AsyncResult(task_id).state == "RETRY", "a retry", [worker])
    assert jobs.get(job_id).state == "QUEUED"
    assert jobs.release_lease(job_id, "other-worker")
    wait_for(lambda: jobs.get(job_id).done, "the job", [worker])
    job = jobs.get(job_id)
    assert job.state == SUCCEEDED and job.attempts == 1
    assert [r.id for r in index.list("acme")] == [job.result_generator_id]
