"""The pivotal-tuning job: a photo's pivot latent, the base tuned to it (a delta), the photo kept, the pivot cached.

The photo is the one Invert(align=true) kept (services/common/photos.py), copied under the generator's id
when the job was created; the job reads its aligned crop.
It resumes after a worker dies: the optimised pivot is checkpointed once found, so a redelivery only tunes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from faceedit import artifacts
from faceedit.errors import CheckpointError, InvalidInputError, NotFoundError
from faceedit.images import from_pil
from faceedit.inversion import Distance, InversionCancelled, InversionConfig, invert
from faceedit.models import Encoder, Generator
from services.common.artifacts import ArtifactStore
from services.common.jobs import Job, JobStore
from services.common.latent_cache import LatentCache
from services.common.photos import PhotoStore, kept_photo_id
from services.common.registry import GeneratorIndex, save_adapted_generator

log = logging.getLogger(__name__)

PIVOT_FILE = "pivot.safetensors"
PIVOT_KIND = "faceedit.pivot"
# What a job may set (AdaptationOptions steps / learning_rate arrive as iterations / lr): the tuning phase.
JOB_SETTINGS = {"iterations": "tune_steps", "lr": "tune_lr"}


@dataclass(frozen=True)
class TuningServices:
    """Where a tuning job reads and writes: handed in by the worker, so this module knows no process setup."""

    jobs: JobStore
    index: GeneratorIndex
    store: ArtifactStore
    cache: LatentCache
    photos: PhotoStore


def tuning_config(operator: str, params: Mapping[str, Any]) -> InversionConfig:
    """The operator's FACEEDIT_PTI_SETTINGS (JSON of InversionConfig fields) with the job's steps/lr on top.

    The perceptual stop is off by default: the demo zoo's scorer distance is not on LPIPS's scale."""
    try:
        settings = json.loads(operator) if operator else {}
        assert isinstance(settings, dict)
    except (ValueError, AssertionError):
        raise InvalidInputError("pti_settings", "must be a JSON object of InversionConfig fields") from None
    known = {f.name for f in dataclasses.fields(InversionConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidInputError(f"pti_settings.{unknown[0]}", f"unknown; expected some of {sorted(known)}")
    values: dict[str, Any] = {"perceptual_stop": 0.0, **settings}
    for name, field_name in JOB_SETTINGS.items():
        if name in params:
            values[field_name] = params[name]
    return InversionConfig(**values)


def pivot_key(job_id: str) -> str:
    return f"jobs/{job_id}/{PIVOT_FILE}"


def tune_to_photo(job: Job, base: Generator, encoder: Encoder | None, perceptual: Distance | None,
                  config: InversionConfig, services: TuningServices, family: str, generator_id: str,
                  report: Callable[[int, int, float], None], should_cancel: Callable[[], bool],
                  lease_lost: Callable[[], bool]) -> dict[str, Any]:
    """Runs (or resumes) one tuning job to its end state in the job record; returns a summary."""
    s = services
    # The generator-to-be's own copy, made when the job was created (NotFound: DeleteGenerator ran meanwhile).
    photo = s.photos.get(job.tenant, kept_photo_id(generator_id))
    crop = Image.open(io.BytesIO(photo.aligned)).convert("RGB").resize((base.config.size,) * 2, Image.LANCZOS)
    device = next(base.parameters()).device
    target = from_pil([crop]).to(device)  # [1, 3, size, size]
    pivot = _read_pivot(s.store, job.id, base)
    done_before = config.optimize_steps if pivot is not None else 0
    total = config.optimize_steps + config.tune_steps
    if pivot is not None and _stored(s.index, generator_id, job.tenant):
        # An earlier delivery stored the tuned generator and died before finishing: finish, do not tune again.
        return _finish(job, pivot, generator_id, family, photo.id, s) | {"resumed_from": "result"}

    def progress(phase: str, step: int, steps: int, losses: dict[str, float]) -> None:
        done = step if phase == "optimize" else config.optimize_steps + step
        report(done, total, losses.get("total", float("nan")))

    try:
        if pivot is None:  # phase 1 on its own, so its result survives a worker that dies while tuning
            pivot = invert(target, base, encoder, "optimize", config, perceptual, progress=progress,
                           should_cancel=should_cancel).ws
            meta = artifacts.metadata(PIVOT_KIND, {"job": job.id})
            s.store.put(pivot_key(job.id), artifacts.to_bytes({"ws": pivot.cpu()}, meta))
        result = invert(target, base, encoder, "pti", config, perceptual, progress=progress,
                        should_cancel=should_cancel, pivot=pivot)
    except InversionCancelled as cancelled:
        if lease_lost():  # not ours any more: the worker that owns it keeps the record and the pivot
            return {"status": "LEASE_LOST"}
        s.jobs.cancelled(job.id, f"cancelled in {cancelled.phase} at step {cancelled.step}")
        discard_tuning(job, generator_id, s.store, s.photos)
        return {"status": "CANCELLED", "phase": cancelled.phase, "step": cancelled.step}
    record = save_adapted_generator(s.store, s.index, job.tenant, job.base_generator, result.tuned_tensors(),
                                    base=base, generator_id=generator_id, job_id=job.id,
                                    display_name=job.display_name)
    return _finish(job, result.ws, record.id, family, photo.id, s) | {
        "resumed_from": done_before, "losses": result.losses, "seconds": round(result.seconds, 2)}


def _stored(index: GeneratorIndex, generator_id: str, tenant: str) -> bool:
    try:
        index.get(generator_id, tenant)
        return True
    except NotFoundError:
        return False


def _finish(job: Job, pivot: torch.Tensor, generator_id: str, family: str, photo_id: str,
            s: TuningServices) -> dict[str, Any]:
    """The generator is stored (with its photo, kept since the job was created): the pivot, which renders the
    photo on it, is cached, the job succeeds, its pivot checkpoint goes."""
    latent = s.cache.put(job.tenant, family, pivot.detach().cpu().numpy(), photo_id)
    s.jobs.succeed(job.id, generator_id, latent.id)
    s.store.delete(pivot_key(job.id))
    return {"status": "SUCCEEDED", "generator_id": generator_id, "method": "pti", "pivot_latent_id": latent.id}


def discard_tuning(job: Job, generator_id: str, store: ArtifactStore, photos: PhotoStore) -> None:
    """A tuning job that ends without a generator leaves nothing of the photo behind: its copy and its pivot."""
    photos.delete([kept_photo_id(generator_id)])
    store.delete(pivot_key(job.id))


def _read_pivot(store: ArtifactStore, job_id: str, base: Generator) -> torch.Tensor | None:
    """The pivot an earlier delivery of this job found; None when there is none (or it cannot be used)."""
    try:
        data = store.get(pivot_key(job_id))
    except NotFoundError:
        return None
    try:
        artifact = artifacts.from_bytes(data, store.path_hint(pivot_key(job_id)))
        ws = artifact.tensors["ws"]
    except (CheckpointError, KeyError) as exc:
        log.warning("job %s: ignoring an unreadable pivot (%s)", job_id, exc)
        return None
    if tuple(ws.shape) != (1, base.n_latent, base.style_dim):
        log.warning("job %s: the stored pivot %s does not fit the base; starting over", job_id, list(ws.shape))
        return None
    log.warning("job %s: resuming from its optimised pivot", job_id)
    return ws.to(next(base.parameters()).device)
