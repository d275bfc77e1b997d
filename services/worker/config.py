"""The worker's configuration, read once from FACEEDIT_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from faceedit.errors import InvalidInputError
from services.common.settings import read_settings

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"  # broker, result backend, jobs and the generator index
    artifact_store_url: str = f"file://{REPO / 'run' / 'artifacts'}"
    redis_namespace: str = "faceedit"
    # The model configuration (services/common/models.py): the base generators the worker adapts,
    # their families' e4e encoders (DIFA's consistency loss) and DIFA's CLIP models.
    # "" = $FACEEDIT_MODELS, else the demo zoo's models.yaml.
    models: str = ""
    # "difa" (the method) or "finetune": the earlier pixel fit to the target, kept only as a
    # fallback a deployment selects when it has no CLIP weights to mount.
    adaptation: str = "difa"
    # JSON object of DifaConfig settings the operator fixes for every job (e.g. clip_mean_samples,
    # psp_alpha, consistency_weight); a job's own parameters are applied on top.
    difa_settings: str = ""
    # At start-up, queue `faceedit.prepare` for each base whose mean source CLIP embedding is not
    # cached yet (minutes at 1024 px), so the first job on it starts training at once.
    prepare_on_start: bool = True
    # Pivotal tuning (a photo's tuning job): JSON of faceedit.inversion.InversionConfig fields fixed for
    # every job (e.g. optimize_steps, tune_steps, locality); a job's steps/learning rate set the tuning
    # phase. The pivot it caches lives as long as any latent (the editor's FACEEDIT_LATENT_TTL_S).
    pti_settings: str = ""
    # Text edits (StyleCLIP global directions) need each base's channel relevance with the first CLIP, each
    # channel pushed on `relevance_samples` samples (StyleCLIP: 100). At start-up the worker takes the one
    # the model configuration ships (`relevance:`, e.g. the demo zoo's) when it was made for the same weights
    # and settings; with compute_relevance it computes a missing one (minutes at 64 px, hours at 1024 on a
    # CPU: the queue waits behind it, so it is off by default; `faceedit eval text --export` makes one offline).
    relevance_samples: int = 16
    compute_relevance: bool = False
    latent_ttl_s: int = 3600
    queue: str = "gpu"
    # Must exceed the longest job: a message unacknowledged for longer is delivered again while the
    # job still runs (the lease keeps the second delivery from running it twice, but a worker would
    # wait on it for nothing). It is not how a dead worker's job comes back: that is noticed from
    # the job's expired lease (lease_ttl) by the editor's and the workers' orphan watch
    # (services/common/recovery.py), which re-queues it within lease_ttl + the watch interval.
    visibility_timeout: int = 7200
    # How often an idle worker looks for messages a dead worker left unacknowledged (FINDINGS:
    # kombu's defaults, 10 × 10 s, delay recovery by ~90 s).
    restore_interval: int = 1
    lease_ttl: float = 60.0  # a dead worker's job is re-queued this long after its last renewal
    iterations: int = 301  # DIFA's upstream schedule; a job's "iterations" overrides it
    checkpoint_every: int = 25
    torch_threads: int = 1
    device: str = "auto"  # "auto": the GPU when there is one, else the CPU; or "cpu", "cuda", "cuda:1"
    # Peak memory of a job's forward + backward passes: DIFA's batch (and the source CLIP mean's
    # sampling batch) is reduced until batch x size^2 x training_bytes_per_pixel fits. Sized for an
    # 8 GB CPU container; 1024 px needs ~3 GB per training sample (measured: 7 GB at batch 2).
    memory_budget_mb: int = 6144
    training_bytes_per_pixel: int = 3000
    sampling_bytes_per_pixel: int = 560  # no-grad synthesis, as measured for the generator handler

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        return read_settings(cls, env)

    def __post_init__(self) -> None:
        if self.adaptation not in ("difa", "finetune"):
            raise InvalidInputError("adaptation", f"must be 'difa' or 'finetune', got {self.adaptation!r}")
