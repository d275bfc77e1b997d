"""Job records in a real Redis: idempotent create, guarded state changes, cancel, tenant isolation, leases."""

from __future__ import annotations

import time

import pytest

from faceedit.errors import InvalidInputError, NotFoundError
from services.common.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

pytestmark = pytest.mark.inference  # make test-services


@pytest.fixture
def jobs(redis_client, namespace):
    return JobStore(redis_client, namespace)


def test_create_and_get(jobs):
    job, created = jobs.create("acme", "demo", "targets/a.png", {"iterations": 5})
    assert created and job.state == QUEUED and not job.done
    stored = jobs.get(job.id, "acme")
    assert stored == job
    assert stored.params == {"iterations": 5}


def test_same_idempotency_key_returns_the_existing_job(jobs):
    first, created = jobs.create("acme", "demo", "targets/a.png", idempotency_key="req-1")
    again, created_again = jobs.create("acme", "demo", "targets/b.png", idempotency_key="req-1")
    assert created and not created_again and again.id == first.id and again.target_key == "targets/a.png"
    # Keys are per tenant, and the losing record was removed from the listing.
    other, created_other = jobs.create("other", "demo", "targets/a.png", idempotency_key="req-1")
    assert created_other and other.id != first.id
    assert [j.id for j in jobs.list("acme")] == [first.id]


def test_idempotency_key_length_is_limited(jobs):
    with pytest.raises(InvalidInputError) as info:
        jobs.create("acme", "demo", "t", idempotency_key="k" * 300)
    assert info.value.field == "idempotency_key"


def test_other_tenant_cannot_see_or_cancel(jobs):
    job, _ = jobs.create("acme", "demo", "t")
    with pytest.raises(NotFoundError):
        jobs.get(job.id, "other")
    with pytest.raises(NotFoundError):
        jobs.request_cancel(job.id, "other")
    assert jobs.get(job.id).state == QUEUED
    with pytest.raises(NotFoundError):
        jobs.get("job-missing")


def test_list_is_newest_first_and_limited(jobs):
    ids = []
    for _ in range(3):
        ids.append(jobs.create("acme", "demo", "t")[0].id)
        time.sleep(0.002)  # distinct creation times for a stable order, not a timing assertion
    assert [j.id for j in jobs.list("acme")] == ids[::-1]
    assert [j.id for j in jobs.list("acme", limit=2)] == ids[:0:-1]


def test_lifecycle_and_terminal_states_are_final(jobs):
    job, _ = jobs.create("acme", "demo", "t")
    assert jobs.start(job.id)
    assert jobs.set_progress(job.id, 0.4, "step 4")
    running = jobs.get(job.id)
    assert running.state == RUNNING and running.progress == pytest.approx(0.4) and running.attempts == 1
    assert jobs.succeed(job.id, "gen-1")
    assert not jobs.set_progress(job.id, 0.5)
    assert not jobs.fail(job.id, "INTERNAL", "late")
    assert not jobs.start(job.id)
    done = jobs.get(job.id)
    assert done.state == SUCCEEDED and done.done and done.result_generator_id == "gen-1" and done.progress == 1.0


def test_fail_records_code_and_message(jobs):
    job, _ = jobs.create("acme", "demo", "t")
    jobs.start(job.id)
    assert jobs.fail(job.id, "INVALID_ARGUMENT", "target: not an image")
    failed = jobs.get(job.id)
    assert failed.state == FAILED and failed.error_code == "INVALID_ARGUMENT" and "target" in failed.error_message


def test_cancel_queued_is_immediate_and_running_is_cooperative(jobs):
    queued, _ = jobs.create("acme", "demo", "t")
    assert jobs.request_cancel(queued.id, "acme").state == CANCELLED
    assert not jobs.start(queued.id)  # a worker receiving it later does nothing

    running, _ = jobs.create("acme", "demo", "t")
    jobs.start(running.id)
    after = jobs.request_cancel(running.id, "acme")
    assert after.state == RUNNING and after.cancel_requested
    assert jobs.cancelled(running.id)
    assert jobs.get(running.id).state == CANCELLED


def test_progress_is_clamped(jobs):
    job, _ = jobs.create("acme", "demo", "t")
    jobs.start(job.id)
    jobs.set_progress(job.id, 7)
    assert jobs.get(job.id).progress == 1.0


def test_lease_is_exclusive_reentrant_and_released_only_by_its_holder(jobs):
    job, _ = jobs.create("acme", "demo", "t")
    assert jobs.acquire_lease(job.id, "w1", ttl=30)
    assert jobs.acquire_lease(job.id, "w1", ttl=30)
    assert not jobs.acquire_lease(job.id, "w2", ttl=30)
    assert not jobs.renew_lease(job.id, "w2", ttl=30)
    assert not jobs.release_lease(job.id, "w2")
    assert jobs.lease_holder(job.id) == "w1"
    assert jobs.renew_lease(job.id, "w1", ttl=30)
    assert jobs.release_lease(job.id, "w1")
    assert jobs.acquire_lease(job.id, "w2", ttl=30)


def test_expired_lease_can_be_taken_over(jobs, redis_client, namespace):
    job, _ = jobs.create("acme", "demo", "t")
    assert jobs.acquire_lease(job.id, "dead-worker", ttl=30)
    # Expire it server-side rather than sleeping: what matters is what happens after expiry.
    redis_client.pexpire(f"{namespace}:lease:{job.id}", 1)
    while jobs.lease_holder(job.id) is not None:
        time.sleep(0.005)
    assert not jobs.renew_lease(job.id, "dead-worker", ttl=30)
    assert jobs.acquire_lease(job.id, "w2", ttl=30)


def test_jobs_of_a_dead_worker_are_requeued_or_cancelled_once_their_lease_expires(jobs):
    from services.common.jobs import CANCELLED, QUEUED, RUNNING, SUCCEEDED
    from services.common.recovery import recover_orphans

    alive, dead, cancelling, finished = (jobs.create("t", "demo", f"targets/{i}.png")[0] for i in range(4))
    for job in (alive, dead, cancelling, finished):
        assert jobs.acquire_lease(job.id, "w1", 0.2 if job is not alive else 30)
        assert jobs.start(job.id)
    jobs.request_cancel(cancelling.id, "t")
    jobs.succeed(finished.id, "gen-x")
    time.sleep(0.3)  # the dead worker's leases expire; the live one's does not
    sent: list[str] = []
    done = recover_orphans(jobs, sent.append)
    assert done == {"requeued": [dead.id], "cancelled": [cancelling.id]} and sent == [dead.id]
    assert jobs.get(dead.id).state == QUEUED and "re-queued" in jobs.get(dead.id).message
    assert jobs.get(cancelling.id).state == CANCELLED
    assert (jobs.get(alive.id).state, jobs.get(finished.id).state) == (RUNNING, SUCCEEDED)
    assert recover_orphans(jobs, sent.append) == {"requeued": [], "cancelled": []}  # nothing twice
    assert jobs.start(dead.id) and jobs.get(dead.id).attempts == 2  # the next worker resumes it
