"""State that lost its owner: jobs whose worker died (expired lease → re-queued or cancelled), a generator
index lost with Redis (rebuilt from the artifacts), and photos whose latent expired (deleted)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from services.common.jobs import JobStore
from services.common.photos import PhotoStore
from services.common.registry import GeneratorIndex

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


class RecoveryWatch:
    """Runs recover_orphans every `interval_s` on a daemon thread, and with an `index`, rebuilds it when
    Redis has lost it (checked at start and on every pass), and with `photos`, deletes the expired ones;
    errors (Redis down) are logged and retried."""

    def __init__(self, jobs: JobStore, submit: Callable[[str], None], interval_s: float,
                 index: GeneratorIndex | None = None, photos: PhotoStore | None = None):
        self.jobs, self.submit, self.interval_s, self.index = jobs, submit, interval_s, index
        self.photos = photos
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery-watch", daemon=True)

    def check_index(self) -> None:
        if self.index is None:
            return
        report = self.index.ensure_built()
        if report is not None:
            log.warning(json.dumps({"event": "generator index built from the artifact store",
                                    "summary": report.summary(), "orphans": report.orphans[:20],
                                    "dangling": report.dangling[:20]}))

    def _run(self) -> None:
        first = True
        while first or not self._stop.wait(self.interval_s):
            try:
                self.check_index()
                if not first:
                    recover_orphans(self.jobs, self.submit)
                if self.photos is not None:
                    self.photos.sweep()
            except Exception as exc:  # noqa: BLE001 - a dependency outage must not end the watch
                log.info(json.dumps({"event": "recovery watch", "error": type(exc).__name__}))
            first = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a pass under way finishes (and logs) before stop returns
            self._thread.join(timeout_s)
