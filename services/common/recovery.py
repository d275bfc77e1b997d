"""Jobs whose worker died: noticed from their expired lease, re-queued to resume, or cancelled if a cancel was asked."""

from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from services.common.jobs import JobStore

log = logging.getLogger("faceedit.recovery")


def recover_orphans(jobs: JobStore, submit: Callable[[str], None]) -> dict[str, list[str]]:
    """One pass: every RUNNING job without a live lease is re-queued and sent again (the next worker
    resumes it from its checkpoint), or, when its cancel was requested, marked CANCELLED (no worker is
    left to honour the request). Celery's own redelivery waits for the visibility timeout, which must
    exceed the longest job (hours), so without this pass such a job would stay RUNNING for that long."""
    done: dict[str, list[str]] = {"requeued": [], "cancelled": []}
    for job in jobs.orphans():
        if job.cancel_requested:
            if jobs.cancelled(job.id, "cancelled; the worker running it had stopped"):
                done["cancelled"].append(job.id)
        elif jobs.requeue(job.id, "re-queued: the worker running it stopped; resuming from its checkpoint"):
            submit(job.id)
            done["requeued"].append(job.id)
    if done["requeued"] or done["cancelled"]:
        log.warning(json.dumps({"event": "orphaned jobs", **done}))
    return done


class OrphanWatch:
    """Runs recover_orphans every `interval_s` on a daemon thread; errors (Redis down) are logged and retried."""

    def __init__(self, jobs: JobStore, submit: Callable[[str], None], interval_s: float):
        self.jobs, self.submit, self.interval_s = jobs, submit, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orphan-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                recover_orphans(self.jobs, self.submit)
            except Exception as exc:  # noqa: BLE001 - a dependency outage must not end the watch
                log.info(json.dumps({"event": "orphan watch", "error": type(exc).__name__}))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
