"""The adaptation job: lease, resume, adapt the generator (DIFA), store the delta, finish the job record —
exactly once per job."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import torch

from faceedit.adaptation.clip import ClipConfig, ClipEnsemble, ClipModel, load_clip, load_text_clip, parse_clip_spec
from faceedit.adaptation.difa import CHECKPOINT_FILE, AdaptationCancelled, adapt
from faceedit.adaptation.difa_config import DifaConfig
from faceedit.adaptation.finetune import FinetuneConfig, FinetuneState, finetune
from faceedit.errors import (
    CheckpointError,
    FaceEditError,
    InvalidInputError,
    NotFoundError,
)
from faceedit.images import from_pil
from faceedit.inversion import Distance, scorer_distance
from faceedit.models import Encoder, Generator, load_encoder, load_generator
from faceedit.models.precision import resolve_device
from services.common.artifacts import ArtifactStore, open_artifact_store
from services.common.errors import code_for
from services.common.jobs import Job, JobStore
from services.common.latent_cache import LatentCache
from services.common.models import ModelConfig, load_model_config
from services.common.photos import PhotoStore
from services.common.registry import GeneratorIndex, generator_id_for, save_adapted_generator
from services.common.uploads import center_square, decode_upload
from services.worker.config import WorkerConfig
from services.worker.tuning import TuningServices, discard_tuning, tune_to_photo, tuning_config

log = logging.getLogger(__name__)

# Where the mean source CLIP embeddings live in the artifact store (one per generator and CLIP weights).
CLIP_MEAN_PREFIX = "cache"
FINETUNE_STATE_FILE = "finetune-state.safetensors"
MAX_ERROR_CHARS = 1000  # a job's error message, as short as the editor's status messages
# What a job may set, with bounds; everything else about DIFA is the operator's (difa_settings).
JOB_SETTINGS: dict[str, tuple[type, float, float]] = {
    "iterations": (int, 1, 10_000),
    "lr": (float, 1e-6, 1.0),
    "batch_size": (int, 1, 16),
    "seed": (int, 0, 2**31 - 1),
    "lambda_global": (float, 0.0, 100.0),
    "lambda_local": (float, 0.0, 100.0),
    "consistency_weight": (float, 0.0, 100.0),
    "psp_alpha": (float, 0.01, 1.0),
    "sliding_window": (int, 1, 10_000),
}


class WorkerSetupError(FaceEditError):
    """The worker lacks a model or has a bad setting (not the job's fault): the job fails FAILED_PRECONDITION."""

    def __init__(self, setting: str, problem: str):
        self.setting = setting
        super().__init__(f"worker setting {setting}: {problem}")


class StoreFolder:
    """A folder of the artifact store as DIFA's BlobCache: a missing key reads as None."""

    def __init__(self, store: ArtifactStore, prefix: str):
        self.store, self.prefix = store, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def get(self, key: str) -> bytes | None:
        try:
            return self.store.get(self._key(key))
        except NotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.store.put(self._key(key), data)

    def where(self, key: str) -> str:
        return self.store.path_hint(self._key(key))


class LeaseBusy(Exception):
    """Another live worker holds the job; the delivery should be retried after `countdown` seconds."""

    def __init__(self, countdown: float):
        self.countdown = countdown
        super().__init__(f"job leased by another worker; retry in {countdown:.0f} s")


@dataclass
class Runtime:
    """What a worker process opens once and keeps: connections, the store, loaded models."""

    config: WorkerConfig
    jobs: JobStore
    index: GeneratorIndex
    store: ArtifactStore
    worker_id: str
    models: ModelConfig
    device: torch.device
    _bases: dict[str, Generator] = field(default_factory=dict)
    _encoders: dict[str, Encoder | None] = field(default_factory=dict)
    _clips: list[ClipModel] | None = None
    _text_clip: ClipModel | ClipEnsemble | None = None
    _perceptual: dict[str, Distance | None] = field(default_factory=dict)
    cache: LatentCache | None = None
    photos: PhotoStore | None = None

    @classmethod
    def open(cls, config: WorkerConfig) -> Runtime:
        torch.set_num_threads(config.torch_threads)
        client = redis.Redis.from_url(config.redis_url)
        store = open_artifact_store(config.artifact_store_url)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return cls(config, JobStore(client, config.redis_namespace),
                   GeneratorIndex(client, store, config.redis_namespace), store, worker_id,
                   load_model_config(config.models or None), resolve_device(config.device),
                   cache=LatentCache(client, config.latent_ttl_s, config.redis_namespace), photos=PhotoStore(store))

    def perceptual(self, base_id: str) -> Distance | None:
        """The family's perceptual distance for inversions (None: pixel L2 alone), loaded once."""
        family = self.models.family_of(base_id)
        if family.name not in self._perceptual:
            self._perceptual[family.name] = (scorer_distance(family.perceptual, self.device)
                                             if family.perceptual is not None else None)
        return self._perceptual[family.name]

    def base(self, base_id: str) -> Generator:
        if base_id not in self._bases:
            spec = self.models.generator(base_id, "base_generator")
            self._bases[base_id] = load_generator(spec.checkpoint, device=self.device)
        return self._bases[base_id]

    def encoder(self, base_id: str) -> Encoder | None:
        """The e4e encoder of the base's family (None when the model configuration names none)."""
        family = self.models.family_of(base_id)
        if family.name not in self._encoders:
            self._encoders[family.name] = (load_encoder(family.encoder, device=self.device)
                                           if family.encoder is not None else None)
        return self._encoders[family.name]

    def clip_configs(self) -> tuple[ClipConfig, ...]:
        return clip_configs(self.models)

    def clips(self) -> list[ClipModel]:
        """DIFA's CLIP models, loaded once per process; a missing or broken file is the worker's problem."""
        if self._clips is None:
            try:
                self._clips = [load_clip(c, self.device) for c in self.clip_configs()]
            except WorkerSetupError:
                raise
            except FaceEditError as exc:
                raise WorkerSetupError("clips", str(exc)) from None
        return self._clips

    def text_clip(self) -> ClipModel | ClipEnsemble:
        """The CLIP text edits read (the model configuration's `text_clip`, one or an ensemble, else DIFA's
        first), loaded once."""
        if self._text_clip is None:
            spec = self.models.text_clip
            if spec is None:
                raise WorkerSetupError("text_clip", f"{self.models.source} names no CLIP (text_clip: or clips: [...]); "
                                                    "text edits need one")
            if self.models.clips and spec == self.models.clips[0]:
                self._text_clip = self.clips()[0]
            else:
                try:
                    self._text_clip = load_text_clip(spec, self.device)
                except FaceEditError as exc:
                    raise WorkerSetupError("text_clip", str(exc)) from None
        return self._text_clip


def clip_configs(models: ModelConfig) -> tuple[ClipConfig, ...]:
    """The model configuration's `clips` → CLIP configs; none is the worker's problem, not the job's."""
    if not models.clips:
        raise WorkerSetupError("clips", f"{models.source} names no CLIP model (clips: [...]); DIFA needs one. Add it, "
                                        "or select the fallback FACEEDIT_ADAPTATION=finetune")
    try:
        return parse_clip_spec(models.clip_specs())
    except InvalidInputError as exc:
        raise WorkerSetupError("clips", exc.problem) from None


def difa_config(config: WorkerConfig, clips: tuple[ClipConfig, ...], params: Mapping[str, Any],
                size: int | None = None) -> DifaConfig:
    """The job's DifaConfig: upstream defaults < the worker's settings < the job's own (bounded) parameters."""
    try:
        operator = json.loads(config.difa_settings) if config.difa_settings.strip() else {}
        if not isinstance(operator, dict):
            raise ValueError("not a JSON object")
        base = {"iterations": config.iterations, "checkpoint_every": config.checkpoint_every, **operator,
                "clips": [c.to_dict() for c in clips]}
        DifaConfig.from_dict(base)
    except (ValueError, TypeError) as exc:  # InvalidInputError is a ValueError too
        raise WorkerSetupError("difa_settings", str(exc)) from None
    for key, value in params.items():
        if key not in JOB_SETTINGS:
            raise InvalidInputError(f"params.{key}", f"is not an adaptation parameter; a job may set "
                                                     f"{', '.join(sorted(JOB_SETTINGS))}")
        kind, low, high = JOB_SETTINGS[key]
        number_ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number_ok or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise InvalidInputError(key, f"must be {'an integer' if kind is int else 'a number'} in "
                                         f"[{low:g}, {high:g}], got {value!r}")
    difa = DifaConfig.from_dict({**base, **params})
    return difa if size is None else within_memory(difa, size, config)


def within_memory(difa: DifaConfig, size: int, config: WorkerConfig) -> DifaConfig:
    """DIFA's training batch and the source mean's sampling batch reduced until they fit the worker's
    memory budget at `size` px (a 1024 px batch of 2 peaked at 7 GB). The sampling batch changes only
    how the same samples are grouped; a smaller training batch changes the run, so it is logged."""
    budget = config.memory_budget_mb << 20
    train = max(1, budget // (size * size * config.training_bytes_per_pixel))
    sample = max(1, budget // (size * size * config.sampling_bytes_per_pixel))
    if difa.batch_size > train:
        log.warning("DIFA batch %d does not fit %d MB at %d px: using %d", difa.batch_size, config.memory_budget_mb,
                    size, train)
    return dataclasses.replace(difa, batch_size=min(difa.batch_size, train),
                               clip_mean_batch=min(difa.clip_mean_batch, sample))


class LeaseKeeper:
    """Renews the job's lease from a thread every ttl/3 while training runs; `lost` turns True if a
    renewal finds the lease gone (we stalled past the ttl and another worker may own the job)."""

    def __init__(self, jobs: JobStore, job_id: str, worker_id: str, ttl: float):
        self.jobs, self.job_id, self.worker_id, self.ttl = jobs, job_id, worker_id, ttl
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.jobs.renew_lease(self.job_id, self.worker_id, self.ttl):
                    self.lost = True
                    return
            except redis.RedisError:
                log.warning("lease renewal for %s failed; retrying", self.job_id)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if not self.lost:
            self.jobs.release_lease(self.job_id, self.worker_id)


def job_folder(job_id: str) -> str:
    return f"jobs/{job_id}"


def state_key(job_id: str, method: str = "difa") -> str:
    """Artifact key of the job's resume state (DIFA's checkpoint, or the fallback's fine-tuning state)."""
    return f"{job_folder(job_id)}/{CHECKPOINT_FILE if method == 'difa' else FINETUNE_STATE_FILE}"


def run_adaptation(job_id: str, rt: Runtime, on_progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) one adaptation job. Raises LeaseBusy when another worker holds it."""
    try:
        job = rt.jobs.get(job_id)
    except NotFoundError:
        log.warning("job %s does not exist; dropping the message", job_id)
        return {"status": "missing"}
    if job.done:
        return {"status": job.state, "generator_id": job.result_generator_id}
    if not rt.jobs.acquire_lease(job_id, rt.worker_id, rt.config.lease_ttl):
        raise LeaseBusy(rt.config.lease_ttl / 2)
    with LeaseKeeper(rt.jobs, job_id, rt.worker_id, rt.config.lease_ttl) as keeper:
        if not rt.jobs.start(job_id):  # finished or cancelled since we read it
            return {"status": rt.jobs.get(job_id).state}
        try:
            return _adapt(job, rt, keeper, on_progress)
        except FaceEditError as exc:
            # WorkerSetupError (the worker's models or settings) is FAILED_PRECONDITION, the job's own
            # input INVALID_ARGUMENT, a missing thing NOT_FOUND: the same table the editor uses.
            if isinstance(exc, WorkerSetupError):
                log.error("adaptation job %s cannot run: %s", job_id, exc)
            rt.jobs.fail(job_id, code_for(exc), str(exc)[:MAX_ERROR_CHARS])
            _discard(job, rt)
            return {"status": "FAILED", "error": str(exc)}
        except Exception:
            log.exception("adaptation job %s failed", job_id)
            rt.jobs.fail(job_id, "INTERNAL", "adaptation failed; see the worker log")
            _discard(job, rt)
            return {"status": "FAILED", "error": "internal"}


def _discard(job: Job, rt: Runtime) -> None:
    """What a failed job leaves of a photo goes with it (a tuning job's copy and pivot)."""
    if job.kind == "tune" and rt.photos is not None:
        discard_tuning(job, generator_id_for(job.id), rt.store, rt.photos)


def _adapt(job: Job, rt: Runtime, keeper: LeaseKeeper, on_progress: Callable[[float, str], None] | None) -> dict:
    generator_id = generator_id_for(job.id)
    base = rt.base(job.base_generator)
    if job.kind == "tune":  # it finishes an interrupted delivery itself: the pivot must be cached too
        return _tuning_job(job, rt, keeper, on_progress, base, generator_id)
    try:  # a previous delivery stored the generator but died before finishing the job record
        rt.index.get(generator_id, job.tenant)
        rt.jobs.succeed(job.id, generator_id)
        return {"status": "SUCCEEDED", "generator_id": generator_id, "resumed_from": "result"}
    except NotFoundError:
        pass
    if rt.config.adaptation == "finetune":
        return _finetune_job(job, rt, keeper, on_progress, base, generator_id)
    return _difa_job(job, rt, keeper, on_progress, base, generator_id)


def _job_callbacks(job: Job, rt: Runtime, keeper: LeaseKeeper, on_progress: Callable[[float, str], None] | None
                   ) -> tuple[Callable[[int, int, float], None], Callable[[], bool]]:
    """What every adaptation method reports through: progress (the last 5 % is kept for storing the
    result) and the cooperative cancel check (a cancel request, or the lease lost to another worker)."""

    def progress(done: int, total: int, loss: float) -> None:
        fraction = done / total
        rt.jobs.set_progress(job.id, fraction * 0.95, f"iteration {done}/{total}, loss {loss:.4f}")
        if on_progress is not None:
            on_progress(fraction, f"iteration {done}/{total}")

    def should_cancel() -> bool:
        return keeper.lost or rt.jobs.get(job.id).cancel_requested

    return progress, should_cancel


def _difa_job(job: Job, rt: Runtime, keeper: LeaseKeeper, on_progress: Callable[[float, str], None] | None,
              base: Generator, generator_id: str) -> dict:
    """DIFA on the base with the worker's CLIP models and the base's e4e encoder; resumes from the job's checkpoint."""
    encoder = rt.encoder(job.base_generator)
    if encoder is None:
        raise WorkerSetupError("encoders", f"no e4e encoder file for base {job.base_generator!r}: DIFA's "
                                           "consistency loss needs one")
    # Bad job parameters fail before any loading.
    config = difa_config(rt.config, rt.clip_configs(), job.params, base.config.size)
    clips = rt.clips()
    # The reference only goes through CLIP: read it at the largest size any model looks at.
    reference = load_target(rt, job, max([base.config.size, *(clip.image_size for clip in clips)]))

    report, should_cancel = _job_callbacks(job, rt, keeper, on_progress)

    def progress(done: int, total: int, losses: dict[str, float]) -> None:
        report(done, total, losses["total"])

    def preparing(done: int, total: int) -> None:
        # Called once per batch and only while the mean is computed: a cached one never shows this.
        # The fraction stays where the job is, so it does not run backwards when iterations start.
        message = f"preparing: source CLIP mean {done}/{total} samples"
        rt.jobs.set_progress(job.id, job.progress, message)
        if on_progress is not None:
            on_progress(job.progress, message)

    checkpoints = StoreFolder(rt.store, job_folder(job.id))
    run = dict(progress=progress, should_cancel=should_cancel, checkpoint_dir=checkpoints,
               clip_mean_cache=StoreFolder(rt.store, CLIP_MEAN_PREFIX), prepare_progress=preparing)
    try:
        try:
            result = adapt(base, encoder, clips, reference.to(rt.device), config, **run)
        except CheckpointError as exc:
            if exc.path != checkpoints.where(CHECKPOINT_FILE):
                raise
            # Left by a delivery that ran other settings or models (the worker was reconfigured) or
            # cut short mid-write: it cannot be resumed, so the job starts over.
            log.warning("job %s: discarding its checkpoint (%s)", job.id, exc.problem)
            rt.store.delete(state_key(job.id))
            result = adapt(base, encoder, clips, reference.to(rt.device), config, **run)
    except AdaptationCancelled as cancelled:
        if keeper.lost:  # not ours any more: leave the record (and checkpoint) to the worker that owns it
            return {"status": "LEASE_LOST"}
        rt.jobs.cancelled(job.id, "cancelled while preparing the source CLIP mean" if cancelled.preparing
                          else f"cancelled after {cancelled.iteration} iterations")
        rt.store.delete(state_key(job.id))
        return {"status": "CANCELLED", "iterations": cancelled.iteration}
    if result.resumed_from:
        log.warning("job %s resumed from iteration %d of %d", job.id, result.resumed_from, result.iterations)
    record = save_adapted_generator(rt.store, rt.index, job.tenant, job.base_generator, result.delta,
                                    base=base, generator_id=generator_id, job_id=job.id,
                                    display_name=job.display_name)
    rt.jobs.succeed(job.id, record.id)
    rt.store.delete(state_key(job.id))
    loss = result.history[-1]["total"] if result.history else float("nan")
    return {"status": "SUCCEEDED", "generator_id": record.id, "method": "difa", "iterations": result.iterations,
            "resumed_from": result.resumed_from, "loss": loss, "seconds": round(result.seconds, 2)}


def _finetune_job(job: Job, rt: Runtime, keeper: LeaseKeeper, on_progress: Callable[[float, str], None] | None,
                  base: Generator, generator_id: str) -> dict:
    """The fallback (FACEEDIT_ADAPTATION=finetune) for a worker without CLIP weights: fits the synthesis
    convolutions to the target at its inverted latent. Not DIFA: other samples drift rather than take the style."""
    params = {"iterations": rt.config.iterations, "checkpoint_every": rt.config.checkpoint_every, **job.params}
    config = FinetuneConfig.from_dict(params)
    target = load_target(rt, job, base.config.size)
    ws = target_latent(rt, job.base_generator, base, target)
    resume = _resume_state(rt, job.id, config)

    progress, should_cancel = _job_callbacks(job, rt, keeper, on_progress)

    def checkpoint(state: FinetuneState) -> None:
        rt.store.put(state_key(job.id, "finetune"), state.to_bytes())

    result = finetune(base, target, ws, config, progress=progress, should_cancel=should_cancel,
                      resume=resume, checkpoint=checkpoint)
    resumed_from = resume.iteration if resume is not None else 0
    if result.cancelled:
        if keeper.lost:
            return {"status": "LEASE_LOST"}
        rt.jobs.cancelled(job.id, f"cancelled after {result.iterations} iterations")
        rt.store.delete(state_key(job.id, "finetune"))
        return {"status": "CANCELLED", "iterations": result.iterations}
    record = save_adapted_generator(rt.store, rt.index, job.tenant, job.base_generator, result.tensors,
                                    base=base, generator_id=generator_id, job_id=job.id,
                                    display_name=job.display_name)
    rt.jobs.succeed(job.id, record.id)
    rt.store.delete(state_key(job.id, "finetune"))
    return {"status": "SUCCEEDED", "generator_id": record.id, "method": "finetune", "iterations": result.iterations,
            "resumed_from": resumed_from, "loss": result.loss}


def _tuning_job(job: Job, rt: Runtime, keeper: LeaseKeeper, on_progress: Callable[[float, str], None] | None,
                base: Generator, generator_id: str) -> dict:
    """Pivotal tuning of the base to the job's photo (services/worker/tuning.py)."""
    if rt.cache is None or rt.photos is None:
        raise WorkerSetupError("redis_url", "pivotal tuning needs the latent cache and the photo store")
    try:
        config = tuning_config(rt.config.pti_settings, job.params)
    except InvalidInputError as exc:
        if exc.field.startswith("pti_settings"):
            raise WorkerSetupError(exc.field, exc.problem) from None
        raise
    report, should_cancel = _job_callbacks(job, rt, keeper, on_progress)
    services = TuningServices(rt.jobs, rt.index, rt.store, rt.cache, rt.photos)
    return tune_to_photo(job, base, rt.encoder(job.base_generator), rt.perceptual(job.base_generator), config,
                         services, rt.models.family_of(job.base_generator).name, generator_id, report,
                         should_cancel, lambda: keeper.lost)


def load_target(rt: Runtime, job: Job, size: int) -> torch.Tensor:
    image, _ = decode_upload(rt.store.get(job.target_key), "style_image")
    return from_pil([center_square(image, size)])  # [1, 3, size, size]


def target_latent(rt: Runtime, base_id: str, base: Generator, target: torch.Tensor) -> torch.Tensor:
    encoder = rt.encoder(base_id)
    with torch.no_grad():
        if encoder is None:
            return base.broadcast(base.w_avg.unsqueeze(0)).clone()
        return encoder.encode(target.to(rt.device))  # [1, n_latent, style_dim]


def _resume_state(rt: Runtime, job_id: str, config: FinetuneConfig) -> FinetuneState | None:
    try:
        state = FinetuneState.from_bytes(rt.store.get(state_key(job_id, "finetune")))
    except NotFoundError:
        return None
    except CheckpointError as exc:
        log.warning("job %s: ignoring an unreadable resume state (%s)", job_id, exc)
        return None
    if state.config != config:
        log.warning("job %s: resume state has another config; starting over", job_id)
        return None
    log.warning("job %s: resuming at iteration %d", job_id, state.iteration)
    return state
