"""Celery app of the worker (Redis broker and result backend, queue "gpu") and the `faceedit.adapt` task."""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from services.worker.config import WorkerConfig

TASK_ADAPT = "faceedit.adapt"


def create_app(config: WorkerConfig) -> Celery:
    app = Celery("faceedit", broker=config.redis_url, backend=config.redis_url)
    app.conf.update(
        task_default_queue=config.queue,
        task_routes={TASK_ADAPT: {"queue": config.queue}},
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # A job's message is acknowledged only when the task returns; a worker that dies mid-job
        # leaves it unacknowledged, and Redis redelivers it after the visibility timeout.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job in hand at a time: others stay free for other workers
        task_track_started=True,
        # Solo pool: prefork deadlocks when torch ran in the parent before the fork (FINDINGS).
        worker_pool="solo",
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": config.visibility_timeout,
            "unacked_restore_interval": config.restore_interval,
            "unacked_restore_throttle": 1,
        },
        result_expires=7 * 24 * 3600,
    )
    return app


config = WorkerConfig.from_env()
app = create_app(config)


@app.task(name=TASK_ADAPT, bind=True, max_retries=None)
def adapt(self: Any, job_id: str) -> dict[str, Any]:
    """Run adaptation job `job_id` (its record in Redis says what to do)."""
    # Imported here: the editor imports this module to send tasks and must not pull in torch.
    from services.worker.adapt import LeaseBusy, run_adaptation

    try:
        return run_adaptation(job_id, runtime(),
                              lambda fraction, message: self.update_state(
                                  state="PROGRESS", meta={"job_id": job_id, "progress": fraction, "message": message}))
    except LeaseBusy as busy:
        # Someone else runs it (or ran it and died: the lease expires). Try again later; the
        # retry is a new message, so this delivery is acknowledged.
        raise self.retry(countdown=busy.countdown)


@functools.cache
def runtime() -> Any:
    """One Runtime (connections, store, loaded models) per worker process, opened on the first job."""
    from services.worker.adapt import Runtime

    return Runtime.open(config)
