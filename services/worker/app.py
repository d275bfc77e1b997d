"""The worker's Celery app (Redis broker and result backend, queue "gpu"): `faceedit.adapt` and `faceedit.prepare`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from services.worker.config import WorkerConfig

TASK_ADAPT = "faceedit.adapt"
TASK_PREPARE = "faceedit.prepare"
log = logging.getLogger(__name__)


def create_app(config: WorkerConfig) -> Celery:
    app = Celery("faceedit", broker=config.redis_url, backend=config.redis_url)
    app.conf.update(
        task_default_queue=config.queue,
        task_routes={TASK_ADAPT: {"queue": config.queue}, TASK_PREPARE: {"queue": config.queue}},
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
    # Imported on the first task: importing the Celery app (celery's CLI, tests that only send tasks) loads no torch.
    from services.worker.adapt import LeaseBusy, run_adaptation

    try:
        return run_adaptation(job_id, runtime(),
                              lambda fraction, message: self.update_state(
                                  state="PROGRESS", meta={"job_id": job_id, "progress": fraction, "message": message}))
    except LeaseBusy as busy:
        # Someone else runs it (or ran it and died: the lease expires). Try again later; the
        # retry is a new message, so this delivery is acknowledged.
        raise self.retry(countdown=busy.countdown) from None


@app.task(name=TASK_PREPARE, bind=True)
def prepare(self: Any, base_id: str) -> dict[str, Any]:
    """Cache the mean source CLIP embedding that DIFA jobs on base `base_id` need (a deployment sends this when
    it registers a base; the worker sends it itself at start-up); nothing to do when it is cached."""
    return prepare_base(runtime(), base_id, lambda done, total: self.update_state(
        state="PROGRESS", meta={"base_generator": base_id, "done": done, "total": total}))


def prepares_text_edits(rt: Any, base_id: str) -> bool:
    """Whether start-up prepares this base's text edits: its family ships a relevance, or the operator asked
    for one to be computed (FACEEDIT_COMPUTE_RELEVANCE)."""
    return rt.config.compute_relevance or rt.models.family_of(base_id).relevance is not None


def prepare_base(rt: Any, base_id: str, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """What `faceedit.prepare` does, on a Runtime: a result saying which cache keys it computed."""
    from faceedit.adaptation.clip_mean import prepare_source_mean
    from faceedit.errors import FaceEditError
    from services.worker.adapt import CLIP_MEAN_PREFIX, StoreFolder, difa_config

    try:
        # No job parameter touches the mean's settings: this is the key every job on the base reads.
        base = rt.base(base_id)
        config = difa_config(rt.config, rt.clip_configs(), {}, base.config.size)
        cache = StoreFolder(rt.store, CLIP_MEAN_PREFIX)
        keys = prepare_source_mean(base, rt.clips(), config, cache, progress)
        if prepares_text_edits(rt, base_id):
            keys.update(prepare_relevance(rt, base_id, cache, progress))
    except FaceEditError as exc:  # a warm-up that cannot run is logged; the jobs report it themselves
        log.error("cannot prepare base %s: %s", base_id, exc)
        return {"status": "FAILED", "base_generator": base_id, "error": str(exc)}
    computed = [key for key, new in keys.items() if new]
    return {"status": "PREPARED" if computed else "CACHED", "base_generator": base_id, "computed": computed}


def prepare_relevance(rt: Any, base_id: str, cache: Any, progress: Callable[[int, int], None] | None
                      ) -> dict[str, bool]:
    """Text edits' channel relevance of the base with the text-edit CLIP (StyleCLIP global directions), then the
    marker the editor reads (services/common/text_edits.py); resumes a partial one."""
    from faceedit.editing.text import RelevanceConfig, cached_channel_relevance, recorded_key, relevance_key
    from services.common.text_edits import RelevanceMarker

    base, clip = rt.base(base_id), rt.text_clip()
    config = RelevanceConfig(samples=rt.config.relevance_samples)
    key = relevance_key(base, clip, config)
    computed = cache.get(key) is None
    shipped = rt.models.family_of(base_id).relevance
    if computed and shipped is not None:
        data = shipped.read_bytes()
        if recorded_key(data) == key:  # made for these weights and settings: used as it is
            cache.put(key, data)
            computed = False
        else:
            log.warning("%s was made for other weights or settings than base %s's", shipped, base_id)
    if cache.get(key) is None and not rt.config.compute_relevance:
        log.warning("no text edits for base %s: its relevance is not prepared (FACEEDIT_COMPUTE_RELEVANCE=1 "
                    "computes it at start, or ship one: faceedit eval text --export)", base_id)
        return {}
    relevance = cached_channel_relevance(base, clip, cache, config, progress)
    RelevanceMarker(base_id, f"{cache.prefix}/{key}", rt.models.text_clip, sum(relevance.widths)).write(rt.store)
    return {key: computed}


def bases_missing_a_mean(rt: Any) -> list[str]:
    """The configured bases whose mean source CLIP embedding (or text-edit relevance) is not cached (loads them
    and the CLIPs, which the Runtime keeps for the jobs)."""
    from faceedit.adaptation.clip_mean import has_source_mean
    from faceedit.errors import FaceEditError
    from services.worker.adapt import CLIP_MEAN_PREFIX, StoreFolder, difa_config

    try:
        config = difa_config(rt.config, rt.clip_configs(), {})
        clips = rt.clips()
    except FaceEditError as exc:
        log.warning("not preparing any base: %s", exc)
        return []
    from services.common.text_edits import RelevanceMarker

    cache = StoreFolder(rt.store, CLIP_MEAN_PREFIX)
    missing = []
    for base_id in rt.models.generators:
        try:
            text_missing = prepares_text_edits(rt, base_id) and RelevanceMarker.read(rt.store, base_id) is None
            if text_missing or not has_source_mean(rt.base(base_id), clips, config, cache):
                missing.append(base_id)
        except FaceEditError as exc:  # one unloadable base must not keep the others cold
            log.warning("not preparing base %s: %s", base_id, exc)
    return missing


@signals.worker_ready.connect
def queue_missing_means(**_: Any) -> None:
    """Queue `faceedit.prepare` for each base whose mean is missing, once, when this worker starts consuming."""
    if not config.prepare_on_start or config.adaptation != "difa":
        return
    for base_id in bases_missing_a_mean(runtime()):
        log.info("queueing %s for base %s", TASK_PREPARE, base_id)
        app.send_task(TASK_PREPARE, args=[base_id], queue=config.queue)


@signals.worker_ready.connect
def watch_for_lost_state(**_: Any) -> None:
    """Re-queue jobs whose worker died (their lease expired) every lease_ttl/4 seconds, and rebuild a
    generator index Redis lost; the editor runs the same watch, so both recover while either is up."""
    from services.common.recovery import RecoveryWatch

    rt = runtime()
    RecoveryWatch(rt.jobs, lambda job_id: app.send_task(TASK_ADAPT, args=[job_id], queue=config.queue),
                  config.lease_ttl / 4, rt.index).start()


@functools.cache
def runtime() -> Any:
    """One Runtime (connections, store, loaded models) per worker process, opened on the first job."""
    from services.worker.adapt import Runtime

    return Runtime.open(config)
