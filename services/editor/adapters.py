"""The editor's adapter to Celery: jobs go to the worker's queue; a broker that does not answer is UnavailableError."""

from __future__ import annotations

from services.common.errors import UnavailableError


class TaskQueue:
    """Sends `faceedit.adapt(job_id)` to the worker's queue (Celery over the broker)."""

    def __init__(self, broker_url: str, queue: str = "gpu", task_name: str = "faceedit.adapt"):
        from celery import Celery

        self.app = Celery("faceedit-editor", broker=broker_url)
        # Fail fast when the broker is down: the RPC answers UNAVAILABLE and the client retries.
        self.app.conf.broker_connection_timeout = 3
        self.app.conf.broker_connection_retry_on_startup = False
        self.queue = queue
        self.task_name = task_name

    def submit(self, job_id: str) -> None:
        try:
            self.app.send_task(self.task_name, args=[job_id], queue=self.queue, retry=False)
        except Exception as exc:  # kombu raises OperationalError and socket errors alike
            raise UnavailableError("task broker", type(exc).__name__) from None
