"""DIFA adaptation jobs (create, read, list, cancel) and adapted-generator deletion, tenant-scoped."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import jobs as jobstates
from services.common import protocol
from services.common.artifacts import ArtifactStore
from services.common.errors import PreconditionError, redis_errors
from services.common.jobs import Job, JobStore
from services.common.latent_cache import LatentCache
from services.common.photos import PhotoStore, StoredPhoto, kept_photo_id
from services.common.registry import GeneratorIndex, generator_id_for
from services.common.uploads import decode_upload
from services.editor.adapters import TaskQueue
from services.editor.catalog import GeneratorCatalog, summary_of
from services.editor.config import EditorConfig
from services.editor.values import BASE, AdaptationJob

MAX_IDEMPOTENCY_KEY = jobstates.MAX_IDEMPOTENCY_KEY
MAX_LISTED_JOBS = 100_000  # deepest page offset ListAdaptations serves


def _check_job_name(job_id: str) -> None:
    """The API calls a job's id its `name`: errors say so (the job store's own checks say job_id)."""
    if not job_id:
        raise InvalidInputError("name", "is required")
    if len(job_id) > protocol.MAX_ID_LENGTH:
        raise InvalidInputError("name", f"longer than {protocol.MAX_ID_LENGTH} characters")


METHODS = ("difa", "pti")


class AdaptationCore:
    """Create, read, list and cancel generator jobs — DIFA for an artwork, pivotal tuning for a photo; delete
    the generators they made. Tenant-scoped throughout."""

    def __init__(self, catalog: GeneratorCatalog, jobs: JobStore, index: GeneratorIndex, store: ArtifactStore,
                 queue: TaskQueue | Any, config: EditorConfig | None = None, cache: LatentCache | None = None,
                 photos: PhotoStore | None = None):
        config = config or EditorConfig()
        self.cache = cache  # with photos: pivotal tuning of a photo kept by Invert(align=true)
        self.photos = photos
        self.catalog = catalog
        self.jobs = jobs
        self.index = index
        self.store = store
        self.queue = queue
        self.max_image_bytes = config.max_image_bytes
        self.max_image_pixels = config.max_image_pixels

    def create(self, tenant: str, base_generator_id: str, image: bytes, idempotency_key: str,
               display_name: str = "", options: Mapping[str, Any] | None = None, method: str = "difa",
               latent_id: str = "") -> tuple[AdaptationJob, bool]:
        if not idempotency_key:
            raise InvalidInputError("idempotency_key", "is required (reuse it when retrying)")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidInputError("idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY} characters")
        if len(display_name) > 200:
            raise InvalidInputError("display_name", "longer than 200 characters")
        base = self.catalog.resolve(tenant, base_generator_id, "base_generator_id")
        if base.kind != BASE:
            raise InvalidInputError("base_generator_id", f"{base.id!r} is an adapted generator; adapt a base one")
        params = self._params(options or {})
        if method not in METHODS:
            raise InvalidInputError("method", f"must be one of {list(METHODS)}, got {method[:100]!r}")
        photo = None
        if method == "pti":
            photo = self._tuning_photo(tenant, base, latent_id, image)
            key = ""  # the worker reads the generator's own copy of the photo (below), nothing else
            params["method"] = "pti"
        else:
            if latent_id:
                raise InvalidInputError("latent_id", "is for PIVOTAL_TUNING; DIFA adapts to style_image")
            _, fmt = decode_upload(image, "style_image.data", self.max_image_bytes, self.max_image_pixels)
            # Content-addressed: a retried upload writes the same key again, harmlessly.
            digest = hashlib.sha256(image).hexdigest()
            tenant_seg = "t" + hashlib.sha256(tenant.encode()).hexdigest()[:24]
            key = f"targets/{tenant_seg}/{digest}.{fmt}"
            self.store.put(key, image)
        with redis_errors():
            job, created = self.jobs.create(tenant, base.id, key, params, idempotency_key=idempotency_key,
                                            display_name=display_name, kind="tune" if method == "pti" else "adapt")
        if photo is not None and created:
            # The generator-to-be's own copy, under its id: it no longer depends on the latent's TTL, and goes
            # with the generator (DeleteGenerator), or with the job if that fails or is cancelled.
            self.photos.copy(photo, kept_photo_id(generator_id_for(job.id)))
        if created or job.state == jobstates.QUEUED:
            # A retry of a create whose task may never have reached the broker re-sends it; the
            # worker's lease and state machine turn a duplicate delivery into a no-op.
            self.queue.submit(job.id)
        return self._view(job), created

    def _tuning_photo(self, tenant: str, base: Any, latent_id: str, image: bytes) -> StoredPhoto:
        """A tuning job's photo: the one Invert(align=true) kept with `latent_id` (the job tunes to its crop)."""
        if image:
            raise InvalidInputError("style_image", "is for DIFA; PIVOTAL_TUNING tunes to the photo of latent_id")
        if self.cache is None or self.photos is None:
            raise PreconditionError("pivotal tuning is not available: this editor keeps no photos")
        with redis_errors():
            entry = self.cache.entry(tenant, latent_id, "latent_id")
        if not entry.photo_id:
            raise InvalidInputError("latent_id", "has no photo: tune a latent from Invert(align=true)")
        if entry.family != base.family:
            raise InvalidInputError("latent_id", f"belongs to family {entry.family!r}, not {base.family!r}")
        return self.photos.get(tenant, entry.photo_id)

    @staticmethod
    def _params(options: Mapping[str, Any]) -> dict[str, Any]:
        """API options → the worker's fine-tuning parameters (faceedit.adaptation FinetuneConfig names)."""
        params: dict[str, Any] = {}
        steps = int(options.get("steps", 0) or 0)
        if steps:
            if not 1 <= steps <= 10_000:
                raise InvalidInputError("options.steps", f"must be in [1, 10000], got {steps}")
            params["iterations"] = steps
        lr = float(options.get("learning_rate", 0.0) or 0.0)
        if lr:
            if not (math.isfinite(lr) and 0 < lr <= 1):
                raise InvalidInputError("options.learning_rate", f"must be in (0, 1], got {lr}")
            params["lr"] = lr
        return params

    def _view(self, job: Job) -> AdaptationJob:
        generator = None
        if job.state == jobstates.SUCCEEDED and job.result_generator_id:
            try:
                generator = summary_of(self.catalog.resolve(job.tenant, job.result_generator_id))
            except (NotFoundError, PreconditionError):
                generator = None  # deleted since
        return AdaptationJob(job, generator)

    def get(self, tenant: str, job_id: str) -> AdaptationJob:
        _check_job_name(job_id)
        with redis_errors():
            return self._view(self.jobs.get(job_id, tenant))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[AdaptationJob], str]:
        size = page_size or 50
        if not 1 <= size <= 200:
            raise InvalidInputError("page_size", f"must be in [1, 200], got {page_size}")
        # Checked as text before it becomes a number or reaches Redis (which refuses offsets >= 2^63).
        if page_token and not (len(page_token) <= len(str(MAX_LISTED_JOBS)) and page_token.isascii()
                               and page_token.isdigit() and int(page_token) <= MAX_LISTED_JOBS):
            raise InvalidInputError("page_token", "is not a token from a previous response")
        offset = int(page_token) if page_token else 0
        with redis_errors():
            jobs = self.jobs.list(tenant, limit=offset + size + 1)
        page = jobs[offset:offset + size]
        token = str(offset + size) if len(jobs) > offset + size else ""
        return [self._view(j) for j in page], token

    def cancel(self, tenant: str, job_id: str) -> AdaptationJob:
        _check_job_name(job_id)
        with redis_errors():
            return self._view(self.jobs.request_cancel(job_id, tenant))

    def delete_generator(self, tenant: str, generator_id: str) -> None:
        if not generator_id:
            raise InvalidInputError("generator_id", "is required")
        if generator_id in self.catalog.bases:
            raise PreconditionError(f"{generator_id!r} is a base generator; only adapted generators can be deleted")
        with redis_errors():
            record = self.index.get(generator_id, tenant)
            if self.photos is not None:  # a tuned generator's photo goes first: a failure here can be retried
                self.photos.delete([kept_photo_id(generator_id)])
            self.index.delete(generator_id, tenant)
            if record.job_id:
                try:
                    self.jobs.generator_deleted(record.job_id, generator_id)
                except NotFoundError:
                    pass  # the job record has expired or was never kept
